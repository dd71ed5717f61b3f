//! Linear multistep (order 4) on the sigma ODE.
//! Port of diffusers `schedulers/scheduling_lms_discrete.py` (`LMSDiscreteScheduler`). diffusers integrates
//! each Lagrange basis polynomial with `scipy.integrate.quad`; the integrand is a polynomial of degree <= 3,
//! so three-point Gauss-Legendre quadrature gives the same value exactly.

use super::schedule::BETAS_DDPM;
use super::schedule::{SigmaSchedule, SigmaSpacing, TrainSchedule, ZeroSnr};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError};
use crate::rng::NoiseSource;

const ORDER: usize = 4;

pub struct Lms {
    schedule: SigmaSchedule,
    prediction: Prediction,
    derivatives: Vec<Latents>,
}

impl Lms {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::NotAccepted, BETAS_DDPM)?;
        let spacing = SigmaSpacing::from_config(config)?;
        Ok(Lms {
            schedule: SigmaSchedule::new(config, &train, steps, spacing, false, false)?,
            prediction: config.prediction()?,
            derivatives: Vec::new(),
        })
    }

    /// `get_lms_coefficient(order, t, current_order)`.
    fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = |i: usize| self.schedule.sigmas[i] as f64;
        let basis = |tau: f64| {
            let mut prod = 1.0;
            for k in 0..order {
                if k != current {
                    prod *= (tau - s(t - k)) / (s(t - current) - s(t - k));
                }
            }
            prod
        };
        let (a, b) = (s(t), s(t + 1));
        let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
        let x = (3.0f64 / 5.0).sqrt();
        half * (5.0 / 9.0 * basis(mid - half * x)
            + 8.0 / 9.0 * basis(mid)
            + 5.0 / 9.0 * basis(mid + half * x))
    }
}

impl Scheduler for Lms {
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
        let mut derivative = sample.clone();
        derivative.zip_mut_with(&x0, |s, &x| *s = (*s - x) / sigma);
        self.derivatives.push(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (index + 1).min(ORDER);
        let mut acc = Latents::zeros(sample.raw_dim());
        for (current, d) in self.derivatives.iter().rev().enumerate().take(order) {
            let c = self.coefficient(order, index, current) as f32;
            acc.zip_mut_with(d, |a, &v| *a += c * v);
        }
        let mut out = sample.clone();
        out.zip_mut_with(&acc, |s, &a| *s += a);
        out
    }
}
