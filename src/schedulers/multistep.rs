//! What diffusers' multistep exponential-integrator solvers share (DPMSolverMultistepScheduler,
//! DEISMultistepScheduler, UniPCMultistepScheduler): integer timesteps spaced over `steps + 1` points,
//! sigmas interpolated or Karras, a final sigma, and the (alpha_t, sigma_t, lambda) parametrisation.

use super::schedule::{
    SigmaSpacing, TrainSchedule, interp_index, log_sigmas, np_arange, np_linspace, np_round,
    sigma_to_t, spacing_err,
};
use super::{Latents, Prediction, SchedulerConfig, SchedulerError, config_err};
use crate::schedulers::schedule::steps_offset_err;

/// What the last sigma is after the schedule's own ones.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum FinalSigma {
    Zero,
    /// sqrt((1 - alphas_cumprod[0]) / alphas_cumprod[0])
    SigmaMin,
    /// Repeat the last Karras sigma (DEIS, and UniPC with `sigma_min`).
    RepeatLast,
}

pub struct MultistepSchedule {
    pub timesteps: Vec<f64>,
    /// `steps + 1` float32 sigmas.
    pub sigmas: Vec<f32>,
}

/// `final_sigmas_type` as read by the classes that have it.
pub fn final_sigmas_type(config: &SchedulerConfig) -> Result<bool, SchedulerError> {
    match config.str("final_sigmas_type", "zero")? {
        "zero" => Ok(true),
        "sigma_min" => Ok(false),
        other => Err(config_err(
            "final_sigmas_type",
            format!("`{other}` is not one of zero, sigma_min"),
        )),
    }
}

impl MultistepSchedule {
    /// `set_timesteps`. `dpm_solver`: DPMSolverMultistep's own rules (honour `lambda_min_clipped`; leave Karras
    /// timesteps unrounded for `squaredcos_cap_v2`). `last` is the final sigma
    /// for the interpolated schedule and `karras_last` for the Karras one.
    pub fn new(
        config: &SchedulerConfig,
        train: &TrainSchedule,
        steps: usize,
        dpm_solver: bool,
        last: FinalSigma,
        karras_last: FinalSigma,
    ) -> Result<Self, SchedulerError> {
        let n = train.num_train_timesteps;
        let all = train.sigmas();
        let mut end = n as f64;
        if dpm_solver {
            let clip = config.f64("lambda_min_clipped", f64::NEG_INFINITY)?;
            let clipped = train
                .alphas_cumprod
                .iter()
                .rev()
                .take_while(|a| (lambda(a.sqrt(), (1.0 - *a).sqrt()) as f64) < clip)
                .count();
            end = (n - clipped) as f64;
        }
        let offset = config.usize("steps_offset", 0)? as i64;
        let mut ts: Vec<i64> = match config.str("timestep_spacing", "linspace")? {
            "linspace" => np_linspace(0.0, end - 1.0, steps + 1)
                .iter()
                .rev()
                .take(steps)
                .map(|&x| np_round(x) as i64)
                .collect(),
            "leading" => {
                let ratio = (end as i64) / (steps as i64 + 1);
                (1..=steps as i64)
                    .rev()
                    .map(|i| i * ratio + offset)
                    .collect()
            }
            "trailing" => np_arange(end, 0.0, -(n as f64 / steps as f64))
                .iter()
                .map(|&x| np_round(x) as i64 - 1)
                .collect(),
            other => return Err(spacing_err(other)),
        };
        let sigma_min = ((1.0 - train.alphas_cumprod[0]) / train.alphas_cumprod[0]).sqrt() as f64;
        let mut sigmas: Vec<f64>;
        let final_kind;
        let spacing = SigmaSpacing::from_config(config)?;
        if spacing != SigmaSpacing::Interpolated {
            let logs = log_sigmas(&all);
            sigmas = spacing.convert(all[0] as f64, all[n - 1] as f64, steps);
            let cosine = config.str("beta_schedule", "linear")? == "squaredcos_cap_v2";
            // Karras timesteps are rounded (DPM-Solver: not for the cosine schedule); exponential and beta
            // ones are truncated by the int64 cast.
            let round = spacing == SigmaSpacing::Karras && !(cosine && dpm_solver);
            ts = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &logs);
                    (if round { np_round(t) } else { t }) as i64
                })
                .collect();
            final_kind = karras_last;
        } else {
            if ts.iter().any(|&t| t < 0 || t >= n as i64) {
                return Err(steps_offset_err(n, steps));
            }
            sigmas = ts.iter().map(|&t| interp_index(t as f64, &all)).collect();
            final_kind = last;
        }
        let final_sigma = match final_kind {
            FinalSigma::Zero => 0.0,
            FinalSigma::SigmaMin => sigma_min,
            FinalSigma::RepeatLast => sigmas[sigmas.len() - 1],
        };
        sigmas.push(final_sigma);
        Ok(MultistepSchedule {
            timesteps: ts.iter().map(|&t| t as f64).collect(),
            sigmas: sigmas.iter().map(|&s| s as f32).collect(),
        })
    }
}

/// `_sigma_to_alpha_sigma_t` (non-flow models).
pub fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

pub fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

/// `convert_model_output` for data-prediction solvers: x0 from the model output at sigma.
pub fn data_prediction(
    prediction: Prediction,
    sigma: f32,
    model_output: &Latents,
    sample: &Latents,
) -> Latents {
    let (alpha, sigma) = alpha_sigma(sigma);
    let mut x0 = sample.clone();
    match prediction {
        Prediction::Epsilon => x0.zip_mut_with(model_output, |s, &m| *s = (*s - sigma * m) / alpha),
        Prediction::Sample => x0.assign(model_output),
        Prediction::VPrediction => {
            x0.zip_mut_with(model_output, |s, &m| *s = alpha * *s - sigma * m)
        }
    }
    x0
}
