//! Noise schedulers, one file per algorithm, each a port of the diffusers class it names.
//!
//! The interface follows diffusers' `schedulers/`: a scheduler is built from a config (the folder's
//! `scheduler_config.json`, read with the chosen class's own defaults for missing keys, as `from_config`
//! does), `set_timesteps` fixes the schedule, and the pipeline calls `scale_model_input` and `step` once per
//! timestep. Steps are addressed by index (diffusers' `step_index`).
//!
//! This module never touches ONNX Runtime or images: its inputs are latents and noise.

mod config;
mod ddim;
mod ddpm;
mod deis;
mod dpmpp_2m;
mod euler;
mod euler_ancestral;
mod heun;
mod kdpm2;
mod kdpm2_ancestral;
mod lcm;
mod lms;
mod multistep;
mod pndm;
mod schedule;
mod unipc;

pub use config::SchedulerConfig;
pub use schedule::SigmaSpacing;

use crate::rng::NoiseSource;
use ndarray::Array4;

/// Latents as the UNet sees them: (batch, channels, height, width).
pub type Latents = Array4<f32>;

/// What a scheduler config or name can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A config key has a value we cannot use.
    #[error("scheduler config `{key}`: {msg}")]
    Config {
        /// The key.
        key: String,
        /// What is wrong.
        msg: String,
    },
    /// A `--scheduler` name we do not know.
    #[error("unknown scheduler `{0}` (choose one of: {names})", names = SchedulerKind::names().join(", "))]
    UnknownName(String),
    /// A diffusers class we do not port.
    #[error("the scheduler class `{0}` in scheduler_config.json has no port here; pick one with --scheduler ({names})", names = SchedulerKind::names().join(", "))]
    UnknownClass(String),
    /// Zero steps asked for.
    #[error("steps must be at least 1")]
    ZeroSteps,
    /// A config value the port does not implement.
    #[error("{0}")]
    Unsupported(String),
}

pub(crate) fn config_err(key: &str, msg: impl Into<String>) -> SchedulerError {
    SchedulerError::Config {
        key: key.to_string(),
        msg: msg.into(),
    }
}

/// One denoising algorithm.
pub trait Scheduler: Send {
    /// The timesteps the UNet is called with, in order (diffusers' `scheduler.timesteps`).
    fn timesteps(&self) -> &[f64];
    /// Factor applied to the initial Gaussian noise.
    fn init_noise_sigma(&self) -> f32;
    /// Scale the (CFG-duplicated) UNet input for step `index`; identity for DDPM-style schedulers.
    fn scale_model_input(&self, sample: Latents, index: usize) -> Latents {
        let _ = index;
        sample
    }
    /// Advance `sample` by one step given the guided model output; ancestral schedulers draw from `noise`.
    fn step(
        &mut self,
        model_output: &Latents,
        index: usize,
        sample: &Latents,
        noise: &mut dyn NoiseSource,
    ) -> Latents;
    /// diffusers' `order`: entries of `timesteps()` per inference step (2 for Heun and KDPM2).
    fn order(&self) -> usize {
        1
    }
    /// diffusers' `add_noise`, at the noise level of schedule position `index` (what `begin_index` /
    /// `step_index` select there).
    fn add_noise(&self, original: &Latents, noise: &Latents, index: usize) -> Latents;
}

/// `add_noise` of the DDPM family: sqrt(a) * x0 + sqrt(1 - a) * noise, a = alphas_cumprod[t].
pub(crate) fn add_noise_alpha(alpha_cumprod: f32, original: &Latents, noise: &Latents) -> Latents {
    axpby(
        alpha_cumprod.sqrt(),
        original,
        (1.0 - alpha_cumprod).sqrt(),
        noise,
    )
}

/// `add_noise` of the k-diffusion family: x0 + sigma * noise.
pub(crate) fn add_noise_sigma(sigma: f32, original: &Latents, noise: &Latents) -> Latents {
    axpby(1.0, original, sigma, noise)
}

