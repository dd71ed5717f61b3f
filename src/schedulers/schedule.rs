//! What every scheduler shares: the training noise schedule (betas, alphas_cumprod) and the helpers that
//! diffusers copies between classes (`timestep_spacing`, `np.interp` of sigmas, Karras sigmas, `_sigma_to_t`).
//! Arithmetic follows the dtypes diffusers uses: torch float32 for the betas, numpy float64 elsewhere.

use super::{SchedulerConfig, SchedulerError, config_err};

/// The schedule's timesteps (spacing + `steps_offset`) fall outside the training range: say how many steps fit.
pub(crate) fn steps_offset_err(n: usize, steps: usize) -> SchedulerError {
    config_err(
        "steps_offset",
        format!(
            "with {steps} steps puts timesteps outside 0..{n}: use fewer steps (at most {})",
            n - 1
        ),
    )
}

/// `torch.linspace(start, end, steps, dtype=float32)` as ATen computes it: from both ends towards the middle.
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if steps == 1 {
        return vec![s];
    }
    let step = (e - s) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                s + step * i as f32
            } else {
                e - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// `np.linspace(start, stop, num)` in float64.
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// `np.arange(start, stop, step)` for a float step (negative steps count down).
pub fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..len).map(|i| start + i as f64 * step).collect()
}

/// Numpy's `round` (half to even).
pub fn np_round(x: f64) -> f64 {
    x.round_ties_even()
}

/// How a class treats `rescale_betas_zero_snr`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ZeroSnr {
    /// Not a constructor argument of the class: the key is ignored.
    NotAccepted,
    /// Rescaled betas, terminal alphas_cumprod left at 0 (DDIM).
    Accepted,
    /// Rescaled, then the terminal alphas_cumprod set to 2**-24 so sigma stays finite (Euler, DPM).
    ClampLast,
}

/// A class's constructor defaults for the beta keys.
#[derive(Clone, Copy)]
pub struct BetaDefaults {
    pub start: f64,
    pub end: f64,
    pub schedule: &'static str,
}

/// DDPM, DDIM, PNDM, Euler, LMS, DPM-Solver, UniPC, DEIS.
pub const BETAS_DDPM: BetaDefaults = BetaDefaults {
    start: 0.0001,
    end: 0.02,
    schedule: "linear",
};
/// Heun, KDPM2, KDPM2 ancestral ("sensible defaults" in diffusers).
pub const BETAS_K: BetaDefaults = BetaDefaults {
    start: 0.00085,
    end: 0.012,
    schedule: "linear",
};
/// LCM.
pub const BETAS_LCM: BetaDefaults = BetaDefaults {
    start: 0.00085,
    end: 0.012,
    schedule: "scaled_linear",
};

/// The config keys that define the training noise schedule, with the defaults all our classes share.
pub struct TrainSchedule {
    pub num_train_timesteps: usize,
    pub alphas_cumprod: Vec<f32>,
}

