//! KDPM2 (k-diffusion `sample_dpm_2`): a midpoint step in log-sigma, two UNet calls per step.
//! Port of diffusers `schedulers/scheduling_k_dpm_2_discrete.py` (`KDPM2DiscreteScheduler.set_timesteps`,
//! `scale_model_input`, `step`).

use super::heun::interleave;
use super::schedule::{
    BETAS_K, SigmaSchedule, SigmaSpacing, TrainSchedule, ZeroSnr, log_sigmas, np_round,
    sigma_to_t_f32,
};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError};
use crate::rng::NoiseSource;

/// The schedule KDPM2 and KDPM2 ancestral share before their sigma sequences diverge.
pub(crate) struct KSchedule {
    /// `steps + 1` sigmas ending in 0.
    pub sigmas: Vec<f32>,
    pub timesteps: Vec<f64>,
    pub log_sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
}

impl KSchedule {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::NotAccepted, BETAS_K)?;
        let spacing = SigmaSpacing::from_config(config)?;
        let s = SigmaSchedule::new(config, &train, steps, spacing, false, false)?;
        // KDPM2 rounds its Karras timesteps.
        let timesteps = if spacing == SigmaSpacing::Karras {
            s.timesteps.iter().map(|&t| np_round(t)).collect()
        } else {
            s.timesteps
        };
        let log_sigmas = log_sigmas(&train.sigmas());
        Ok(KSchedule {
            sigmas: s.sigmas,
            timesteps,
            log_sigmas,
            init_noise_sigma: s.init_noise_sigma,
        })
    }

    /// `_sigma_to_t` of each interpolated sigma, as diffusers computes it (torch float32 inputs).
    pub fn interpol_timesteps(&self, interpol: &[f32]) -> Vec<f64> {
        interpol
            .iter()
            .map(|&s| sigma_to_t_f32(s, &self.log_sigmas) as f32 as f64)
            .collect()
    }
}

/// `a.log().lerp(b.log(), 0.5).exp()` in float32 (torch's lerp with weight 0.5 is `b - (b - a) * 0.5`).
pub(crate) fn log_midpoint(a: f32, b: f32) -> f32 {
    let (la, lb) = (a.ln(), b.ln());
    (lb - (lb - la) * 0.5).exp()
}

pub struct Kdpm2 {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
    first_sample: Option<Latents>,
}

impl Kdpm2 {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let k = KSchedule::new(config, steps)?;
        let n = k.sigmas.len();
        // sigmas_interpol[i] = geometric mean of sigmas[i] and sigmas[i-1] (roll(1): index 0 pairs with the final 0).
        let interpol: Vec<f32> = (0..n)
            .map(|i| log_midpoint(k.sigmas[i], k.sigmas[(i + n - 1) % n]))
            .collect();
        let t_interp = k.interpol_timesteps(&interpol);
        let mut timesteps = vec![k.timesteps[0] as f32 as f64];
        for (ti, t) in t_interp[1..].iter().zip(&k.timesteps[1..]) {
            timesteps.push(*ti);
            timesteps.push(*t as f32 as f64);
        }
        let mut sigmas = interleave(&k.sigmas);
        sigmas.push(k.sigmas[n - 1]);
        let mut sigmas_interpol = interleave(&interpol);
        sigmas_interpol.push(interpol[n - 1]);
        Ok(Kdpm2 {
            timesteps,
            sigmas,
            sigmas_interpol,
            init_noise_sigma: k.init_noise_sigma,
            prediction: config.prediction()?,
            first_sample: None,
        })
    }
}

impl Scheduler for Kdpm2 {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Latents, index: usize) -> Latents {
        let s = if self.first_sample.is_none() {
            self.sigmas[index]
        } else {
            self.sigmas_interpol[index]
        };
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
        match self.first_sample.take() {
            None => {
                let (sigma, interp) = (self.sigmas[index], self.sigmas_interpol[index + 1]);
                let x0 = SigmaSchedule::predict_x0(self.prediction, sigma, sample, model_output);
                let dt = interp - sigma;
                let mut out = sample.clone();
                out.zip_mut_with(&x0, |s, &x| *s += (*s - x) / sigma * dt);
                self.first_sample = Some(sample.clone());
                out
            }
            Some(first) => {
                let (sigma, interp, next) = (
                    self.sigmas[index - 1],
                    self.sigmas_interpol[index],
                    self.sigmas[index],
                );
                let x0 = SigmaSchedule::predict_x0(self.prediction, interp, sample, model_output);
                let dt = next - sigma;
                let mut d = sample.clone();
                d.zip_mut_with(&x0, |s, &x| *s = (*s - x) / interp);
                let mut out = first;
                out.zip_mut_with(&d, |s, &dv| *s += dv * dt);
                out
            }
        }
    }
}
