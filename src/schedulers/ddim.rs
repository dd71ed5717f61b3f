//! DDIM with eta = 0 (the pipelines' default): deterministic.
//! Port of diffusers `schedulers/scheduling_ddim.py` (`DDIMScheduler.set_timesteps`, `step`).

use super::schedule::{BETAS_DDPM, TrainSchedule, X0Limit, ZeroSnr, spaced_timesteps_int};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err};
use crate::rng::NoiseSource;

pub struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction: Prediction,
    limit: X0Limit,
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
        let ts = spaced_timesteps_int(config, n, steps)?;
        let limit = X0Limit::from_config(config, true)?;
        let final_alpha_cumprod = if config.bool("set_alpha_to_one", true)? {
            1.0
        } else {
            train.alphas_cumprod[0]
        };
        Ok(Ddim {
            alphas_cumprod: train.alphas_cumprod,
            final_alpha_cumprod,
            prediction: config.prediction()?,
            limit,
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
        self.limit.apply(&mut x0);
        // eta = 0: std_dev_t = 0, no noise.
        let dir = (1.0 - a_prev).sqrt();
        let ap = a_prev.sqrt();
        let mut out = x0;
        out.zip_mut_with(&eps, |x, &e| *x = ap * *x + dir * e);
        out
    }
}