impl TrainSchedule {
    /// `betas` -> `alphas_cumprod` exactly as the diffusers constructors do.
    pub fn from_config(
        config: &SchedulerConfig,
        zero_snr: ZeroSnr,
        defaults: BetaDefaults,
    ) -> Result<Self, SchedulerError> {
        let n = config.usize("num_train_timesteps", 1000)?;
        // Real models train with 1000 (a few use up to 4000); the tables below are n long.
        if !(2..=100_000).contains(&n) {
            return Err(config_err(
                "num_train_timesteps",
                format!("{n} is not between 2 and 100000"),
            ));
        }
        let betas: Vec<f32> = if let Some(trained) = config.opt_f64_list("trained_betas")? {
            if trained.len() != n {
                return Err(config_err(
                    "trained_betas",
                    format!("has {} values, expected {n}", trained.len()),
                ));
            }
            trained.iter().map(|&b| b as f32).collect()
        } else {
            let start = config.f64("beta_start", defaults.start)?;
            let end = config.f64("beta_end", defaults.end)?;
            let schedule = config.str("beta_schedule", defaults.schedule)?;
            let linear = matches!(schedule, "linear" | "scaled_linear");
            if linear && !(start > 0.0 && start < end && end < 1.0) {
                return Err(config_err(
                    "beta_end",
                    format!(
                        "beta_start {start} and beta_end {end}: need 0 < beta_start < beta_end < 1"
                    ),
                ));
            }
            match schedule {
                "linear" => torch_linspace_f32(start, end, n),
                "scaled_linear" => torch_linspace_f32(start.sqrt(), end.sqrt(), n)
                    .iter()
                    .map(|b| b * b)
                    .collect(),
                "squaredcos_cap_v2" => betas_for_alpha_bar(n, |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                        .cos()
                        .powi(2)
                }),
                "exp" => betas_for_alpha_bar(n, |t: f64| (t * -12.0).exp()),
                other => {
                    return Err(config_err(
                        "beta_schedule",
                        format!(
                            "`{other}` is not one of linear, scaled_linear, squaredcos_cap_v2, exp"
                        ),
                    ));
                }
            }
        };
        let rescale =
            zero_snr != ZeroSnr::NotAccepted && config.bool("rescale_betas_zero_snr", false)?;
        let betas = if rescale {
            rescale_zero_terminal_snr(&betas)
        } else {
            betas
        };
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = cumprod(&alphas);
        if rescale && zero_snr == ZeroSnr::ClampLast {
            // diffusers (sigma-based classes): "Close to 0 without being 0 so first sigma is not inf".
            alphas_cumprod[n - 1] = 2f32.powi(-24);
        }
        Ok(TrainSchedule {
            num_train_timesteps: n,
            alphas_cumprod,
        })
    }

    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in float32, indexed by training timestep.
    pub fn sigmas(&self) -> Vec<f32> {
        self.alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect()
    }
}

