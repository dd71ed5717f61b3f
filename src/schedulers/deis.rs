//! DEIS (log-rho, second-order multistep). Port of diffusers `schedulers/scheduling_deis_multistep.py`
//! (`DEISMultistepScheduler.set_timesteps`, `convert_model_output`, `deis_first_order_update`,
//! `multistep_deis_second_order_update`, `step`).

use super::multistep::{FinalSigma, MultistepSchedule, alpha_sigma, data_prediction, lambda};
use super::schedule::{BETAS_DDPM, Thresholding, TrainSchedule, ZeroSnr, reject_sigma_variants};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err};
use crate::rng::NoiseSource;

pub struct Deis {
    schedule: MultistepSchedule,
    prediction: Prediction,
    thresholding: Option<Thresholding>,
    lower_order_final: bool,
    model_outputs: Vec<Latents>,
    lower_order_nums: usize,
}

impl Deis {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::NotAccepted, BETAS_DDPM)?;
        if config.usize("solver_order", 2)? != 2 {
            return Err(config_err(
                "solver_order",
                "only the second-order DEIS is ported",
            ));
        }
        reject_sigma_variants(config, &["use_flow_sigmas"])?;
        Ok(Deis {
            schedule: MultistepSchedule::new(
                config,
                &train,
                steps,
                false,
                FinalSigma::SigmaMin,
                FinalSigma::RepeatLast,
            )?,
            prediction: config.prediction()?,
            thresholding: Thresholding::from_config(config)?,
            lower_order_final: config.bool("lower_order_final", true)?,
            model_outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }
}

/// `ind_fn(t, b, c)`: the integral of the log-linear Lagrange basis, in float32 as diffusers evaluates it.
fn ind_fn(t: f32, b: f32, c: f32) -> f32 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

impl Scheduler for Deis {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn add_noise(&self, original: &Latents, noise: &Latents, index: usize) -> Latents {
        let (alpha, sigma) = super::multistep::alpha_sigma(
            self.schedule.sigmas[index.min(self.schedule.sigmas.len() - 1)],
        );
        super::axpby(alpha, original, sigma, noise)
    }

    fn step(
        &mut self,
        model_output: &Latents,
        index: usize,
        sample: &Latents,
        _noise: &mut dyn NoiseSource,
    ) -> Latents {
        let sigmas = &self.schedule.sigmas;
        let len = self.schedule.timesteps.len();
        let lower_order_final = index == len - 1 && self.lower_order_final && len < 15;
        // convert_model_output: x0 (thresholded), then back to epsilon.
        let (alpha_s, sigma_s) = alpha_sigma(sigmas[index]);
        let mut x0 = data_prediction(self.prediction, sigmas[index], model_output, sample);
        if let Some(t) = &self.thresholding {
            t.apply(&mut x0);
        }
        let mut eps = sample.clone();
        eps.zip_mut_with(&x0, |s, &x| *s = (*s - alpha_s * x) / sigma_s);
        if self.model_outputs.len() == 2 {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(eps);
        let (alpha_t, sigma_t) = alpha_sigma(sigmas[index + 1]);
        let m0 = &self.model_outputs[self.model_outputs.len() - 1];
        let mut out = sample.clone();
        if self.lower_order_nums < 1 || lower_order_final {
            let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
            let (a, b) = (alpha_t / alpha_s, sigma_t * (h.exp() - 1.0));
            out.zip_mut_with(m0, |s, &m| *s = a * *s - b * m);
        } else {
            let m1 = &self.model_outputs[self.model_outputs.len() - 2];
            let (alpha_s1, sigma_s1) = alpha_sigma(sigmas[index - 1]);
            let (rho_t, rho_s0, rho_s1) =
                (sigma_t / alpha_t, sigma_s / alpha_s, sigma_s1 / alpha_s1);
            let coef1 = ind_fn(rho_t, rho_s0, rho_s1) - ind_fn(rho_s0, rho_s0, rho_s1);
            let coef2 = ind_fn(rho_t, rho_s1, rho_s0) - ind_fn(rho_s0, rho_s1, rho_s0);
            ndarray::Zip::from(&mut out)
                .and(m0)
                .and(m1)
                .for_each(|s, &e0, &e1| *s = alpha_t * (*s / alpha_s + coef1 * e0 + coef2 * e1));
        }
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        out
    }
}
