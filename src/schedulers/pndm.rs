//! PNDM in its PLMS form (`skip_prk_steps=True`), the Stable Diffusion 1.x default.
//! Port of diffusers `schedulers/scheduling_pndm.py` (`PNDMScheduler.set_timesteps`, `step_plms`,
//! `_get_prev_sample`).

use super::schedule::{BETAS_DDPM, TrainSchedule, ZeroSnr, spaced_timesteps_int};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err};
use crate::rng::NoiseSource;
use crate::schedulers::schedule::steps_offset_err;

pub struct Pndm {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction: Prediction,
    step_ratio: i64,
    timesteps: Vec<f64>,
    ets: Vec<Latents>,
    cur_sample: Option<Latents>,
    counter: usize,
}

impl Pndm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::NotAccepted, BETAS_DDPM)?;
        let n = train.num_train_timesteps;
        if !config.bool("skip_prk_steps", false)? {
            return Err(config_err(
                "skip_prk_steps",
                "`false` (Runge-Kutta warm-up steps) is not ported; only PLMS (`skip_prk_steps: true`) is",
            ));
        }
        let prediction = config.prediction()?;
        if prediction == Prediction::Sample {
            return Err(config_err(
                "prediction_type",
                "PNDMScheduler takes only epsilon or v_prediction",
            ));
        }
        // Ascending integer timesteps (diffusers' `_timesteps`): the DDPM-family spacing, reversed.
        let mut base = spaced_timesteps_int(config, n, steps)?;
        base.reverse();
        // plms_timesteps = concat(_t[:-1], _t[-2:-1], _t[-1:])[::-1]
        let mut plms: Vec<i64> = base[..base.len() - 1].to_vec();
        if base.len() >= 2 {
            plms.push(base[base.len() - 2]);
        }
        plms.push(base[base.len() - 1]);
        plms.reverse();
        let step_ratio = (n / steps) as i64;
        let max_t = plms.iter().copied().max().unwrap_or(0) + step_ratio;
        if plms.iter().any(|&t| t < 0) || plms[0] >= n as i64 || max_t > n as i64 + step_ratio {
            return Err(steps_offset_err(n, steps));
        }
        let final_alpha_cumprod = if config.bool("set_alpha_to_one", false)? {
            1.0
        } else {
            train.alphas_cumprod[0]
        };
        Ok(Pndm {
            alphas_cumprod: train.alphas_cumprod,
            final_alpha_cumprod,
            prediction,
            step_ratio,
            timesteps: plms.iter().map(|&t| t as f64).collect(),
            ets: Vec::new(),
            cur_sample: None,
            counter: 0,
        })
    }

    fn alpha(&self, t: i64) -> f32 {
        if t < 0 {
            self.final_alpha_cumprod
        } else {
            self.alphas_cumprod[(t as usize).min(self.alphas_cumprod.len() - 1)]
        }
    }

    fn prev_sample(
        &self,
        sample: &Latents,
        t: i64,
        prev_t: i64,
        model_output: &Latents,
    ) -> Latents {
        let a_t = self.alpha(t);
        let a_prev = self.alpha(prev_t);
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let model_output = match self.prediction {
            Prediction::VPrediction => super::axpby(a_t.sqrt(), model_output, b_t.sqrt(), sample),
            _ => model_output.clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let diff = a_prev - a_t;
        let mut out = sample.clone();
        out.zip_mut_with(&model_output, |s, &m| {
            *s = sample_coeff * *s - diff * m / denom
        });
        out
    }
}

impl Scheduler for Pndm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn add_noise(&self, original: &Latents, noise: &Latents, index: usize) -> Latents {
        let t = self.timesteps[index.min(self.timesteps.len() - 1)] as usize;
        super::add_noise_alpha(self.alphas_cumprod[t], original, noise)
    }

    fn step(
        &mut self,
        model_output: &Latents,
        index: usize,
        sample: &Latents,
        _noise: &mut dyn NoiseSource,
    ) -> Latents {
        let mut t = self.timesteps[index] as i64;
        let mut prev_t = t - self.step_ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.drain(..self.ets.len() - 3);
            }
            self.ets.push(model_output.clone());
        } else {
            prev_t = t;
            t += self.step_ratio;
        }
        let e = &self.ets;
        let n = e.len();
        let (mo, sample_used) = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            (model_output.clone(), sample.clone())
        } else if n == 1 && self.counter == 1 {
            let mut m = model_output.clone();
            m.zip_mut_with(&e[0], |a, &b| *a = (*a + b) / 2.0);
            let s = self.cur_sample.take().unwrap_or_else(|| sample.clone());
            (m, s)
        } else if n == 2 {
            let mut m = e[1].clone();
            m.zip_mut_with(&e[0], |a, &b| *a = (3.0 * *a - b) / 2.0);
            (m, sample.clone())
        } else if n == 3 {
            let mut m = e[2].clone();
            ndarray::Zip::from(&mut m)
                .and(&e[1])
                .and(&e[0])
                .for_each(|a, &b, &c| *a = (23.0 * *a - 16.0 * b + 5.0 * c) / 12.0);
            (m, sample.clone())
        } else {
            let mut m = e[n - 1].clone();
            ndarray::Zip::from(&mut m)
                .and(&e[n - 2])
                .and(&e[n - 3])
                .and(&e[n - 4])
                .for_each(|a, &b, &c, &d| {
                    *a = (1.0f32 / 24.0) * (55.0 * *a - 59.0 * b + 37.0 * c - 9.0 * d)
                });
            (m, sample.clone())
        };
        let prev = self.prev_sample(&sample_used, t, prev_t, &mo);
        self.counter += 1;
        prev
    }
}
