//! UniPC (bh2, data prediction, second order): a predictor step and, from the second step on, a corrector
//! that reuses the new model output. Port of diffusers `schedulers/scheduling_unipc_multistep.py`
//! (`UniPCMultistepScheduler.set_timesteps`, `convert_model_output`, `multistep_uni_p_bh_update`,
//! `multistep_uni_c_bh_update`, `step`) for `solver_order=2`, `predict_x0=True`.

use super::multistep::{
    FinalSigma, MultistepSchedule, alpha_sigma, data_prediction, final_sigmas_type, lambda,
};
use super::schedule::{BETAS_DDPM, Thresholding, TrainSchedule, ZeroSnr, reject_sigma_variants};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err};
use crate::rng::NoiseSource;

pub struct UniPc {
    schedule: MultistepSchedule,
    prediction: Prediction,
    thresholding: Option<Thresholding>,
    bh2: bool,
    lower_order_final: bool,
    disable_corrector: Vec<usize>,
    model_outputs: Vec<Latents>,
    last_sample: Option<Latents>,
    this_order: usize,
    lower_order_nums: usize,
}

impl UniPc {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::ClampLast, BETAS_DDPM)?;
        if config.usize("solver_order", 2)? != 2 {
            return Err(config_err(
                "solver_order",
                "only the second-order UniPC is ported",
            ));
        }
        if !config.bool("predict_x0", true)? {
            return Err(config_err(
                "predict_x0",
                "only data prediction (true) is ported",
            ));
        }
        if config.raw().get("solver_p").is_some_and(|v| !v.is_null()) {
            return Err(config_err(
                "solver_p",
                "an external predictor is not ported",
            ));
        }
        reject_sigma_variants(config, &["use_flow_sigmas"])?;
        let bh2 = match config.str("solver_type", "bh2")? {
            "bh2" => true,
            "bh1" => false,
            other => {
                return Err(config_err(
                    "solver_type",
                    format!("`{other}` is not one of bh1, bh2"),
                ));
            }
        };
        let disable_corrector = match config.raw().get("disable_corrector") {
            Some(serde_json::Value::Array(v)) => v
                .iter()
                .filter_map(|x| x.as_u64().map(|n| n as usize))
                .collect(),
            _ => Vec::new(),
        };
        let zero = final_sigmas_type(config)?;
        let (last, karras_last) = if zero {
            (FinalSigma::Zero, FinalSigma::Zero)
        } else {
            (FinalSigma::SigmaMin, FinalSigma::RepeatLast)
        };
        Ok(UniPc {
            schedule: MultistepSchedule::new(config, &train, steps, false, last, karras_last)?,
            prediction: config.prediction()?,
            thresholding: Thresholding::from_config(config)?,
            bh2,
            lower_order_final: config.bool("lower_order_final", true)?,
            disable_corrector,
            model_outputs: Vec::new(),
            last_sample: None,
            this_order: 1,
            lower_order_nums: 0,
        })
    }

    fn lam(&self, i: usize) -> f32 {
        let (a, s) = alpha_sigma(self.schedule.sigmas[i]);
        lambda(a, s)
    }

    /// h_phi_1, B_h and the b vector of the UniPC linear system for orders 1 and 2 (hh = -h).
    fn coefficients(&self, h: f32) -> (f32, f32, [f32; 2]) {
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = if self.bh2 { hh.exp_m1() } else { hh };
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let b1 = h_phi_k / b_h;
        h_phi_k = h_phi_k / hh - 1.0 / 2.0;
        let b2 = h_phi_k * 2.0 / b_h;
        (h_phi_1, b_h, [b1, b2])
    }
}

impl Scheduler for UniPc {
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
        let sigmas = self.schedule.sigmas.clone();
        let mut x0 = data_prediction(self.prediction, sigmas[index], model_output, sample);
        if let Some(t) = &self.thresholding {
            t.apply(&mut x0);
        }
        let mut sample = sample.clone();
        // Corrector (UniC) for the previous step, using this step's model output.
        if let Some(last) = self
            .last_sample
            .take()
            .filter(|_| index > 0 && !self.disable_corrector.contains(&(index - 1)))
        {
            let m0 = &self.model_outputs[self.model_outputs.len() - 1];
            let (alpha_t, sigma_t) = alpha_sigma(sigmas[index]);
            let (_, sigma_s0) = alpha_sigma(sigmas[index - 1]);
            let h = self.lam(index) - self.lam(index - 1);
            let (h_phi_1, b_h, b) = self.coefficients(h);
            let mut out = last.clone();
            if self.this_order == 1 {
                let rho = 0.5f32;
                ndarray::Zip::from(&mut out)
                    .and(m0)
                    .and(&x0)
                    .for_each(|x, &m, &mt| {
                        let base = sigma_t / sigma_s0 * *x - alpha_t * h_phi_1 * m;
                        *x = base - alpha_t * b_h * (rho * (mt - m));
                    });
            } else {
                let m1 = &self.model_outputs[self.model_outputs.len() - 2];
                let rk = (self.lam(index - 2) - self.lam(index - 1)) / h;
                // Solve [[1, 1], [rk, 1]] rho = b (diffusers: torch.linalg.solve).
                let det = 1.0 - rk;
                let rho0 = (b[0] - b[1]) / det;
                let rho1 = (b[1] - rk * b[0]) / det;
                ndarray::Zip::from(&mut out)
                    .and(m0)
                    .and(m1)
                    .and(&x0)
                    .for_each(|x, &m, &p, &mt| {
                        let base = sigma_t / sigma_s0 * *x - alpha_t * h_phi_1 * m;
                        let d1 = (p - m) / rk;
                        *x = base - alpha_t * b_h * (rho0 * d1 + rho1 * (mt - m));
                    });
            }
            sample = out;
        }
        if self.model_outputs.len() == 2 {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0);
        let len = self.schedule.timesteps.len();
        let order = if self.lower_order_final {
            2.min(len - index)
        } else {
            2
        };
        self.this_order = order.min(self.lower_order_nums + 1);
        self.last_sample = Some(sample.clone());
        // Predictor (UniP).
        let m0 = &self.model_outputs[self.model_outputs.len() - 1];
        let (alpha_t, sigma_t) = alpha_sigma(sigmas[index + 1]);
        let (_, sigma_s0) = alpha_sigma(sigmas[index]);
        let h = self.lam(index + 1) - self.lam(index);
        let (h_phi_1, b_h, _) = self.coefficients(h);
        let mut out = sample;
        if self.this_order == 1 {
            out.zip_mut_with(m0, |x, &m| {
                *x = sigma_t / sigma_s0 * *x - alpha_t * h_phi_1 * m
            });
        } else {
            let m1 = &self.model_outputs[self.model_outputs.len() - 2];
            let rk = (self.lam(index - 1) - self.lam(index)) / h;
            ndarray::Zip::from(&mut out)
                .and(m0)
                .and(m1)
                .for_each(|x, &m, &p| {
                    let base = sigma_t / sigma_s0 * *x - alpha_t * h_phi_1 * m;
                    *x = base - alpha_t * b_h * (0.5 * ((p - m) / rk));
                });
        }
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        out
    }
}
