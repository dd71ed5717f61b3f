//! DDPM: ancestral sampling with the posterior variance (`fixed_small`), noise drawn at every step but the last.
//! Port of diffusers `schedulers/scheduling_ddpm.py` (`DDPMScheduler.set_timesteps`, `step`, `_get_variance`).

use super::schedule::{
    BETAS_DDPM, Thresholding, TrainSchedule, ZeroSnr, np_arange, np_linspace, np_round, spacing_err,
};
use super::{
    Latents, Prediction, Scheduler, SchedulerConfig, SchedulerError, config_err, noise_like,
};
use crate::rng::NoiseSource;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variance {
    Small,
    SmallLog,
    Large,
}

pub struct Ddpm {
    alphas_cumprod: Vec<f32>,
    prediction: Prediction,
    thresholding: Option<Thresholding>,
    clip: Option<f32>,
    variance: Variance,
    timesteps: Vec<f64>,
}

impl Ddpm {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = TrainSchedule::from_config(config, ZeroSnr::Accepted, BETAS_DDPM)?;
        let n = train.num_train_timesteps;
        if steps > n {
            return Err(config_err(
                "num_train_timesteps",
                format!("{steps} steps exceed the {n} training timesteps"),
            ));
        }
        let variance = match config.str("variance_type", "fixed_small")? {
            "fixed_small" => Variance::Small,
            "fixed_small_log" => Variance::SmallLog,
            "fixed_large" => Variance::Large,
            other => {
                return Err(config_err(
                    "variance_type",
                    format!("`{other}` is not ported (learned variances need a 2x-channel UNet)"),
                ));
            }
        };
        let offset = config.usize("steps_offset", 0)? as i64;
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
            return Err(config_err(
                "steps_offset",
                format!("puts timesteps outside 0..{n}"),
            ));
        }
        let thresholding = Thresholding::from_config(config)?;
        let clip = if thresholding.is_none() && config.bool("clip_sample", true)? {
            Some(config.f64("clip_sample_range", 1.0)? as f32)
        } else {
            None
        };
        Ok(Ddpm {
            alphas_cumprod: train.alphas_cumprod,
            prediction: config.prediction()?,
            thresholding,
            clip,
            variance,
            timesteps: ts.iter().map(|&t| t as f64).collect(),
        })
    }
}

impl Scheduler for Ddpm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn add_noise(&self, original: &Latents, noise: &Latents, index: usize) -> Latents {
        let t = self.timesteps[index.min(self.timesteps.len() - 1)] as usize;
        super::add_noise_alpha(self.alphas_cumprod[t], original, noise)
    }

    fn step(
        &mut self,
        model_output: &Latents,
        index: usize,
        sample: &Latents,
        noise: &mut dyn NoiseSource,
    ) -> Latents {
        let t = self.timesteps[index] as usize;
        let a_t = self.alphas_cumprod[t];
        let a_prev = self
            .timesteps
            .get(index + 1)
            .map_or(1.0, |&p| self.alphas_cumprod[p as usize]);
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let mut x0 = sample.clone();
        match self.prediction {
            Prediction::Epsilon => x0.zip_mut_with(model_output, |s, &m| {
                *s = (*s - b_t.sqrt() * m) / a_t.sqrt()
            }),
            Prediction::Sample => x0.assign(model_output),
            Prediction::VPrediction => {
                x0.zip_mut_with(model_output, |s, &m| *s = a_t.sqrt() * *s - b_t.sqrt() * m)
            }
        }
        if let Some(th) = &self.thresholding {
            th.apply(&mut x0);
        } else if let Some(r) = self.clip {
            x0.mapv_inplace(|v| v.clamp(-r, r));
        }
        let c_x0 = (a_prev.sqrt() * cur_beta) / b_t;
        let c_s = cur_alpha.sqrt() * b_prev / b_t;
        let mut out = x0;
        out.zip_mut_with(sample, |x, &s| *x = c_x0 * *x + c_s * s);
        if t > 0 {
            let eps = noise_like(model_output, noise);
            let var = ((1.0 - a_prev) / (1.0 - a_t) * cur_beta).max(1e-20);
            let scale = match self.variance {
                Variance::Small => var.sqrt(),
                Variance::SmallLog => (0.5 * var.ln()).exp(),
                Variance::Large => cur_beta.sqrt(),
            };
            out.zip_mut_with(&eps, |x, &e| *x += scale * e);
        }
        out
    }
}