/// `torch.cumprod` on CPU accumulates in double and rounds each partial product to float.
fn cumprod(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= v as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` (cosine: Glide's `squaredcos_cap_v2`; or `exp`).
fn betas_for_alpha_bar(n: usize, alpha_bar: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (arXiv:2305.08891, Algorithm 1), in float32 like torch.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_bar: Vec<f32> = cumprod(&alphas).iter().map(|a| a.sqrt()).collect();
    let first = sqrt_bar[0];
    let last = sqrt_bar[sqrt_bar.len() - 1];
    for v in sqrt_bar.iter_mut() {
        *v -= last;
        *v *= first / (first - last);
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// `timestep_spacing` as the sigma-based classes (Euler, Euler ancestral, LMS) apply it: float timesteps,
/// descending.
pub fn spaced_timesteps_float(
    config: &SchedulerConfig,
    n_train: usize,
    steps: usize,
    default: &str,
) -> Result<Vec<f64>, SchedulerError> {
    let offset = config.usize("steps_offset", 0)? as f64;
    let ts: Vec<f64> = match config.str("timestep_spacing", default)? {
        "linspace" => {
            let mut v: Vec<f64> = np_linspace(0.0, (n_train - 1) as f64, steps)
                .iter()
                .map(|&x| x as f32 as f64)
                .collect();
            v.reverse();
            v
        }
        "leading" => {
            let ratio = (n_train / steps) as f64;
            (0..steps)
                .rev()
                .map(|i| np_round(i as f64 * ratio) as f32 as f64 + offset)
                .collect()
        }
        "trailing" => {
            let ratio = n_train as f64 / steps as f64;
            np_arange(n_train as f64, 0.0, -ratio)
                .iter()
                .map(|&x| np_round(x) as f32 as f64 - 1.0)
                .collect()
        }
        other => return Err(spacing_err(other)),
    };
    Ok(ts)
}

/// `timestep_spacing` as the DDPM family applies it (DDPMScheduler, DDIMScheduler; PNDMScheduler reverses it):
/// integer timesteps, descending, all inside the training range.
pub fn spaced_timesteps_int(
    config: &SchedulerConfig,
    n_train: usize,
    steps: usize,
) -> Result<Vec<i64>, SchedulerError> {
    let offset = config.usize("steps_offset", 0)? as i64;
    let n = n_train;
    let ts: Vec<i64> = match config.str("timestep_spacing", "leading")? {
        "linspace" => np_linspace(0.0, (n - 1) as f64, steps)
            .iter()
            .rev()
            .map(|&x| np_round(x) as i64)
            .collect(),
        "leading" => {
            let ratio = (n / steps) as i64;
            (0..steps as i64)
                .rev()
                .map(|i| i * ratio + offset)
                .collect()
        }
        "trailing" => np_arange(n as f64, 0.0, -(n as f64 / steps as f64))
            .iter()
            .map(|&x| np_round(x) as i64 - 1)
            .collect(),
        other => return Err(spacing_err(other)),
    };
    if ts.iter().any(|&t| t < 0 || t >= n as i64) {
        return Err(steps_offset_err(n, steps));
    }
    Ok(ts)
}

/// The x0 estimate of the DDPM family from `alphas_cumprod[t]` (DDIM, DDPM, LCM).
pub fn alpha_x0(
    prediction: super::Prediction,
    alpha_t: f32,
    sample: &super::Latents,
    model_output: &super::Latents,
) -> super::Latents {
    let (sa, sb) = (alpha_t.sqrt(), (1.0 - alpha_t).sqrt());
    let mut x0 = sample.clone();
    match prediction {
        super::Prediction::Epsilon => {
            x0.zip_mut_with(model_output, |s, &m| *s = (*s - sb * m) / sa)
        }
        super::Prediction::Sample => x0.assign(model_output),
        super::Prediction::VPrediction => {
            x0.zip_mut_with(model_output, |s, &m| *s = sa * *s - sb * m)
        }
    }
    x0
}

/// What the DDPM family does to its x0 estimate: dynamic thresholding if `thresholding`, else `clip_sample`.
pub struct X0Limit {
    thresholding: Option<Thresholding>,
    clip: Option<f32>,
}

impl X0Limit {
    /// `clip_default`: the class's default for `clip_sample`.
    pub fn from_config(
        config: &SchedulerConfig,
        clip_default: bool,
    ) -> Result<Self, SchedulerError> {
        let thresholding = Thresholding::from_config(config)?;
        let clip = if thresholding.is_none() && config.bool("clip_sample", clip_default)? {
            Some(config.f64("clip_sample_range", 1.0)? as f32)
        } else {
            None
        };
        Ok(X0Limit { thresholding, clip })
    }

    pub fn apply(&self, x0: &mut super::Latents) {
        if let Some(t) = &self.thresholding {
            t.apply(x0);
        } else if let Some(r) = self.clip {
            x0.mapv_inplace(|v| v.clamp(-r, r));
        }
    }
}

pub fn spacing_err(value: &str) -> SchedulerError {
    config_err(
        "timestep_spacing",
        format!("`{value}` is not one of linspace, leading, trailing"),
    )
}

/// `np.interp(x, arange(len(fp)), fp)` for `x` inside `[0, len-1]`.
pub fn interp_index(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    let slope = fp[j + 1] as f64 - fp[j] as f64;
    slope * (x - j as f64) + fp[j] as f64
}

/// k-diffusion's Karras et al. (2022) sigmas, rho = 7, from `sigma_max` down to `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, steps)
        .iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose sigma is `sigma`, interpolating in log
/// space between neighbouring training sigmas. `log_sigmas` is float32 as numpy computes it there.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let mut low = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls as f64 >= 0.0 {
            low = i;
        }
    }
    let low = low.min(log_sigmas.len() - 2);
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[high] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

/// `_sigma_to_t` when diffusers calls it with torch float32 tensors (KDPM2's interpolated sigmas): the log
/// and the weight in float32, the final blend in float64.
pub fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let mut low = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls >= 0.0 {
            low = i;
        }
    }
    let low = low.min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0) as f64;
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// diffusers' `_threshold_sample` (dynamic thresholding, Imagen): per image, clamp to the
/// `dynamic_thresholding_ratio` quantile of |x| (at least 1, at most `sample_max_value`) and divide by it.
pub struct Thresholding {
    ratio: f64,
    max_value: f32,
}

