//! Euler (k-diffusion `sample_euler`, s_churn = 0).
//! Port of diffusers `schedulers/scheduling_euler_discrete.py` (`EulerDiscreteScheduler`).

use super::schedule::BETAS_DDPM;
use super::schedule::{SigmaSchedule, SigmaSpacing, TrainSchedule, ZeroSnr};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err};
use crate::rng::NoiseSource;

pub struct Euler {
    schedule: SigmaSchedule,
    prediction: Prediction,
}

impl Euler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::ClampLast, BETAS_DDPM)?;
        if config.str("interpolation_type", "linear")? != "linear" {
            return Err(config_err("interpolation_type", "only `linear` is ported"));
        }
        if config.str("timestep_type", "discrete")? != "discrete" {
            return Err(config_err("timestep_type", "only `discrete` is ported"));
        }
        let final_sigma_min = match config.str("final_sigmas_type", "zero")? {
            "zero" => false,
            "sigma_min" => true,
            other => {
                return Err(config_err(
                    "final_sigmas_type",
                    format!("`{other}` is not one of zero, sigma_min"),
                ));
            }
        };
        let spacing = SigmaSpacing::from_config(config)?;
        Ok(Euler {
            schedule: SigmaSchedule::new(config, &train, steps, spacing, true, final_sigma_min)?,
            prediction: config.prediction()?,
        })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.schedule.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Latents, index: usize) -> Latents {
        self.schedule.scale(sample, index)
    }

    fn add_noise(&self, original: &Latents, noise: &Latents, index: usize) -> Latents {
        super::add_noise_sigma(
            self.schedule.sigmas[index.min(self.schedule.sigmas.len() - 1)],
            original,
            noise,
        )
    }

    fn step(
        &mut self,
        model_output: &Latents,
        index: usize,
        sample: &Latents,
        _noise: &mut dyn NoiseSource,
    ) -> Latents {
        let sigma = self.schedule.sigmas[index];
        let x0 = SigmaSchedule::predict_x0(self.prediction, sigma, sample, model_output);
        let dt = self.schedule.sigmas[index + 1] - sigma;
        let mut out = sample.clone();
        out.zip_mut_with(&x0, |s, &x| *s += (*s - x) / sigma * dt);
        out
    }
}
