//! txt2img as diffusers' `StableDiffusionPipeline.__call__` does it: prompt embeddings (negative or empty
//! prompt for the unconditional half), classifier-free guidance with uncond+cond in one UNet call, latents
//! drawn from the run's generator and scaled by `init_noise_sigma`, the scheduler loop, VAE decode one image
//! at a time, and diffusers' conversion to 8-bit RGB.
//!
//! No file I/O and no printing here: progress and warnings go back to the caller.

use crate::error::{Error, Result};
use crate::graphs::{TextEncoder, Unet, VaeDecoder};
use crate::profile::ModelProfile;
use crate::rng::RngKind;
use crate::runtime::Runtime;
use crate::schedulers::{Latents, Scheduler, SchedulerKind};
use crate::tokenizer::ClipTokenizer;
use ndarray::{Array3, Axis, concatenate, s};
use std::time::{Duration, Instant};

/// One txt2img request, with every default already resolved.
#[derive(Clone, Debug)]
pub struct Txt2Img {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: usize,
    pub guidance: f32,
    pub scheduler: SchedulerKind,
    pub karras: bool,
    pub seed: u64,
    pub rng: RngKind,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
}

impl Txt2Img {
    /// Validate the request against the model and build its scheduler (with `--karras` applied), so that
    /// callers can fail before loading any graph. The pipeline calls it too.
    pub fn check(&self, profile: &ModelProfile) -> Result<Box<dyn Scheduler>> {
        let factor = profile.vae_factor.value;
        for (flag, v) in [("--width", self.width), ("--height", self.height)] {
            if v == 0 || !v.is_multiple_of(factor) {
                return Err(Error::Usage(format!(
                    "{flag} {v} is not a positive multiple of {factor} (the VAE factor)"
                )));
            }
        }
        if self.batch == 0 {
            return Err(Error::Usage("--batch must be at least 1".into()));
        }
        let mut config = profile.scheduler_config.clone();
        if self.karras {
            config.set("use_karras_sigmas", serde_json::Value::Bool(true));
        }
        Ok(self.scheduler.build(&config, self.steps)?)
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

pub struct Generated {
    pub images: Vec<RgbImage>,
    /// The final latents, before the VAE (for parity checks).
    pub latents: Latents,
    pub warnings: Vec<String>,
    pub timings: Timings,
}

/// Where a run's time went (measured with `Instant`; for `bench` and the PERFORMANCE figures).
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Tokenizing and running the text encoder (cond + uncond).
    pub text: Duration,
    /// Each UNet `Session::run`, input conversion included.
    pub unet: Vec<Duration>,
    /// Each step's `scale_model_input` + `step`.
    pub scheduler: Vec<Duration>,
    /// Each step's other host work: CFG batch concat and guidance arithmetic.
    pub guidance: Vec<Duration>,
    /// VAE decode of all images, RGB conversion included.
    pub decode: Duration,
}

/// What the pipeline reports while it runs.
pub enum Progress {
    Step { done: usize, total: usize },
    Decoding,
}

pub struct Pipeline {
    pub profile: ModelProfile,
    tokenizer: ClipTokenizer,
    text_encoder: TextEncoder,
    unet: Unet,
    vae_decoder: VaeDecoder,
    latent_channels: usize,
}

impl Pipeline {
    pub fn load(runtime: &Runtime, profile: ModelProfile) -> Result<Self> {
        let tokenizer = ClipTokenizer::from_dir(&profile.tokenizer_dir)?;
        let text_encoder = TextEncoder::load(runtime, &profile.text_encoder)?;
        let unet = Unet::load(runtime, &profile.unet)?;
        let vae_decoder = VaeDecoder::load(runtime, &profile.vae_decoder)?;
        let latent_channels = profile
            .latent_channels
            .as_ref()
            .map(|c| c.value)
            .or_else(|| unet.declared_channels())
            .unwrap_or(4);
        Ok(Pipeline {
            profile,
            tokenizer,
            text_encoder,
            unet,
            vae_decoder,
            latent_channels,
        })
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    fn embed(&mut self, text: &str, warnings: &mut Vec<String>) -> Result<Array3<f32>> {
        let enc = self.tokenizer.encode(text)?;
        if let Some(cut) = enc.truncated {
            warnings.push(format!(
                "prompt longer than 77 CLIP tokens; this part was cut: \"{cut}\""
            ));
        }
        self.text_encoder.encode(&enc.ids)
    }

    pub fn txt2img(
        &mut self,
        req: &Txt2Img,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        let mut scheduler = req.check(&self.profile)?;
        let factor = self.profile.vae_factor.value;
        let mut warnings = Vec::new();
        let mut timings = Timings::default();
        let started = Instant::now();

        // 1. Embeddings: [uncond x B, cond x B] when guiding, as diffusers concatenates them.
        let cond = self.embed(&req.prompt, &mut warnings)?;
        let guided = req.guidance > 1.0;
        let repeat = |e: &Array3<f32>| -> Result<Array3<f32>> {
            let views: Vec<_> = (0..req.batch).map(|_| e.view()).collect();
            concatenate(Axis(0), &views).map_err(|e| Error::Usage(e.to_string()))
        };
        let context = if guided {
            let uncond = self.embed(req.negative_prompt.as_deref().unwrap_or(""), &mut warnings)?;
            let (u, c) = (repeat(&uncond)?, repeat(&cond)?);
            concatenate(Axis(0), &[u.view(), c.view()]).map_err(|e| Error::Usage(e.to_string()))?
        } else {
            repeat(&cond)?
        };
        timings.text = started.elapsed();

        // 2. Initial latents from the run's generator.
        let shape = (
            req.batch,
            self.latent_channels,
            req.height / factor,
            req.width / factor,
        );
        let mut noise = req.rng.build(req.seed);
        let values = noise.randn(&[shape.0, shape.1, shape.2, shape.3]);
        let mut latents =
            Latents::from_shape_vec(shape, values).map_err(|e| Error::Usage(e.to_string()))?;
        let sigma = scheduler.init_noise_sigma();
        latents.mapv_inplace(|v| v * sigma);

        // 3. Denoise.
        let timesteps = scheduler.timesteps().to_vec();
        let g = req.guidance;
        for (i, &t) in timesteps.iter().enumerate() {
            let t0 = Instant::now();
            let input = if guided {
                concatenate(Axis(0), &[latents.view(), latents.view()])
                    .map_err(|e| Error::Usage(e.to_string()))?
            } else {
                latents.clone()
            };
            let t1 = Instant::now();
            let input = scheduler.scale_model_input(input, i);
            let t2 = Instant::now();
            let out = self.unet.run(&input, t, &context)?;
            let t3 = Instant::now();
            let noise_pred = if guided {
                let b = req.batch;
                let uncond = out.slice(s![..b, .., .., ..]);
                let text = out.slice(s![b.., .., .., ..]);
                let mut pred = uncond.to_owned();
                pred.zip_mut_with(&text, |u, &c| *u += g * (c - *u));
                pred
            } else {
                out
            };
            let t4 = Instant::now();
            latents = scheduler.step(&noise_pred, i, &latents, noise.as_mut());
            let t5 = Instant::now();
            timings.unet.push(t3 - t2);
            timings.scheduler.push((t2 - t1) + (t5 - t4));
            timings.guidance.push((t1 - t0) + (t4 - t3));
            progress(Progress::Step {
                done: i + 1,
                total: timesteps.len(),
            });
        }

        // 4. Decode one image at a time.
        progress(Progress::Decoding);
        let decode_start = Instant::now();
        let scale = self.profile.vae_scaling_factor.value;
        let mut images = Vec::with_capacity(req.batch);
        for b in 0..req.batch {
            let mut one = latents.slice(s![b..b + 1, .., .., ..]).to_owned();
            one.mapv_inplace(|v| v / scale);
            let decoded = self.vae_decoder.decode(&one)?;
            images.push(to_rgb(&decoded));
        }
        timings.decode = decode_start.elapsed();
        Ok(Generated {
            images,
            latents,
            warnings,
            timings,
        })
    }
}

/// diffusers' `(image / 2 + 0.5).clamp(0, 1)`, then `(x * 255).round()` (half to even) to u8.
fn to_rgb(decoded: &ndarray::Array4<f32>) -> RgbImage {
    let (h, w) = (decoded.shape()[2], decoded.shape()[3]);
    let mut pixels = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = (decoded[[0, c, y, x]] / 2.0 + 0.5).clamp(0.0, 1.0);
                pixels.push((v * 255.0).round_ties_even() as u8);
            }
        }
    }
    RgbImage {
        width: w,
        height: h,
        pixels,
    }
}