impl Thresholding {
    /// `None` unless `thresholding` is true in the config.
    pub fn from_config(config: &SchedulerConfig) -> Result<Option<Self>, SchedulerError> {
        if !config.bool("thresholding", false)? {
            return Ok(None);
        }
        Ok(Some(Thresholding {
            ratio: config.f64("dynamic_thresholding_ratio", 0.995)?,
            max_value: config.f64("sample_max_value", 1.0)? as f32,
        }))
    }

    pub fn apply(&self, x: &mut super::Latents) {
        for mut item in x.outer_iter_mut() {
            let mut abs: Vec<f32> = item.iter().map(|v| v.abs()).collect();
            abs.sort_by(f32::total_cmp);
            // torch.quantile, linear interpolation.
            let pos = self.ratio * (abs.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(abs.len() - 1);
            let w = (pos - lo as f64) as f32;
            let q = if w < 0.5 {
                abs[lo] + w * (abs[hi] - abs[lo])
            } else {
                abs[hi] - (abs[hi] - abs[lo]) * (1.0 - w)
            };
            let s = q.clamp(1.0, self.max_value.max(1.0));
            item.mapv_inplace(|v| v.clamp(-s, s) / s);
        }
    }
}

pub fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|s| s.ln()).collect()
}

/// Reject the sigma variants diffusers offers that we have not ported, naming the key.
pub fn reject_sigma_variants(
    config: &SchedulerConfig,
    keys: &[&str],
) -> Result<(), SchedulerError> {
    for key in keys {
        config.require_default_bool(key, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_endpoints() {
        let v = np_linspace(0.0, 999.0, 25);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[24], 999.0);
        assert!((v[1] - 41.625).abs() < 1e-12);
    }

    /// Configs that would allocate without bound or give a meaningless schedule are refused by key.
    #[test]
    fn absurd_training_schedules_are_refused() {
        let refuse = |json: serde_json::Value| {
            let cfg = SchedulerConfig::from_json(json).unwrap_or_else(|e| panic!("{e}"));
            TrainSchedule::from_config(&cfg, ZeroSnr::Accepted, BETAS_DDPM)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = refuse(serde_json::json!({"num_train_timesteps": 1_000_000_000u64}));
        assert!(
            e.contains("`num_train_timesteps`: 1000000000 is not between 2 and 100000"),
            "{e}"
        );
        let e = refuse(
            serde_json::json!({"beta_start": 0.02, "beta_end": 0.0001, "beta_schedule": "linear"}),
        );
        assert!(e.contains("need 0 < beta_start < beta_end < 1"), "{e}");
        // The cosine schedule does not use beta_start/beta_end.
        let e = refuse(
            serde_json::json!({"beta_start": 0.5, "beta_end": 0.1, "beta_schedule": "squaredcos_cap_v2"}),
        );
        assert_eq!(e, "");
    }

    #[test]
    fn round_is_half_even() {
        assert_eq!(np_round(2.5), 2.0);
        assert_eq!(np_round(3.5), 4.0);
    }

    #[test]
    fn sigma_to_t_inverts_training_sigmas() {
        let cfg = SchedulerConfig::default();
        let sched = TrainSchedule::from_config(&cfg, ZeroSnr::NotAccepted, BETAS_DDPM).unwrap();
        let sigmas = sched.sigmas();
        let logs = log_sigmas(&sigmas);
        let t = sigma_to_t(sigmas[500] as f64, &logs);
        assert!((t - 500.0).abs() < 1e-3, "{t}");
    }
}

/// The k-diffusion style schedule of the sigma-based classes (Euler, Euler ancestral, LMS): float timesteps,
/// `steps + 1` float32 sigmas ending in the final sigma, and the input scaling they share.
pub struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
}

/// How the sigmas between sigma_max and sigma_min are spaced (`use_karras_sigmas`, `use_exponential_sigmas`,
/// `use_beta_sigmas`; at most one may be set, as diffusers requires).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigmaSpacing {
    /// Interpolated at the spaced timesteps.
    Interpolated,
    /// Karras et al. (2022), rho = 7.
    Karras,
    /// Log-linear.
    Exponential,
    /// Beta(0.6, 0.6) quantiles ("Beta Sampling is All You Need").
    Beta,
}

