//! KDPM2 ancestral (k-diffusion `sample_dpm_2_ancestral`): the KDPM2 midpoint step towards sigma_down, then
//! fresh noise scaled by sigma_up. Port of diffusers `schedulers/scheduling_k_dpm_2_ancestral_discrete.py`
//! (`KDPM2AncestralDiscreteScheduler.set_timesteps`, `scale_model_input`, `step`).

use super::heun::interleave;
use super::kdpm2::{KSchedule, log_midpoint};
use super::schedule::SigmaSchedule;
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, noise_like};
use crate::rng::NoiseSource;

pub struct Kdpm2Ancestral {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    sigmas_interpol: Vec<f32>,
    sigmas_up: Vec<f32>,
    sigmas_down: Vec<f32>,
    init_noise_sigma: f32,
    prediction: Prediction,
    first_sample: Option<Latents>,
}

fn with_tail(v: &[f32]) -> Vec<f32> {
    let mut out = interleave(v);
    out.push(v[v.len() - 1]);
    out
}

impl Kdpm2Ancestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let k = KSchedule::new(config, steps)?;
        let s = &k.sigmas;
        let n = s.len();
        let next: Vec<f32> = (0..n)
            .map(|i| if i + 1 < n { s[i + 1] } else { 0.0 })
            .collect();
        let up: Vec<f32> = (0..n)
            .map(|i| (next[i] * next[i] * (s[i] * s[i] - next[i] * next[i]) / (s[i] * s[i])).sqrt())
            .collect();
        let mut down: Vec<f32> = (0..n)
            .map(|i| (next[i] * next[i] - up[i] * up[i]).sqrt())
            .collect();
        down[n - 1] = 0.0;
        let mut interpol: Vec<f32> = (0..n).map(|i| log_midpoint(s[i], down[i])).collect();
        interpol[n - 2] = 0.0;
        interpol[n - 1] = 0.0;
        let t_interp = k.interpol_timesteps(&interpol);
        let mut timesteps = vec![k.timesteps[0] as f32 as f64];
        for (ti, t) in t_interp.iter().zip(&k.timesteps[1..]) {
            timesteps.push(*ti);
            timesteps.push(*t as f32 as f64);
        }
        Ok(Kdpm2Ancestral {
            timesteps,
            sigmas: with_tail(s),
            sigmas_interpol: with_tail(&interpol),
            sigmas_up: with_tail(&up),
            sigmas_down: with_tail(&down),
            init_noise_sigma: k.init_noise_sigma,
            prediction: config.prediction()?,
            first_sample: None,
        })
    }
}

impl Scheduler for Kdpm2Ancestral {
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
            self.sigmas_interpol[index - 1]
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
        noise: &mut dyn NoiseSource,
    ) -> Latents {
        match self.first_sample.take() {
            None => {
                let (sigma, interp) = (self.sigmas[index], self.sigmas_interpol[index]);
                let x0 = SigmaSchedule::predict_x0(self.prediction, sigma, sample, model_output);
                let dt = interp - sigma;
                let mut out = sample.clone();
                out.zip_mut_with(&x0, |s, &x| *s += (*s - x) / sigma * dt);
                self.first_sample = Some(sample.clone());
                out
            }
            Some(first) => {
                let (sigma, interp) = (self.sigmas[index - 1], self.sigmas_interpol[index - 1]);
                let (up, down) = (self.sigmas_up[index - 1], self.sigmas_down[index - 1]);
                let x0 = SigmaSchedule::predict_x0(self.prediction, interp, sample, model_output);
                let dt = down - sigma;
                let mut d = sample.clone();
                d.zip_mut_with(&x0, |s, &x| *s = (*s - x) / interp);
                let mut out = first;
                out.zip_mut_with(&d, |s, &dv| *s += dv * dt);
                let eps = noise_like(model_output, noise);
                out.zip_mut_with(&eps, |s, &e| *s += e * up);
                out
            }
        }
    }
}
