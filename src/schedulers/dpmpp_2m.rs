//! DPM-Solver++ (2M): second-order multistep, data prediction, midpoint or Heun solver type.
//! Port of diffusers `schedulers/scheduling_dpmsolver_multistep.py` (`DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2`): `set_timesteps`, `convert_model_output`,
//! `dpm_solver_first_order_update`, `multistep_dpm_solver_second_order_update`, `step`.

use super::schedule::{
    TrainSchedule, ZeroSnr, interp_index, karras_sigmas, log_sigmas, np_arange, np_linspace,
    np_round, reject_sigma_variants, sigma_to_t, spacing_err,
};
use super::{Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err};
use crate::rng::NoiseSource;

pub struct DpmPp2m {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    prediction: Prediction,
    heun: bool,
    lower_order_final: bool,
    euler_at_final: bool,
    final_zero: bool,
    model_outputs: Vec<Latents>,
    lower_order_nums: usize,
}

/// `_sigma_to_alpha_sigma_t` (non-flow models).
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmPp2m {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::ClampLast)?;
        let n = train.num_train_timesteps;
        match config.str("algorithm_type", "dpmsolver++")? {
            "dpmsolver++" | "deis" => {}
            other => {
                return Err(config_err(
                    "algorithm_type",
                    format!("`{other}` is not ported by dpm++2m (dpmsolver++ only)"),
                ));
            }
        }
        if config.usize("solver_order", 2)? != 2 {
            return Err(config_err(
                "solver_order",
                "dpm++2m is the second-order solver; only 2 is ported",
            ));
        }
        config.require_default_bool("thresholding", false)?;
        reject_sigma_variants(
            config,
            &[
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_lu_lambdas",
                "use_flow_sigmas",
            ],
        )?;
        if config
            .raw()
            .get("variance_type")
            .is_some_and(|v| !v.is_null())
        {
            return Err(config_err(
                "variance_type",
                "learned variance is not ported",
            ));
        }
        let heun = match config.str("solver_type", "midpoint")? {
            "midpoint" | "logrho" | "bh1" | "bh2" => false,
            "heun" => true,
            other => {
                return Err(config_err(
                    "solver_type",
                    format!("`{other}` is not one of midpoint, heun"),
                ));
            }
        };
        let final_zero = match config.str("final_sigmas_type", "zero")? {
            "zero" => true,
            "sigma_min" => false,
            other => {
                return Err(config_err(
                    "final_sigmas_type",
                    format!("`{other}` is not one of zero, sigma_min"),
                ));
            }
        };
        let all = train.sigmas();
        // lambda_min_clipped trims the schedule's noisy end (diffusers: searchsorted on flipped lambda_t).
        let clip = config.f64("lambda_min_clipped", f64::NEG_INFINITY)?;
        let lambdas: Vec<f32> = train
            .alphas_cumprod
            .iter()
            .map(|a| lambda(a.sqrt(), (1.0 - a).sqrt()))
            .rev()
            .collect();
        let clipped_idx = lambdas.iter().take_while(|&&l| (l as f64) < clip).count();
        let last = (n - clipped_idx) as f64;
        let offset = config.usize("steps_offset", 0)? as i64;
        let mut ts: Vec<i64> = match config.str("timestep_spacing", "linspace")? {
            "linspace" => {
                let v = np_linspace(0.0, last - 1.0, steps + 1);
                v.iter()
                    .rev()
                    .take(steps)
                    .map(|&x| np_round(x) as i64)
                    .collect()
            }
            "leading" => {
                let ratio = (last as i64) / (steps as i64 + 1);
                (1..=steps as i64)
                    .rev()
                    .map(|i| i * ratio + offset)
                    .collect()
            }
            "trailing" => np_arange(last, 0.0, -(n as f64 / steps as f64))
                .iter()
                .map(|&x| np_round(x) as i64 - 1)
                .collect(),
            other => return Err(spacing_err(other)),
        };
        let mut sigmas: Vec<f64>;
        if config.bool("use_karras_sigmas", false)? {
            let logs = log_sigmas(&all);
            sigmas = karras_sigmas(all[0] as f64, all[n - 1] as f64, steps);
            let cosine = config.str("beta_schedule", "linear")? == "squaredcos_cap_v2";
            ts = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &logs);
                    (if cosine { t } else { np_round(t) }) as i64
                })
                .collect();
        } else {
            if ts.iter().any(|&t| t < 0 || t >= n as i64) {
                return Err(config_err(
                    "steps_offset",
                    format!("puts timesteps outside 0..{n}"),
                ));
            }
            sigmas = ts.iter().map(|&t| interp_index(t as f64, &all)).collect();
        }
        sigmas.push(if final_zero { 0.0 } else { all[0] as f64 });
        Ok(DpmPp2m {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            sigmas: sigmas.iter().map(|&s| s as f32).collect(),
            prediction: config.prediction()?,
            heun,
            lower_order_final: config.bool("lower_order_final", true)?,
            euler_at_final: config.bool("euler_at_final", false)?,
            final_zero,
            model_outputs: Vec::new(),
            lower_order_nums: 0,
        })
    }

    /// `convert_model_output` for dpmsolver++: the data prediction x0.
    fn x0(&self, model_output: &Latents, sample: &Latents, index: usize) -> Latents {
        let (alpha, sigma) = alpha_sigma(self.sigmas[index]);
        let mut x0 = sample.clone();
        match self.prediction {
            Prediction::Epsilon => {
                x0.zip_mut_with(model_output, |s, &m| *s = (*s - sigma * m) / alpha)
            }
            Prediction::Sample => x0.assign(model_output),
            Prediction::VPrediction => {
                x0.zip_mut_with(model_output, |s, &m| *s = alpha * *s - sigma * m)
            }
        }
        x0
    }
}

impl Scheduler for DpmPp2m {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn step(
        &mut self,
        model_output: &Latents,
        index: usize,
        sample: &Latents,
        _noise: &mut dyn NoiseSource,
    ) -> Latents {
        let len = self.timesteps.len();
        let lower_order_final = index == len - 1
            && (self.euler_at_final || (self.lower_order_final && len < 15) || self.final_zero);
        let x0 = self.x0(model_output, sample, index);
        if self.model_outputs.len() == 2 {
            self.model_outputs.remove(0);
        }
        self.model_outputs.push(x0);
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[index + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[index]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let c0 = alpha_t * ((-h).exp() - 1.0);
        let m0 = &self.model_outputs[self.model_outputs.len() - 1];
        let mut out = sample.clone();
        if self.lower_order_nums < 1 || lower_order_final {
            out.zip_mut_with(m0, |s, &d0| *s = ratio * *s - c0 * d0);
        } else {
            // Second order (diffusers' `lower_order_second` only matters for solver_order 3).
            let m1 = &self.model_outputs[self.model_outputs.len() - 2];
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[index - 1]);
            let h0 = lambda_s0 - lambda(alpha_s1, sigma_s1);
            let r0 = h0 / h;
            let inv_r0 = 1.0 / r0;
            let c1 = if self.heun {
                -(alpha_t * (((-h).exp() - 1.0) / h + 1.0))
            } else {
                0.5 * c0
            };
            ndarray::Zip::from(&mut out)
                .and(m0)
                .and(m1)
                .for_each(|s, &d0, &p1| {
                    let d1 = inv_r0 * (d0 - p1);
                    *s = ratio * *s - c0 * d0 - c1 * d1;
                });
        }
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        out
    }
}