impl SigmaSpacing {
    /// Every spacing, in the order `sd-onnx schedulers` lists them.
    pub const ALL: [SigmaSpacing; 4] = [
        SigmaSpacing::Interpolated,
        SigmaSpacing::Karras,
        SigmaSpacing::Exponential,
        SigmaSpacing::Beta,
    ];

    /// By the name `--schedule` takes (any case): `uniform` (alias `default`: sigmas interpolated at the spaced
    /// timesteps, diffusers' default), `karras`, `exponential`, `beta`. These are also A1111's "Schedule type"
    /// names for the same schedules.
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "uniform" | "default" | "interpolated" => Some(SigmaSpacing::Interpolated),
            "karras" => Some(SigmaSpacing::Karras),
            "exponential" => Some(SigmaSpacing::Exponential),
            "beta" => Some(SigmaSpacing::Beta),
            _ => None,
        }
    }

    /// The name `--schedule` takes.
    pub fn name(self) -> &'static str {
        match self {
            SigmaSpacing::Interpolated => "uniform",
            SigmaSpacing::Karras => "karras",
            SigmaSpacing::Exponential => "exponential",
            SigmaSpacing::Beta => "beta",
        }
    }

    /// A1111's "Schedule type" for it (k-diffusion's `get_sigmas` at evenly spaced timesteps is A1111's
    /// "Uniform"; its "Automatic" means each sampler's own default, e.g. Karras for DPM++ 2M, so it is never
    /// written).
    pub fn a1111_name(self) -> &'static str {
        match self {
            SigmaSpacing::Interpolated => "Uniform",
            SigmaSpacing::Karras => "Karras",
            SigmaSpacing::Exponential => "Exponential",
            SigmaSpacing::Beta => "Beta",
        }
    }

    /// The diffusers scheduler config key that selects it (`None`: none of them set).
    pub fn config_key(self) -> Option<&'static str> {
        match self {
            SigmaSpacing::Interpolated => None,
            SigmaSpacing::Karras => Some("use_karras_sigmas"),
            SigmaSpacing::Exponential => Some("use_exponential_sigmas"),
            SigmaSpacing::Beta => Some("use_beta_sigmas"),
        }
    }

    /// `config` with exactly this spacing selected (the other keys set to false).
    pub fn apply(self, config: &mut SchedulerConfig) {
        for s in Self::ALL {
            if let Some(key) = s.config_key() {
                config.set(key, serde_json::Value::Bool(s == self));
            }
        }
    }

    /// The spacing a scheduler config selects.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        let set: Vec<(&str, SigmaSpacing)> = [
            ("use_karras_sigmas", SigmaSpacing::Karras),
            ("use_exponential_sigmas", SigmaSpacing::Exponential),
            ("use_beta_sigmas", SigmaSpacing::Beta),
        ]
        .into_iter()
        .filter_map(|(k, v)| match config.bool(k, false) {
            Ok(true) => Some(Ok((k, v))),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
        match set.as_slice() {
            [] => Ok(SigmaSpacing::Interpolated),
            [(_, v)] => Ok(*v),
            [(k, _), ..] => Err(config_err(
                k,
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be set",
            )),
        }
    }

    /// `_convert_to_karras` / `_convert_to_exponential` / `_convert_to_beta`: `steps` sigmas from max to min.
    pub fn convert(self, sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
        match self {
            SigmaSpacing::Interpolated | SigmaSpacing::Karras => {
                karras_sigmas(sigma_min, sigma_max, steps)
            }
            SigmaSpacing::Exponential => np_linspace(sigma_max.ln(), sigma_min.ln(), steps)
                .iter()
                .map(|v| v.exp())
                .collect(),
            SigmaSpacing::Beta => np_linspace(0.0, 1.0, steps)
                .iter()
                .map(|t| sigma_min + beta_ppf(1.0 - t, 0.6, 0.6) * (sigma_max - sigma_min))
                .collect(),
        }
    }
}