/// The schedulers we ship, by CLI name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerKind {
    /// PNDMScheduler (PLMS).
    Pndm,
    /// DDIMScheduler.
    Ddim,
    /// DDPMScheduler.
    Ddpm,
    /// LMSDiscreteScheduler.
    Lms,
    /// EulerDiscreteScheduler.
    Euler,
    /// EulerAncestralDiscreteScheduler.
    EulerAncestral,
    /// HeunDiscreteScheduler.
    Heun,
    /// DPMSolverMultistepScheduler (DPM++ 2M).
    DpmPp2m,
    /// DPMSolverMultistepScheduler with `algorithm_type="sde-dpmsolver++"`.
    DpmPp2mSde,
    /// UniPCMultistepScheduler.
    UniPc,
    /// KDPM2DiscreteScheduler.
    Kdpm2,
    /// KDPM2AncestralDiscreteScheduler.
    Kdpm2Ancestral,
    /// DEISMultistepScheduler.
    Deis,
    /// LCMScheduler.
    Lcm,
}

const ALL: [(SchedulerKind, &str, &str, &str); 14] = [
    (
        SchedulerKind::Pndm,
        "pndm",
        "PNDMScheduler",
        "pseudo numerical methods (PLMS), the SD 1.x default",
    ),
    (
        SchedulerKind::Ddim,
        "ddim",
        "DDIMScheduler",
        "denoising diffusion implicit models, deterministic (eta 0)",
    ),
    (
        SchedulerKind::Ddpm,
        "ddpm",
        "DDPMScheduler",
        "the original ancestral sampler; needs many steps",
    ),
    (
        SchedulerKind::Lms,
        "lms",
        "LMSDiscreteScheduler",
        "linear multistep (order 4) on the sigma ODE",
    ),
    (
        SchedulerKind::Euler,
        "euler",
        "EulerDiscreteScheduler",
        "Euler method on the k-diffusion sigma ODE",
    ),
    (
        SchedulerKind::EulerAncestral,
        "euler-a",
        "EulerAncestralDiscreteScheduler",
        "Euler with fresh noise each step (ancestral)",
    ),
    (
        SchedulerKind::Heun,
        "heun",
        "HeunDiscreteScheduler",
        "Heun's second-order method; two UNet calls a step",
    ),
    (
        SchedulerKind::DpmPp2m,
        "dpm++2m",
        "DPMSolverMultistepScheduler",
        "DPM-Solver++ second-order multistep",
    ),
    (
        SchedulerKind::DpmPp2mSde,
        "dpm++2m-sde",
        "DPMSolverMultistepScheduler",
        "DPM-Solver++ 2M, stochastic (fresh noise each step)",
    ),
    (
        SchedulerKind::UniPc,
        "unipc",
        "UniPCMultistepScheduler",
        "UniPC bh2 predictor-corrector, second order",
    ),
    (
        SchedulerKind::Kdpm2,
        "kdpm2",
        "KDPM2DiscreteScheduler",
        "k-diffusion DPM2; two UNet calls a step",
    ),
    (
        SchedulerKind::Kdpm2Ancestral,
        "kdpm2-a",
        "KDPM2AncestralDiscreteScheduler",
        "DPM2 with fresh noise each step (ancestral)",
    ),
    (
        SchedulerKind::Deis,
        "deis",
        "DEISMultistepScheduler",
        "DEIS log-rho multistep, second order",
    ),
    (
        SchedulerKind::Lcm,
        "lcm",
        "LCMScheduler",
        "latent consistency; for LCM(-LoRA) UNets, 2-8 steps",
    ),
];

