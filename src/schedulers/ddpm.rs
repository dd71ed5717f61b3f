//! DDPM: ancestral sampling with the posterior variance (`fixed_small`), noise drawn at every step but the last.
//! Port of diffusers `schedulers/scheduling_ddpm.py` (`DDPMScheduler.set_timesteps`, `step`, `_get_variance`).

use super::schedule::{
    BETAS_DDPM, TrainSchedule, X0Limit, ZeroSnr, alpha_x0, spaced_timesteps_int,
};
use super::{
    Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err, noise_like,
};
use crate::rng::NoiseSource;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variance {
    Small,
    SmallLog,
    Large,
}

pub struct Ddpm {
    alphas_cumprod: Vec<f32>,
    prediction: Prediction,
    limit: X0Limit,
    variance: Variance,
    timesteps: Vec<f64>,
}

impl Ddpm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::Accepted, BETAS_DDPM)?;
        let n = train.num_train_timesteps;
        if steps > n {
            return Err(config_err(
                "num_train_timesteps",
                format!("{steps} steps exceed the {n} training timesteps"),
            ));
        }
        let variance = match config.str("variance_type", "fixed_small")? {
            "fixed_small" => Variance::Small,
            "fixed_small_log" => Variance::SmallLog,
            "fixed_large" => Variance::Large,
            other => {
                return Err(config_err(
                    "variance_type",
                    format!("`{other}` is not ported (learned variances need a 2x-channel UNet)"),
                ));
            }
        };
        let ts = spaced_timesteps_int(config, n, steps)?;
        let limit = X0Limit::from_config(config, true)?;
        Ok(Ddpm {
            alphas_cumprod: train.alphas_cumprod,
            prediction: config.prediction()?,
            limit,
            variance,
            timesteps: ts.iter().map(|&t| t as f64).collect(),
        })
    }
}

impl Scheduler for Ddpm {
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
        noise: &mut dyn NoiseSource,
    ) -> Latents {
        let t = self.timesteps[index] as usize;
        let a_t = self.alphas_cumprod[t];
        let a_prev = self
            .timesteps
            .get(index + 1)
            .map_or(1.0, |&p| self.alphas_cumprod[p as usize]);
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let mut x0 = alpha_x0(self.prediction, a_t, sample, model_output);
        self.limit.apply(&mut x0);
        let c_x0 = (a_prev.sqrt() * cur_beta) / b_t;
        let c_s = cur_alpha.sqrt() * b_prev / b_t;
        let mut out = x0;
        out.zip_mut_with(sample, |x, &s| *x = c_x0 * *x + c_s * s);
        if t > 0 {
            let eps = noise_like(model_output, noise);
            let var = ((1.0 - a_prev) / (1.0 - a_t) * cur_beta).max(1e-20);
            let scale = match self.variance {
                Variance::Small => var.sqrt(),
                Variance::SmallLog => (0.5 * var.ln()).exp(),
                Variance::Large => cur_beta.sqrt(),
            };
            out.zip_mut_with(&eps, |x, &e| *x += scale * e);
        }
        out
    }
}
