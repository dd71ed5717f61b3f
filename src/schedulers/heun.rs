//! Heun's method (k-diffusion `sample_heun`, s_churn = 0): two UNet calls per step, so the timestep list
//! holds each inner timestep twice. Port of diffusers `schedulers/scheduling_heun_discrete.py`
//! (`HeunDiscreteScheduler.set_timesteps`, `scale_model_input`, `step`).

use super::schedule::{BETAS_K, SigmaSchedule, SigmaSpacing, TrainSchedule, ZeroSnr};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError};
use crate::rng::NoiseSource;

pub struct Heun {
    timesteps: Vec<f64>,
    /// [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0]
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
    clip: Option<f32>,
    /// First-order state: (derivative, dt, sample) between the two calls of a step.
    pending: Option<(Latents, f32, Latents)>,
}

/// `[x0] + [x1, x1, x2, x2, ...]`: diffusers' `torch.cat([v[:1], v[1:].repeat_interleave(2)])`.
pub(crate) fn interleave<T: Copy>(v: &[T]) -> Vec<T> {
    let mut out = vec![v[0]];
    for &x in &v[1..] {
        out.push(x);
        out.push(x);
    }
    out
}

impl Heun {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::NotAccepted, BETAS_K)?;
        let spacing = SigmaSpacing::from_config(config)?;
        let s = SigmaSchedule::new(config, &train, steps, spacing, false, false)?;
        // sigmas: [s0] + interleave(s1..s_{n-1}) + [0]
        let mut sigmas = interleave(&s.sigmas[..s.sigmas.len() - 1]);
        sigmas.push(0.0);
        let clip = if config.bool("clip_sample", false)? {
            Some(config.f64("clip_sample_range", 1.0)? as f32)
        } else {
            None
        };
        Ok(Heun {
            timesteps: interleave(&s.timesteps)
                .iter()
                .map(|&t| t as f32 as f64)
                .collect(),
            sigmas,
            init_noise_sigma: s.init_noise_sigma,
            prediction: config.prediction()?,
            clip,
            pending: None,
        })
    }
}

impl Scheduler for Heun {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Latents, index: usize) -> Latents {
        let s = self.sigmas[index];
        let d = (s * s + 1.0).sqrt();
        sample.mapv(|v| v / d)
    }

    fn add_noise(&self, original: &Latents, noise: &Latents, index: usize) -> Latents {
        super::add_noise_sigma(
            self.sigmas[index.min(self.sigmas.len() - 1)],
            original,
            noise,
        )
    }

    fn order(&self) -> usize {
        2
    }

    fn step(
        &mut self,
        model_output: &Latents,
        index: usize,
        sample: &Latents,
        _noise: &mut dyn NoiseSource,
    ) -> Latents {
        let first = self.pending.is_none();
        let (sigma, sigma_next) = if first {
            (self.sigmas[index], self.sigmas[index + 1])
        } else {
            (self.sigmas[index - 1], self.sigmas[index])
        };
        let sigma_input = if first { sigma } else { sigma_next };
        let mut x0 = SigmaSchedule::predict_x0(self.prediction, sigma_input, sample, model_output);
        if let Some(r) = self.clip {
            x0.mapv_inplace(|v| v.clamp(-r, r));
        }
        match self.pending.take() {
            None => {
                let mut d = sample.clone();
                d.zip_mut_with(&x0, |s, &x| *s = (*s - x) / sigma);
                let dt = sigma_next - sigma;
                let mut out = sample.clone();
                out.zip_mut_with(&d, |s, &dv| *s += dv * dt);
                self.pending = Some((d, dt, sample.clone()));
                out
            }
            Some((prev_d, dt, first_sample)) => {
                let mut d = sample.clone();
                d.zip_mut_with(&x0, |s, &x| *s = (*s - x) / sigma_next);
                d.zip_mut_with(&prev_d, |dv, &p| *dv = (p + *dv) / 2.0);
                let mut out = first_sample;
                out.zip_mut_with(&d, |s, &dv| *s += dv * dt);
                out
            }
        }
    }
}