/// ln Gamma(x) for x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let mut a = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz's method).
fn beta_inc(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - beta_inc(1.0 - x, b, a);
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp() / a;
    let tiny = 1e-300;
    let (mut f, mut c, mut d) = (1.0, 1.0, 0.0);
    for i in 0..400 {
        let m = (i / 2) as f64;
        let num = if i == 0 {
            1.0
        } else if i % 2 == 0 {
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
        } else {
            -((a + m) * (a + b + m) * x) / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
        };
        d = 1.0 + num * d;
        d = if d.abs() < tiny { tiny } else { d };
        d = 1.0 / d;
        c = 1.0 + num / c;
        c = if c.abs() < tiny { tiny } else { c };
        let cd = c * d;
        f *= cd;
        if (1.0 - cd).abs() < 1e-16 {
            break;
        }
    }
    front * (f - 1.0)
}

/// `scipy.stats.beta.ppf(q, a, b)`: I_x(a, b) = q solved by bisection to double precision.
fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_inc(mid, a, b) < q {
            lo = mid
        } else {
            hi = mid
        }
    }
    0.5 * (lo + hi)
}

impl SigmaSchedule {
    /// `set_timesteps` of EulerDiscrete / EulerAncestralDiscrete / LMSDiscrete. `final_sigma_min` is
    /// `final_sigmas_type == "sigma_min"` (Euler only).
    pub fn new(
        config: &SchedulerConfig,
        train: &TrainSchedule,
        steps: usize,
        spacing: SigmaSpacing,
        config_bounds: bool,
        final_sigma_min: bool,
    ) -> Result<Self, SchedulerError> {
        let n = train.num_train_timesteps;
        let mut timesteps = spaced_timesteps_float(config, n, steps, "linspace")?;
        if timesteps.iter().any(|&t| t < 0.0 || t > (n - 1) as f64) {
            return Err(steps_offset_err(n, steps));
        }
        let all = train.sigmas();
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp_index(t, &all)).collect();
        if spacing != SigmaSpacing::Interpolated {
            // Only classes with sigma_min / sigma_max constructor arguments (Euler) read them from the config.
            let logs = log_sigmas(&all);
            let (mut smin, mut smax) = (sigmas[sigmas.len() - 1], sigmas[0]);
            if config_bounds {
                smin = config.opt_f64("sigma_min")?.unwrap_or(smin);
                smax = config.opt_f64("sigma_max")?.unwrap_or(smax);
            }
            sigmas = spacing.convert(smin, smax, steps);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &logs) as f32 as f64)
                .collect();
        }
        let last = if final_sigma_min {
            ((1.0 - train.alphas_cumprod[0]) / train.alphas_cumprod[0]).sqrt() as f64
        } else {
            0.0
        };
        sigmas.push(last);
        let sigmas: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
        let max = sigmas.iter().copied().fold(f32::MIN, f32::max);
        let init_noise_sigma = match config.str("timestep_spacing", "linspace")? {
            "linspace" | "trailing" => max,
            _ => (max * max + 1.0).sqrt(),
        };
        Ok(SigmaSchedule {
            timesteps,
            sigmas,
            init_noise_sigma,
        })
    }

    /// `sample / ((sigma**2 + 1) ** 0.5)`.
    pub fn scale(&self, mut sample: super::Latents, index: usize) -> super::Latents {
        let s = self.sigmas[index];
        let d = (s * s + 1.0).sqrt();
        sample.mapv_inplace(|v| v / d);
        sample
    }

    /// The denoised estimate x0 for the given prediction type at sigma.
    pub fn predict_x0(
        prediction: super::Prediction,
        sigma: f32,
        sample: &super::Latents,
        model_output: &super::Latents,
    ) -> super::Latents {
        use super::Prediction::*;
        let mut x0 = sample.clone();
        match prediction {
            Epsilon => x0.zip_mut_with(model_output, |s, &m| *s -= sigma * m),
            Sample => x0.assign(model_output),
            VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                let c_skip = sigma * sigma + 1.0;
                x0.zip_mut_with(model_output, |s, &m| *s = m * c_out + *s / c_skip);
            }
        }
        x0
    }
}
