//! LCM (latent consistency models): a consistency-function jump to x0, then re-noising to the next
//! timestep with fresh noise. Port of diffusers `schedulers/scheduling_lcm.py` (`LCMScheduler.set_timesteps`,
//! `get_scalings_for_boundary_condition_discrete`, `step`). Meant for LCM-distilled or LCM-LoRA'd UNets.

use super::schedule::{BETAS_LCM, TrainSchedule, X0Limit, ZeroSnr, alpha_x0, np_linspace};
use super::{
    Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err, noise_like,
};
use crate::rng::NoiseSource;

pub struct Lcm {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    prediction: Prediction,
    limit: X0Limit,
    timestep_scaling: f32,
    timesteps: Vec<f64>,
}

impl Lcm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        Self::with_strength(config, steps, 1.0)
    }

    /// `set_timesteps(steps, strength=...)`, as diffusers' LatentConsistencyModelImg2ImgPipeline calls it: the
    /// distillation schedule is cut to its first `int(original_inference_steps * strength)` timesteps before
    /// `steps` of them are picked.
    pub fn with_strength(
        config: &SchedulerConfig,
        steps: usize,
        strength: f64,
    ) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::Accepted, BETAS_LCM)?;
        let n = train.num_train_timesteps;
        let original = config.usize("original_inference_steps", 50)?;
        if original == 0 || original > n {
            return Err(config_err(
                "original_inference_steps",
                format!("{original} is not within 1..={n}"),
            ));
        }
        if steps > original {
            return Err(SchedulerError::Unsupported(format!(
                "lcm takes at most original_inference_steps = {original} steps (asked for {steps})"
            )));
        }
        let k = n / original;
        // lcm_origin_timesteps = [1..=int(original * strength)] * k - 1, reversed; pick `steps` of them evenly.
        let kept = (original as f64 * strength) as usize;
        if kept / steps < 1 {
            return Err(SchedulerError::Unsupported(format!(
                "lcm: original_inference_steps x strength = {original} x {strength} leaves {kept} timesteps, \
                 fewer than the {steps} steps asked for (diffusers refuses this too)"
            )));
        }
        let origin: Vec<i64> = (1..=kept as i64).rev().map(|i| i * k as i64 - 1).collect();
        let timesteps = np_linspace(0.0, origin.len() as f64, steps + 1)
            .iter()
            .take(steps)
            .map(|&x| origin[(x.floor() as usize).min(origin.len() - 1)] as f64)
            .collect();
        let limit = X0Limit::from_config(config, false)?;
        Ok(Lcm {
            final_alpha_cumprod: if config.bool("set_alpha_to_one", true)? {
                1.0
            } else {
                train.alphas_cumprod[0]
            },
            alphas_cumprod: train.alphas_cumprod,
            prediction: config.prediction()?,
            limit,
            timestep_scaling: config.f64("timestep_scaling", 10.0)? as f32,
            timesteps,
        })
    }
}

impl Scheduler for Lcm {
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
        let t = self.timesteps[index] as i64;
        let prev = self.timesteps.get(index + 1).map_or(t, |&p| p as i64);
        let a_t = self.alphas_cumprod[t as usize];
        let a_prev = if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.final_alpha_cumprod
        };
        let b_prev = 1.0 - a_prev;
        let scaled = t as f32 * self.timestep_scaling;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        let mut x0 = alpha_x0(self.prediction, a_t, sample, model_output);
        self.limit.apply(&mut x0);
        let mut denoised = x0;
        denoised.zip_mut_with(sample, |x, &s| *x = c_out * *x + c_skip * s);
        if index + 1 != self.timesteps.len() {
            let eps = noise_like(model_output, noise);
            let (sa, sb) = (a_prev.sqrt(), b_prev.sqrt());
            denoised.zip_mut_with(&eps, |d, &e| *d = sa * *d + sb * e);
        }
        denoised
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diffusers 0.39: `LCMScheduler().set_timesteps(4, strength=0.5)` -> [499, 379, 259, 139],
    /// `set_timesteps(3, strength=0.8)` -> [799, 539, 279]; too few timesteps left is refused, as there.
    #[test]
    fn strength_cuts_the_distillation_schedule() {
        let config = SchedulerConfig::default();
        let t = |steps, strength| {
            Lcm::with_strength(&config, steps, strength)
                .map(|s| s.timesteps().to_vec())
                .unwrap_or_default()
        };
        assert_eq!(t(4, 0.5), [499.0, 379.0, 259.0, 139.0]);
        assert_eq!(t(3, 0.8), [799.0, 539.0, 279.0]);
        assert!(matches!(
            Lcm::with_strength(&config, 4, 0.05),
            Err(SchedulerError::Unsupported(_))
        ));
    }
}