impl SchedulerKind {
    /// Every name `--scheduler` takes.
    pub fn names() -> Vec<&'static str> {
        ALL.iter().map(|e| e.1).collect()
    }

    /// (kind, name, one-line description) of every scheduler.
    pub fn all() -> impl Iterator<Item = (SchedulerKind, &'static str, &'static str)> {
        ALL.iter().map(|e| (e.0, e.1, e.3))
    }

    /// By the name `--scheduler` takes.
    pub fn from_name(name: &str) -> Result<Self, SchedulerError> {
        match Self::parse_name(name)? {
            (kind, None) => Ok(kind),
            (_, Some(_)) => Err(SchedulerError::UnknownName(name.to_string())),
        }
    }

    /// A scheduler by any name users bring: ours (`dpm++2m`), A1111's (`DPM++ 2M`, `Euler a`, `PLMS`), the
    /// k-diffusion/A1111 API aliases (`k_euler_a`, `dpmpp_2m`), stable-diffusion.cpp's (`euler_a`, `dpm2`),
    /// diffusers' class names (`EulerDiscreteScheduler`), case-insensitively, ignoring spaces, `_`, `-` and `.`;
    /// with A1111's old combined forms `NAME Karras` / `NAME Exponential`, which also return the schedule.
    pub fn parse_name(name: &str) -> Result<(Self, Option<SigmaSpacing>), SchedulerError> {
        if let Ok(kind) = Self::from_class(name.trim()) {
            return Ok((kind, None));
        }
        let mut n: String = name
            .to_lowercase()
            .replace("++", "pp")
            .chars()
            .filter(|c| !matches!(c, ' ' | '_' | '-' | '.'))
            .collect();
        let mut schedule = None;
        for (suffix, s) in [
            ("karras", SigmaSpacing::Karras),
            ("exponential", SigmaSpacing::Exponential),
        ] {
            if n.len() > suffix.len() && n.ends_with(suffix) {
                n.truncate(n.len() - suffix.len());
                schedule = Some(s);
                break;
            }
        }
        let base = n
            .strip_prefix('k')
            .filter(|b| Self::by_alias(b).is_some())
            .unwrap_or(&n);
        Self::by_alias(base)
            .map(|k| (k, schedule))
            .ok_or_else(|| SchedulerError::UnknownName(name.to_string()))
    }

    /// Other names `parse_name` takes for it, for `sd-onnx schedulers` (A1111's first; any case, and `k_`
    /// prefixed forms of the k-diffusion ones, are accepted too).
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            SchedulerKind::Pndm => &["PLMS"],
            SchedulerKind::Ddim => &["DDIM"],
            SchedulerKind::Ddpm => &[],
            SchedulerKind::Lms => &["LMS", "k_lms"],
            SchedulerKind::Euler => &["Euler", "k_euler"],
            SchedulerKind::EulerAncestral => {
                &["Euler a", "euler_a", "k_euler_a", "euler_ancestral"]
            }
            SchedulerKind::Heun => &["Heun", "k_heun"],
            SchedulerKind::DpmPp2m => &["DPM++ 2M", "dpmpp_2m", "k_dpmpp_2m"],
            SchedulerKind::DpmPp2mSde => &["DPM++ 2M SDE", "dpmpp_2m_sde", "k_dpmpp_2m_sde"],
            SchedulerKind::UniPc => &["UniPC"],
            SchedulerKind::Kdpm2 => &["DPM2", "dpm2", "k_dpm_2"],
            SchedulerKind::Kdpm2Ancestral => &["DPM2 a", "dpm2_a", "k_dpm_2_a"],
            SchedulerKind::Deis => &[],
            SchedulerKind::Lcm => &["LCM"],
        }
    }

    /// The sigma schedules (`--schedule`) the diffusers class offers: none for the timestep-based PNDM, DDIM,
    /// DDPM and LCM, only its own for Euler ancestral (no `use_karras_sigmas` there), all four elsewhere.
    pub fn schedules(self) -> &'static [SigmaSpacing] {
        match self {
            SchedulerKind::Pndm
            | SchedulerKind::Ddim
            | SchedulerKind::Ddpm
            | SchedulerKind::Lcm => &[],
            SchedulerKind::EulerAncestral => &[SigmaSpacing::Interpolated],
            _ => &SigmaSpacing::ALL,
        }
    }

    fn by_alias(n: &str) -> Option<Self> {
        Some(match n {
            "pndm" | "plms" => SchedulerKind::Pndm,
            "ddim" => SchedulerKind::Ddim,
            "ddpm" => SchedulerKind::Ddpm,
            "lms" => SchedulerKind::Lms,
            "euler" => SchedulerKind::Euler,
            "eulera" | "eulerancestral" => SchedulerKind::EulerAncestral,
            "heun" => SchedulerKind::Heun,
            "dpmpp2m" | "dpmsolvermultistep" => SchedulerKind::DpmPp2m,
            "dpmpp2msde" => SchedulerKind::DpmPp2mSde,
            "unipc" => SchedulerKind::UniPc,
            "dpm2" => SchedulerKind::Kdpm2,
            "dpm2a" | "dpm2ancestral" => SchedulerKind::Kdpm2Ancestral,
            "deis" => SchedulerKind::Deis,
            "lcm" => SchedulerKind::Lcm,
            _ => return None,
        })
    }

    /// By diffusers' class name (scheduler_config.json `_class_name`).
    pub fn from_class(class: &str) -> Result<Self, SchedulerError> {
        ALL.iter()
            .find(|e| e.2 == class)
            .map(|e| e.0)
            .ok_or_else(|| SchedulerError::UnknownClass(class.to_string()))
    }

    /// The scheduler a folder's config names: its class, and for DPMSolverMultistepScheduler the algorithm.
    pub fn from_config(config: &SchedulerConfig) -> Option<Self> {
        let kind = Self::from_class(config.class_name()?).ok()?;
        let sde =
            config.raw().get("algorithm_type").and_then(|v| v.as_str()) == Some("sde-dpmsolver++");
        Some(if kind == SchedulerKind::DpmPp2m && sde {
            SchedulerKind::DpmPp2mSde
        } else {
            kind
        })
    }

    /// Which schedulers draw fresh noise while denoising (their output depends on the generator's stream).
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            SchedulerKind::Ddpm
                | SchedulerKind::EulerAncestral
                | SchedulerKind::DpmPp2mSde
                | SchedulerKind::Kdpm2Ancestral
                | SchedulerKind::Lcm
        )
    }

    /// The name `--scheduler` takes.
    pub fn name(self) -> &'static str {
        ALL.iter().find(|e| e.0 == self).map_or("", |e| e.1)
    }

    /// The diffusers class this ports.
    pub fn class_name(self) -> &'static str {
        ALL.iter().find(|e| e.0 == self).map_or("", |e| e.2)
    }

    /// Build the scheduler from the folder's config (with this class's defaults) and set `steps` timesteps.
    /// `set_timesteps(steps, strength=...)` for the one class that takes img2img strength into its schedule
    /// (LCMScheduler, in diffusers' LatentConsistencyModelImg2ImgPipeline); the others do not take it.
    pub fn build_with_strength(
        self,
        config: &SchedulerConfig,
        steps: usize,
        strength: f64,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        match self {
            SchedulerKind::Lcm if steps > 0 => {
                Ok(Box::new(lcm::Lcm::with_strength(config, steps, strength)?))
            }
            other => other.build(config, steps),
        }
    }

    /// The scheduler configured by `config` (class defaults for what it leaves out), set for `steps` steps.
    pub fn build(
        self,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Box<dyn Scheduler>, SchedulerError> {
        if steps == 0 {
            return Err(SchedulerError::ZeroSteps);
        }
        Ok(match self {
            SchedulerKind::Pndm => Box::new(pndm::Pndm::new(config, steps)?),
            SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config, steps)?),
            SchedulerKind::Euler => Box::new(euler::Euler::new(config, steps)?),
            SchedulerKind::EulerAncestral => {
                Box::new(euler_ancestral::EulerAncestral::new(config, steps)?)
            }
            SchedulerKind::DpmPp2m => Box::new(dpmpp_2m::DpmPp2m::new(config, steps, false)?),
            SchedulerKind::DpmPp2mSde => Box::new(dpmpp_2m::DpmPp2m::new(config, steps, true)?),
            SchedulerKind::Ddpm => Box::new(ddpm::Ddpm::new(config, steps)?),
            SchedulerKind::Heun => Box::new(heun::Heun::new(config, steps)?),
            SchedulerKind::UniPc => Box::new(unipc::UniPc::new(config, steps)?),
            SchedulerKind::Kdpm2 => Box::new(kdpm2::Kdpm2::new(config, steps)?),
            SchedulerKind::Kdpm2Ancestral => {
                Box::new(kdpm2_ancestral::Kdpm2Ancestral::new(config, steps)?)
            }
            SchedulerKind::Deis => Box::new(deis::Deis::new(config, steps)?),
            SchedulerKind::Lcm => Box::new(lcm::Lcm::new(config, steps)?),
            SchedulerKind::Lms => Box::new(lms::Lms::new(config, steps)?),
        })
    }
}

