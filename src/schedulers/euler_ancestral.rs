//! Euler ancestral (k-diffusion `sample_euler_ancestral`, eta = 1): fresh noise after every step.
//! Port of diffusers `schedulers/scheduling_euler_ancestral_discrete.py` (`EulerAncestralDiscreteScheduler`).

use super::schedule::BETAS_DDPM;
use super::schedule::{SigmaSchedule, SigmaSpacing, TrainSchedule, ZeroSnr};
use super::{
    Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err, noise_like,
};
use crate::rng::NoiseSource;

pub struct EulerAncestral {
    schedule: SigmaSchedule,
    prediction: Prediction,
}

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::ClampLast, BETAS_DDPM)?;
        // diffusers' class has no use_karras_sigmas: a config key is ignored there, but an explicit
        // request (--karras) cannot be honoured.
        if config
            .raw()
            .get("use_karras_sigmas")
            .and_then(|v| v.as_bool())
            == Some(true)
            && config.class_name() != Some("EulerAncestralDiscreteScheduler")
        {
            return Err(config_err(
                "use_karras_sigmas",
                "EulerAncestralDiscreteScheduler has no Karras sigmas",
            ));
        }
        Ok(EulerAncestral {
            schedule: SigmaSchedule::new(
                config,
                &train,
                steps,
                SigmaSpacing::Interpolated,
                false,
                false,
            )?,
            prediction: config.prediction()?,
        })
    }
}

impl Scheduler for EulerAncestral {
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
        noise: &mut dyn NoiseSource,
    ) -> Latents {
        let sigma = self.schedule.sigmas[index];
        let x0 = SigmaSchedule::predict_x0(self.prediction, sigma, sample, model_output);
        let (from, to) = (sigma, self.schedule.sigmas[index + 1]);
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        let dt = down - sigma;
        let mut out = sample.clone();
        out.zip_mut_with(&x0, |s, &x| *s += (*s - x) / sigma * dt);
        // diffusers draws the noise on every step, the last one included.
        let eps = noise_like(model_output, noise);
        out.zip_mut_with(&eps, |s, &e| *s += e * up);
        out
    }
}
