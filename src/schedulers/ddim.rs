//! DDIM with eta = 0 (the pipelines' default): deterministic.
//! Port of diffusers `schedulers/scheduling_ddim.py` (`DDIMScheduler.set_timesteps`, `step`).

use super::schedule::{BETAS_DDPM, Thresholding};
use super::schedule::{TrainSchedule, ZeroSnr, np_arange, np_linspace, np_round, spacing_err};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err};
use crate::rng::NoiseSource;

pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction: Prediction,
    clip: Option<f32>,
    thresholding: Option<Thresholding>,
    step_ratio: i64,
    timesteps: Vec<f64>,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::Accepted, BETAS_DDPM)?;
        let n = train.num_train_timesteps;
        if steps > n {
            return Err(config_err(
                "num_train_timesteps",
                format!("{steps} steps exceed the {n} training timesteps"),
            ));
        }
        let offset = config.usize("steps_offset", 0)? as i64;
        let ts: Vec<i64> = match config.str("timestep_spacing", "leading")? {
            "linspace" => np_linspace(0.0, (n - 1) as f64, steps)
                .iter()
                .rev()
                .map(|&x| np_round(x) as i64)
                .collect(),
            "leading" => {
                let ratio = (n / steps) as i64;
                (0..steps as i64)
                    .rev()
                    .map(|i| i * ratio + offset)
                    .collect()
            }
            "trailing" => np_arange(n as f64, 0.0, -(n as f64 / steps as f64))
                .iter()
                .map(|&x| np_round(x) as i64 - 1)
                .collect(),
            other => return Err(spacing_err(other)),
        };
        if ts.iter().any(|&t| t < 0 || t >= n as i64) {
            return Err(config_err(
                "steps_offset",
                format!("puts timesteps outside 0..{n}"),
            ));
        }
        let thresholding = Thresholding::from_config(config)?;
        let clip = if thresholding.is_none() && config.bool("clip_sample", true)? {
            Some(config.f64("clip_sample_range", 1.0)? as f32)
        } else {
            None
        };
        let final_alpha_cumprod = if config.bool("set_alpha_to_one", true)? {
            1.0
        } else {
            train.alphas_cumprod[0]
        };
        Ok(Ddim {
            alphas_cumprod: train.alphas_cumprod,
            final_alpha_cumprod,
            prediction: config.prediction()?,
            clip,
            thresholding,
            step_ratio: (n / steps) as i64,
            timesteps: ts.iter().map(|&t| t as f64).collect(),
        })
    }
}

impl Scheduler for Ddim {
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
        let t = self.timesteps[index] as i64;
        let prev_t = t - self.step_ratio;
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[prev_t as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let mut x0 = sample.clone();
        let mut eps = model_output.clone();
        ndarray::Zip::from(&mut x0)
            .and(&mut eps)
            .and(sample)
            .and(model_output)
            .for_each(|x, e, &s, &m| match self.prediction {
                Prediction::Epsilon => {
                    *x = (s - sb * m) / sa;
                    *e = m;
                }
                Prediction::Sample => {
                    *x = m;
                    *e = (s - sa * m) / sb;
                }
                Prediction::VPrediction => {
                    *x = sa * s - sb * m;
                    *e = sa * m + sb * s;
                }
            });
        if let Some(t) = &self.thresholding {
            t.apply(&mut x0);
            // diffusers recomputes nothing here: pred_epsilon stays the model's.
        } else if let Some(r) = self.clip {
            x0.mapv_inplace(|v| v.clamp(-r, r));
        }
        // eta = 0: std_dev_t = 0, no noise.
        let dir = (1.0 - a_prev).sqrt();
        let ap = a_prev.sqrt();
        let mut out = x0;
        out.zip_mut_with(&eps, |x, &e| *x = ap * *x + dir * e);
        out
    }
}