/// How a model's output is to be read (`prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The UNet predicts the noise.
    Epsilon,
    /// The UNet predicts v (SD 2.x 768).
    VPrediction,
    /// The UNet predicts the clean sample.
    Sample,
}

impl Prediction {
    /// By diffusers' `prediction_type` value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "epsilon" => Some(Prediction::Epsilon),
            "v_prediction" => Some(Prediction::VPrediction),
            "sample" | "original_sample" => Some(Prediction::Sample),
            _ => None,
        }
    }
}

/// Elementwise `a * x + b * y`, the shape of nearly every scheduler update.
pub(crate) fn axpby(a: f32, x: &Latents, b: f32, y: &Latents) -> Latents {
    let mut out = x.clone();
    out.zip_mut_with(y, |o, &yv| *o = a * *o + b * yv);
    out
}

/// Draw noise shaped like `like` from the run's generator.
pub(crate) fn noise_like(like: &Latents, noise: &mut dyn NoiseSource) -> Latents {
    let mut out = Latents::zeros(like.raw_dim());
    // randn yields exactly product(shape) values, in row-major order.
    for (o, v) in out.iter_mut().zip(noise.randn(like.shape())) {
        *o = v;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name a user brings finds its scheduler: ours, A1111's, the API aliases, sd.cpp's, diffusers'
    /// classes, any case; the combined "NAME Karras" / "NAME Exponential" forms ask for that schedule.
    #[test]
    fn names_from_a1111_sdcpp_and_aliases_resolve() {
        let (k, e) = (Some(SigmaSpacing::Karras), Some(SigmaSpacing::Exponential));
        for (kind, name, _) in SchedulerKind::all() {
            assert_eq!(
                SchedulerKind::parse_name(name).ok(),
                Some((kind, None)),
                "{name}"
            );
        }
        let cases = [
            ("DPM++ 2M", SchedulerKind::DpmPp2m, None),
            ("DPM++ 2M Karras", SchedulerKind::DpmPp2m, k),
            ("DPM++ 2M SDE Exponential", SchedulerKind::DpmPp2mSde, e),
            ("dpmpp_2m", SchedulerKind::DpmPp2m, None),
            ("k_dpmpp_2m_sde", SchedulerKind::DpmPp2mSde, None),
            ("Euler a", SchedulerKind::EulerAncestral, None),
            ("euler_a", SchedulerKind::EulerAncestral, None),
            ("k_euler_ancestral", SchedulerKind::EulerAncestral, None),
            ("K_EULER", SchedulerKind::Euler, None),
            ("PLMS", SchedulerKind::Pndm, None),
            ("DPM2 a Karras", SchedulerKind::Kdpm2Ancestral, k),
            ("k_dpm_2", SchedulerKind::Kdpm2, None),
            ("k_lms", SchedulerKind::Lms, None),
            ("UniPC", SchedulerKind::UniPc, None),
            ("LCM", SchedulerKind::Lcm, None),
            ("DDPMScheduler", SchedulerKind::Ddpm, None),
            ("DEISMultistepScheduler", SchedulerKind::Deis, None),
        ];
        for (name, kind, schedule) in cases {
            assert_eq!(
                SchedulerKind::parse_name(name).ok(),
                Some((kind, schedule)),
                "{name}"
            );
        }
        for bad in ["heunx", "karras", "exponential", "dpm++ 2s a", ""] {
            assert!(SchedulerKind::parse_name(bad).is_err(), "{bad}");
        }
    }

    /// Every alias `sd-onnx schedulers` shows is one `parse_name` takes, for that scheduler.
    #[test]
    fn listed_aliases_parse() {
        for (kind, _, _) in SchedulerKind::all() {
            for a in kind.aliases() {
                assert_eq!(SchedulerKind::parse_name(a).ok(), Some((kind, None)), "{a}");
            }
        }
    }

    /// `--schedule` names round-trip, and applying one clears the others from a folder's config.
    #[test]
    fn schedules_parse_and_apply_exclusively() {
        for s in SigmaSpacing::ALL {
            assert_eq!(SigmaSpacing::parse(s.name()), Some(s));
            assert_eq!(SigmaSpacing::parse(s.a1111_name()), Some(s));
        }
        assert_eq!(
            SigmaSpacing::parse("default"),
            Some(SigmaSpacing::Interpolated)
        );
        assert_eq!(SigmaSpacing::parse("automatic"), None);
        let mut config = cfg(serde_json::json!({"use_karras_sigmas": true}));
        SigmaSpacing::Beta.apply(&mut config);
        assert_eq!(
            SigmaSpacing::from_config(&config).ok(),
            Some(SigmaSpacing::Beta)
        );
        SigmaSpacing::Interpolated.apply(&mut config);
        assert_eq!(
            SigmaSpacing::from_config(&config).ok(),
            Some(SigmaSpacing::Interpolated)
        );
        // Every scheduler builds with every schedule it lists.
        for (kind, _, _) in SchedulerKind::all() {
            for &s in kind.schedules() {
                let mut config = SchedulerConfig::default();
                s.apply(&mut config);
                assert!(kind.build(&config, 10).is_ok(), "{kind:?} {s:?}");
            }
        }
    }

    fn cfg(v: serde_json::Value) -> SchedulerConfig {
        SchedulerConfig::from_json(v).unwrap()
    }

    #[test]
    fn values_we_cannot_honour_name_their_key_and_unknown_keys_are_ignored() {
        let cases = [
            (
                "euler",
                serde_json::json!({"beta_schedule": "laplace"}),
                "beta_schedule",
            ),
            (
                "pndm",
                serde_json::json!({"skip_prk_steps": false}),
                "skip_prk_steps",
            ),
            (
                "dpm++2m",
                serde_json::json!({"use_karras_sigmas": true, "use_beta_sigmas": true}),
                "use_karras_sigmas",
            ),
            (
                "ddim",
                serde_json::json!({"timestep_spacing": "cosine"}),
                "timestep_spacing",
            ),
            (
                "euler",
                serde_json::json!({"prediction_type": "flow"}),
                "prediction_type",
            ),
            (
                "unipc",
                serde_json::json!({"solver_order": 3}),
                "solver_order",
            ),
            (
                "euler",
                serde_json::json!({"trained_betas": [0.1, 0.2]}),
                "trained_betas",
            ),
        ];
        for (name, c, key) in cases {
            let err = SchedulerKind::from_name(name)
                .unwrap()
                .build(&cfg(c), 10)
                .err()
                .expect(name);
            assert!(err.to_string().contains(key), "{name}: {err}");
        }
        let ok =
            cfg(serde_json::json!({"some_future_key": 3, "_class_name": "EulerDiscreteScheduler"}));
        assert!(SchedulerKind::Euler.build(&ok, 10).is_ok());
        assert!(matches!(
            SchedulerKind::Euler.build(&ok, 0),
            Err(SchedulerError::ZeroSteps)
        ));
    }

    #[test]
    fn folder_config_picks_the_sde_variant() {
        let c = cfg(
            serde_json::json!({"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++"}),
        );
        assert_eq!(
            SchedulerKind::from_config(&c),
            Some(SchedulerKind::DpmPp2mSde)
        );
    }
}
