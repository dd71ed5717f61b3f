//! Generation as diffusers' Stable Diffusion pipelines do it:
//! * txt2img (`StableDiffusionPipeline`): prompt embeddings (negative or empty prompt for the unconditional
//!   half), classifier-free guidance with uncond+cond in one UNet call, latents drawn from the run's generator
//!   and scaled by `init_noise_sigma`, the scheduler loop, VAE decode one image at a time, diffusers' rounding;
//! * img2img (`StableDiffusionImg2ImgPipeline`): `strength` picks the first timestep, the encoded image is
//!   noised there with `add_noise`, the loop runs over the remaining timesteps (`set_begin_index`);
//! * inpainting (`StableDiffusionInpaintPipeline`): 9-channel UNets get latents + mask + masked-image latents;
//!   4-channel UNets get the original, noised to the next timestep, blended back outside the mask each step;
//! * SDXL (`StableDiffusionXLPipeline`, `...XLImg2ImgPipeline`, `...XLInpaintPipeline` of base models): the same
//!   three, conditioned on both text encoders' penultimate hidden states concatenated, the second's pooled
//!   projection as `text_embeds` and `time_ids` = (height, width, 0, 0, height, width), with zeros for the
//!   unconditional half when there is no negative prompt (`force_zeros_for_empty_prompt`).
//!
//! Generator draws happen in diffusers' order, so a seed gives diffusers' image.
//!
//! No file I/O and no printing here: progress and warnings go back to the caller.

use crate::error::{Error, Result};
use crate::graphs::{EncoderOutput, TextEncoder, Unet, VaeDecoder, VaeEncoder};
use crate::profile::ModelProfile;
use crate::rng::NoiseSource;
use crate::rng::RngKind;
use crate::runtime::{GraphCapture, Runtime};
use crate::schedulers::{Latents, Scheduler, SchedulerKind};
use crate::tokenizer::ClipTokenizer;
use ndarray::{Array2, Array3, Array4, Axis, concatenate, s};
use std::time::{Duration, Instant};

/// The image (and mask) that img2img and inpainting start from, already at the request's size.
#[derive(Clone, Debug)]
pub struct Init {
    /// (1, 3, height, width), values in [-1, 1] (see `images::load_image`).
    pub image: Array4<f32>,
    /// (height, width), 1 = repaint, 0 = keep; `None` for img2img.
    pub mask: Option<Array2<f32>>,
    /// How much of the schedule to run: 1 = all of it (from pure noise for inpainting), 0 = none.
    pub strength: f64,
}

/// One generation request, with every default already resolved.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: usize,
    pub guidance: f32,
    /// diffusers' `guidance_rescale` (0 = off): pull the guided prediction's spread back toward the text
    /// prediction's, for zero-terminal-SNR models ("Common Diffusion Noise Schedules are Flawed", 0.7 there).
    pub guidance_rescale: f32,
    pub scheduler: SchedulerKind,
    pub karras: bool,
    pub seed: u64,
    pub rng: RngKind,
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    /// img2img / inpainting input; `None` for txt2img.
    pub init: Option<Init>,
}

impl Request {
    /// Validate the request against the model and build its scheduler (with `--karras` applied), so that
    /// callers can fail before loading any graph. The pipeline calls it too.
    pub fn check(&self, profile: &ModelProfile) -> Result<Box<dyn Scheduler>> {
        let m = &profile.size_multiple;
        for (flag, v) in [("--width", self.width), ("--height", self.height)] {
            if v == 0 || !v.is_multiple_of(m.value) {
                return Err(Error::Usage(format!(
                    "{flag} {v} is not a positive multiple of {} ({})",
                    m.value, m.source
                )));
            }
        }
        if self.batch == 0 {
            return Err(Error::Usage("--batch must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            return Err(Error::Usage(format!(
                "--guidance-rescale {} is outside [0, 1]",
                self.guidance_rescale
            )));
        }
        if let Some(init) = &self.init {
            if !(0.0..=1.0).contains(&init.strength) || init.strength.is_nan() {
                return Err(Error::Usage(format!(
                    "--strength {} is outside [0, 1]",
                    init.strength
                )));
            }
            if init.image.shape() != [1, 3, self.height, self.width] {
                return Err(Error::Usage(format!(
                    "init image tensor {:?} does not match {}x{}",
                    init.image.shape(),
                    self.width,
                    self.height
                )));
            }
            if let Some(m) = &init.mask {
                if m.shape() != [self.height, self.width] {
                    return Err(Error::Usage(format!(
                        "mask {:?} does not match {}x{}",
                        m.shape(),
                        self.width,
                        self.height
                    )));
                }
                if !self.strength_in_schedule(profile) && self.start_index(1) >= self.steps {
                    return Err(Error::Usage(format!(
                        "--strength {} leaves no denoising step out of {} (diffusers refuses this too)",
                        init.strength, self.steps
                    )));
                }
            }
        }
        let mut config = profile.scheduler_config.clone();
        if self.karras {
            config.set("use_karras_sigmas", serde_json::Value::Bool(true));
        }
        match &self.init {
            Some(init) if self.strength_in_schedule(profile) => Ok(self
                .scheduler
                .build_with_strength(&config, self.steps, init.strength)?),
            _ => Ok(self.scheduler.build(&config, self.steps)?),
        }
    }

    /// img2img on a guidance-distilled (LCM) UNet with the LCM scheduler follows diffusers'
    /// LatentConsistencyModelImg2ImgPipeline: the strength shapes the scheduler's timesteps and the loop runs
    /// all of them (instead of StableDiffusionImg2ImgPipeline's skipped start). Inpainting has no LCM pipeline
    /// in diffusers and keeps the Stable Diffusion one.
    pub fn strength_in_schedule(&self, profile: &ModelProfile) -> bool {
        self.scheduler == SchedulerKind::Lcm
            && profile.guidance_embedding.is_some()
            && self.init.as_ref().is_some_and(|i| i.mask.is_none())
    }
}

impl Request {
    /// diffusers' `get_timesteps`: the schedule position the run starts from (`t_start * order`).
    pub fn start_index(&self, order: usize) -> usize {
        match &self.init {
            None => 0,
            Some(init) => {
                // In double precision, as Python computes int(steps * strength) (20 * 0.7 == 14.0 there).
                let init_timestep = ((self.steps as f64 * init.strength) as usize).min(self.steps);
                (self.steps - init_timestep) * order
            }
        }
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
    /// Of each bound UNet call, the host work around `Session::run`: latents and timestep into the bound
    /// inputs, the output back (host<->device copies on GPUs). Included in `unet`.
    pub unet_host_io: Vec<Duration>,
    /// Each step's `scale_model_input` + `step`.
    pub scheduler: Vec<Duration>,
    /// Each step's other host work: CFG batch concat and guidance arithmetic.
    pub guidance: Vec<Duration>,
    /// VAE decode of all images, RGB conversion included.
    pub decode: Duration,
    /// How many UNet calls went through the IO binding (all of them, unless binding was unavailable).
    pub bound_unet_calls: usize,
    /// Whether the UNet's bound buffers were kept from the previous generation (same shapes), so nothing
    /// was allocated for this one.
    pub unet_buffers_reused: bool,
    /// What became of `--cuda-graph` for the UNet.
    pub unet_capture: GraphCapture,
}

/// What the pipeline reports while it runs.
pub enum Progress {
    Step { done: usize, total: usize },
    Decoding,
}

/// When graphs are loaded and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryMode {
    /// Keep every session (for reuse across many generations: servers, `bench`).
    #[default]
    KeepAll,
    /// One run: create each session when first needed and drop it as soon as this run no longer needs it
    /// (text encoder after the embeddings, VAE encoder after encoding, UNet after the loop). The same total
    /// load time as loading everything first, a much lower peak. The CLI's default.
    OneShot,
    /// The same order, for `--low-memory`; the CLI also turns off ONNX Runtime's memory-pattern planning.
    Low,
}

pub struct Pipeline<'r> {
    pub profile: ModelProfile,
    runtime: &'r Runtime,
    memory: MemoryMode,
    tokenizer: ClipTokenizer,
    /// SDXL's second tokenizer and text encoder.
    tokenizer_2: Option<ClipTokenizer>,
    text_encoder: Option<TextEncoder>,
    text_encoder_2: Option<TextEncoder>,
    unet: Option<Unet>,
    vae_decoder: Option<VaeDecoder>,
    vae_encoder: Option<VaeEncoder>,
    latent_channels: usize,
    /// 4, or 9 for inpainting UNets (latents + mask + masked-image latents).
    unet_in_channels: usize,
    encoder_output: Option<EncoderOutput>,
}

fn concat4(parts: &[&Latents]) -> Result<Latents> {
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    concatenate(Axis(0), &views).map_err(|e| Error::Usage(e.to_string()))
}

impl<'r> Pipeline<'r> {
    /// Load every graph now and keep it.
    pub fn load(runtime: &'r Runtime, profile: ModelProfile) -> Result<Self> {
        Self::with_memory(runtime, profile, MemoryMode::KeepAll)
    }

    pub fn with_memory(
        runtime: &'r Runtime,
        profile: ModelProfile,
        memory: MemoryMode,
    ) -> Result<Self> {
        let tokenizer = ClipTokenizer::from_dir(&profile.tokenizer_dir)?;
        let tokenizer_2 = match &profile.xl {
            Some(xl) => Some(ClipTokenizer::from_dir(&xl.tokenizer_2_dir)?),
            None => None,
        };
        let mut p = Pipeline {
            runtime,
            memory,
            tokenizer,
            tokenizer_2,
            text_encoder: None,
            text_encoder_2: None,
            unet: None,
            vae_decoder: None,
            vae_encoder: None,
            latent_channels: profile
                .latent_channels
                .as_ref()
                .map(|c| c.value)
                .unwrap_or(4),
            unet_in_channels: 0,
            encoder_output: None,
            profile,
        };
        if memory != MemoryMode::KeepAll {
            // Sessions are created when first needed, in the order of use (text encoder, then UNet, then VAE),
            // so a one-shot run never holds them all at once. What the UNet takes is read from its config or
            // its graph file.
            p.unet_in_channels = p
                .profile
                .unet_in_channels
                .or_else(|| {
                    std::fs::read(&p.profile.unet.graph)
                        .ok()
                        .and_then(|b| crate::onnx_proto::input_conv_channels(&b, "sample"))
                })
                .unwrap_or(p.latent_channels);
            return Ok(p);
        }
        p.text_encoder = Some(TextEncoder::load(runtime, &p.profile.text_encoder)?);
        if let Some(xl) = &p.profile.xl {
            p.text_encoder_2 = Some(TextEncoder::load(runtime, &xl.text_encoder_2)?);
        }
        let unet = Unet::load(runtime, &p.profile.unet)?;
        check_unet(&p.profile, &unet)?;
        if p.profile.latent_channels.is_none() {
            p.latent_channels = unet.declared_channels().unwrap_or(4);
        }
        p.unet_in_channels = p
            .profile
            .unet_in_channels
            .or_else(|| unet.input_channels())
            .unwrap_or(p.latent_channels);
        p.unet = Some(unet);
        p.vae_decoder = Some(VaeDecoder::load(runtime, &p.profile.vae_decoder)?);
        if let Some(c) = &p.profile.vae_encoder {
            let e = VaeEncoder::load(runtime, c)?;
            p.encoder_output = Some(e.output);
            p.vae_encoder = Some(e);
        }
        Ok(p)
    }

    fn text_encoder(&mut self) -> Result<&mut TextEncoder> {
        if self.text_encoder.is_none() {
            self.text_encoder = Some(TextEncoder::load(self.runtime, &self.profile.text_encoder)?);
        }
        self.text_encoder
            .as_mut()
            .ok_or_else(|| Error::Usage("text encoder unavailable".into()))
    }

    fn text_encoder_2(&mut self) -> Result<&mut TextEncoder> {
        if self.text_encoder_2.is_none() {
            let c = self
                .profile
                .xl
                .as_ref()
                .map(|x| &x.text_encoder_2)
                .ok_or_else(|| {
                    Error::model(
                        &self.profile.dir,
                        "has no text_encoder_2 (not an SDXL folder)",
                    )
                })?;
            self.text_encoder_2 = Some(TextEncoder::load(self.runtime, c)?);
        }
        self.text_encoder_2
            .as_mut()
            .ok_or_else(|| Error::Usage("second text encoder unavailable".into()))
    }

    fn unet(&mut self) -> Result<&mut Unet> {
        if self.unet.is_none() {
            let unet = Unet::load(self.runtime, &self.profile.unet)?;
            check_unet(&self.profile, &unet)?;
            self.unet = Some(unet);
        }
        self.unet
            .as_mut()
            .ok_or_else(|| Error::Usage("UNet unavailable".into()))
    }

    /// NaN/inf out of the VAE decoder: the classic fp16 overflow of SD's VAE. Decode again with an fp32
    /// decoder kept in `vae_decoder_fp32/` when the folder has one; otherwise fail, saying how to fix it.
    fn decode_fp32_fallback(
        &mut self,
        latent: &Latents,
        index: usize,
        warnings: &mut Vec<String>,
    ) -> Result<Array4<f32>> {
        let fp16 = self.vae_decoder.as_ref().is_some_and(|d| d.is_fp16());
        let graph = self.profile.vae_decoder.graph.clone();
        match (&self.profile.vae_decoder_fp32, fp16) {
            (Some(c), true) => {
                let mut fallback = VaeDecoder::load(self.runtime, c)?;
                let decoded = fallback.decode(latent)?;
                if decoded.iter().any(|v| !v.is_finite()) {
                    return Err(Error::model(
                        &c.graph,
                        "produced NaN/inf too: the latents themselves are not finite",
                    ));
                }
                warnings.push(format!(
                    "image {index}: the float16 VAE decoder overflowed (NaN/inf); decoded again with {}",
                    c.graph.display()
                ));
                Ok(decoded)
            }
            (None, true) => Err(Error::model(
                graph,
                "produced NaN/inf: SD's VAE overflows in float16. Put an fp32 VAE decoder in vae_decoder_fp32/ \
                 (scripts/optimize_onnx.py keeps one), or export an fp16-safe VAE (e.g. madebyollin/sdxl-vae-fp16-fix)",
            )),
            (_, false) => Err(Error::model(graph, "produced NaN/inf from finite latents")),
        }
    }

    fn vae_decoder(&mut self) -> Result<&mut VaeDecoder> {
        if self.vae_decoder.is_none() {
            self.vae_decoder = Some(VaeDecoder::load(self.runtime, &self.profile.vae_decoder)?);
        }
        self.vae_decoder
            .as_mut()
            .ok_or_else(|| Error::Usage("VAE decoder unavailable".into()))
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// 9 for an inpainting UNet, else the latent channel count.
    pub fn unet_in_channels(&self) -> usize {
        self.unet_in_channels
    }

    /// What the VAE encoder returns (known once it has been loaded).
    pub fn encoder_output(&self) -> Option<EncoderOutput> {
        self.encoder_output
    }

    fn embed(&mut self, text: &str, warnings: &mut Vec<String>) -> Result<Array3<f32>> {
        let enc = self.tokenizer.encode(text)?;
        if let Some(cut) = enc.truncated {
            warnings.push(format!(
                "prompt longer than 77 CLIP tokens; this part was cut: \"{cut}\""
            ));
        }
        self.text_encoder()?.encode(&enc.ids)
    }

    /// SDXL: both encoders' penultimate hidden states concatenated (1, 77, w1 + w2), and the second encoder's
    /// pooled projection (1, p), as `StableDiffusionXLPipeline.encode_prompt` builds them.
    fn embed_xl(
        &mut self,
        text: &str,
        warnings: &mut Vec<String>,
    ) -> Result<(Array3<f32>, Array2<f32>)> {
        let enc = self.tokenizer.encode(text)?;
        if let Some(cut) = &enc.truncated {
            warnings.push(format!(
                "prompt longer than 77 CLIP tokens; this part was cut: \"{cut}\""
            ));
        }
        let enc_2 = self
            .tokenizer_2
            .as_ref()
            .ok_or_else(|| Error::Usage("second tokenizer unavailable".into()))?
            .encode(text)?;
        let (first, _) = self.text_encoder()?.encode_penultimate(&enc.ids)?;
        let (second, pooled) = self.text_encoder_2()?.encode_penultimate(&enc_2.ids)?;
        let pooled = pooled.ok_or_else(|| {
            Error::model(
                self.profile.dir.join("text_encoder_2"),
                "has no `text_embeds` output (the pooled projection SDXL's UNet takes)",
            )
        })?;
        let context = concatenate(Axis(2), &[first.view(), second.view()]).map_err(|e| {
            Error::model(
                &self.profile.dir,
                format!("the two text encoders' hidden states do not concatenate: {e}"),
            )
        })?;
        Ok((context, pooled))
    }

    /// `retrieve_latents(vae.encode(image), generator) * scaling_factor`: the latent distribution sampled
    /// with the run's generator (`mean + std * randn`), or the graph's own sample for legacy exports.
    fn encode(&mut self, image: &Array4<f32>, noise: &mut dyn NoiseSource) -> Result<Latents> {
        let c = self.latent_channels;
        let scale = self.profile.vae_scaling_factor.value;
        if self.vae_encoder.is_none() {
            let c = self.profile.vae_encoder.as_ref().ok_or_else(|| {
                Error::model(
                    &self.profile.dir,
                    "has no vae_encoder: img2img and inpainting need one (export the pipeline with its VAE encoder)",
                )
            })?;
            let e = VaeEncoder::load(self.runtime, c)?;
            self.encoder_output = Some(e.output);
            self.vae_encoder = Some(e);
        }
        let encoder = self
            .vae_encoder
            .as_mut()
            .ok_or_else(|| Error::Usage("VAE encoder unavailable".into()))?;
        let out = encoder.encode(image)?;
        let mut latents = if out.shape()[1] == 2 * c {
            let mean = out.slice(s![.., ..c, .., ..]).to_owned();
            let logvar = out.slice(s![.., c.., .., ..]);
            let eps = crate::schedulers::noise_like(&mean, noise);
            let mut z = mean;
            ndarray::Zip::from(&mut z)
                .and(&logvar)
                .and(&eps)
                .for_each(|m, &lv, &e| {
                    let std = (0.5 * lv.clamp(-30.0, 20.0)).exp();
                    *m += std * e;
                });
            z
        } else if out.shape()[1] == c {
            out
        } else {
            return Err(Error::model(
                &encoder.graph.path,
                format!(
                    "encoder output has {} channels; expected {c} or {}",
                    out.shape()[1],
                    2 * c
                ),
            ));
        };
        latents.mapv_inplace(|v| v * scale);
        Ok(latents)
    }

    pub fn generate(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        let mut scheduler = req.check(&self.profile)?;
        let factor = self.profile.vae_factor.value;
        let inpaint_unet = self.unet_in_channels == 2 * self.latent_channels + 1;
        let mask = req.init.as_ref().and_then(|i| i.mask.as_ref());
        match (inpaint_unet, mask.is_some()) {
            (true, false) => {
                return Err(Error::Usage(format!(
                    "{}: this UNet takes {} input channels (an inpainting model): use `sd-onnx inpaint`",
                    self.profile.dir.display(),
                    self.unet_in_channels
                )));
            }
            (false, _) if self.unet_in_channels != self.latent_channels => {
                return Err(Error::model(
                    &self.profile.unet.graph,
                    format!(
                        "UNet takes {} input channels; expected {} or {}",
                        self.unet_in_channels,
                        self.latent_channels,
                        2 * self.latent_channels + 1
                    ),
                ));
            }
            _ => {}
        }
        let mut warnings = Vec::new();
        let mut timings = Timings::default();
        let started = Instant::now();

        // 1. Embeddings: [uncond x B, cond x B] when guiding, as diffusers concatenates them. A guidance-distilled
        // UNet (LCM) instead takes the scale as an embedding, with no unconditional pass (diffusers:
        // `time_cond_proj_dim` turns classifier-free guidance off).
        let embedding_dim = self.profile.guidance_embedding.as_ref().map(|g| g.value);
        let guided = embedding_dim.is_none() && req.guidance > 1.0;
        let guidance_cond =
            embedding_dim.map(|d| guidance_scale_embedding(req.guidance - 1.0, d, req.batch));
        if embedding_dim.is_some() && req.negative_prompt.is_some() {
            warnings.push(
                "the negative prompt is not used: this UNet is guidance-distilled (LCM); the guidance scale \
                 enters as an embedding, with no unconditional pass (as in diffusers)"
                    .into(),
            );
        }
        // [uncond x B, cond x B] (or cond x B), for any rank.
        fn batched<D: ndarray::RemoveAxis>(
            uncond: Option<&ndarray::Array<f32, D>>,
            cond: &ndarray::Array<f32, D>,
            batch: usize,
        ) -> Result<ndarray::Array<f32, D>> {
            let mut views: Vec<_> = Vec::new();
            if let Some(u) = uncond {
                views.extend((0..batch).map(|_| u.view()));
            }
            views.extend((0..batch).map(|_| cond.view()));
            concatenate(Axis(0), &views).map_err(|e| Error::Usage(e.to_string()))
        }
        // Named 2-D UNet inputs besides the text embeddings: the guidance embedding, SDXL's added conditioning.
        let mut extras: Vec<(&'static str, Array2<f32>)> = Vec::new();
        if let Some(g) = guidance_cond {
            extras.push(("timestep_cond", g));
        }
        let context = if let Some(zeros_for_empty) = self
            .profile
            .xl
            .as_ref()
            .map(|x| x.zeros_for_empty_negative.value)
        {
            let (cond, pooled) = self.embed_xl(&req.prompt, &mut warnings)?;
            let uncond = match (guided, req.negative_prompt.as_deref()) {
                (false, _) => None,
                (true, None) if zeros_for_empty => Some((
                    Array3::zeros(cond.raw_dim()),
                    Array2::zeros(pooled.raw_dim()),
                )),
                (true, negative) => Some(self.embed_xl(negative.unwrap_or(""), &mut warnings)?),
            };
            let context = batched(uncond.as_ref().map(|u| &u.0), &cond, req.batch)?;
            let pooled = batched(uncond.as_ref().map(|u| &u.1), &pooled, req.batch)?;
            // (original size, crop top-left, target size), the same for both halves.
            let (h, w) = (req.height as f32, req.width as f32);
            let ids = [h, w, 0.0, 0.0, h, w];
            extras.push(("text_embeds", pooled));
            extras.push((
                "time_ids",
                Array2::from_shape_fn((context.shape()[0], 6), |(_, j)| ids[j]),
            ));
            context
        } else {
            let cond = self.embed(&req.prompt, &mut warnings)?;
            let uncond = if guided {
                Some(self.embed(req.negative_prompt.as_deref().unwrap_or(""), &mut warnings)?)
            } else {
                None
            };
            batched(uncond.as_ref(), &cond, req.batch)?
        };
        timings.text = started.elapsed();
        if self.memory != MemoryMode::KeepAll {
            self.text_encoder = None;
            self.text_encoder_2 = None;
        }

        // 2. Initial latents, drawing from the generator in diffusers' order.
        let shape = (
            req.batch,
            self.latent_channels,
            req.height / factor,
            req.width / factor,
        );
        let dims = [shape.0, shape.1, shape.2, shape.3];
        let mut noise_src = req.rng.build(req.seed);
        let timesteps = scheduler.timesteps().to_vec();
        let begin = if req.strength_in_schedule(&self.profile) {
            0
        } else {
            req.start_index(scheduler.order()).min(timesteps.len())
        };
        let batch_of = |one: &Latents| -> Result<Latents> { concat4(&vec![one; req.batch]) };
        let mut image_latents: Option<Latents> = None;
        let mut initial_noise: Option<Latents> = None;
        let mut mask_latents: Option<Latents> = None;
        let mut masked_image_latents: Option<Latents> = None;
        let mut latents = match &req.init {
            None => {
                let values = noise_src.randn(&dims);
                let mut l = Latents::from_shape_vec(shape, values)
                    .map_err(|e| Error::Usage(e.to_string()))?;
                let sigma = scheduler.init_noise_sigma();
                l.mapv_inplace(|v| v * sigma);
                l
            }
            Some(init) if init.mask.is_none() => {
                // img2img
                let encoded = batch_of(&self.encode(&init.image, noise_src.as_mut())?)?;
                if begin >= timesteps.len() {
                    encoded // strength 0: the input, re-encoded
                } else {
                    let n = Latents::from_shape_vec(shape, noise_src.randn(&dims))
                        .map_err(|e| Error::Usage(e.to_string()))?;
                    scheduler.add_noise(&encoded, &n, begin)
                }
            }
            Some(init) => {
                // inpainting
                let full_strength = init.strength >= 1.0;
                if !inpaint_unet || !full_strength {
                    image_latents = Some(batch_of(&self.encode(&init.image, noise_src.as_mut())?)?);
                }
                let n = Latents::from_shape_vec(shape, noise_src.randn(&dims))
                    .map_err(|e| Error::Usage(e.to_string()))?;
                let l = match (&image_latents, full_strength) {
                    (Some(il), false) => scheduler.add_noise(il, &n, begin),
                    _ => {
                        let sigma = scheduler.init_noise_sigma();
                        n.mapv(|v| v * sigma)
                    }
                };
                initial_noise = Some(n);
                let m = init
                    .mask
                    .as_ref()
                    .map(|m| nearest_resize(m, shape.2, shape.3))
                    .unwrap_or_else(|| Array2::zeros((shape.2, shape.3)));
                let mut masked = init.image.clone();
                if let Some(full) = &init.mask {
                    ndarray::Zip::indexed(&mut masked).for_each(|(_, _, y, x), v| {
                        if full[[y, x]] >= 0.5 {
                            *v = 0.0;
                        }
                    });
                }
                let mi = batch_of(&self.encode(&masked, noise_src.as_mut())?)?;
                let m4 =
                    Latents::from_shape_fn((req.batch, 1, shape.2, shape.3), |(_, _, y, x)| {
                        m[[y, x]]
                    });
                if guided {
                    mask_latents = Some(concat4(&[&m4, &m4])?);
                    masked_image_latents = Some(concat4(&[&mi, &mi])?);
                } else {
                    mask_latents = Some(m4);
                    masked_image_latents = Some(mi);
                }
                l
            }
        };

        if self.memory != MemoryMode::KeepAll {
            self.vae_encoder = None;
        }

        // 3. Denoise over the remaining schedule. The UNet is bound once for the run (IO binding: context
        // uploaded once, latent/timestep/output buffers allocated once); if binding is impossible it runs plain.
        let g = req.guidance;
        let unet_batch = if guided { 2 * req.batch } else { req.batch };
        let bound_shape = [unet_batch, self.unet_in_channels, shape.2, shape.3];
        if begin < timesteps.len()
            && let Err(e) = self.unet()?.bind(&context, &extras, &bound_shape)
        {
            warnings.push(format!(
                "UNet IO binding unavailable, running without it: {e}"
            ));
        }
        for i in begin..timesteps.len() {
            let t = timesteps[i];
            let t0 = Instant::now();
            let input = if guided {
                concat4(&[&latents, &latents])?
            } else {
                latents.clone()
            };
            let t1 = Instant::now();
            let mut input = scheduler.scale_model_input(input, i);
            let t2 = Instant::now();
            if inpaint_unet && let (Some(m), Some(mi)) = (&mask_latents, &masked_image_latents) {
                input = concatenate(Axis(1), &[input.view(), m.view(), mi.view()])
                    .map_err(|e| Error::Usage(e.to_string()))?;
            }
            let unet = self.unet()?;
            let bound_before = unet.bound_runs;
            let out = unet.run(&input, t, &context, &extras)?;
            if unet.bound_runs > bound_before {
                timings.unet_host_io.push(unet.last_host_io);
            }
            let t3 = Instant::now();
            let noise_pred = if guided {
                let b = req.batch;
                let uncond = out.slice(s![..b, .., .., ..]);
                let text = out.slice(s![b.., .., .., ..]);
                let mut pred = uncond.to_owned();
                pred.zip_mut_with(&text, |u, &c| *u += g * (c - *u));
                if req.guidance_rescale > 0.0 {
                    rescale_guided(&mut pred, &text, req.guidance_rescale);
                }
                pred
            } else {
                out
            };
            let t4 = Instant::now();
            latents = scheduler.step(&noise_pred, i, &latents, noise_src.as_mut());
            let t5 = Instant::now();
            // 4-channel inpainting: keep the original (noised to the next timestep) outside the mask.
            if !inpaint_unet
                && let (Some(il), Some(m), Some(n)) =
                    (&image_latents, &mask_latents, &initial_noise)
            {
                let proper = if i + 1 < timesteps.len() {
                    scheduler.add_noise(il, n, i + 1)
                } else {
                    il.clone()
                };
                let b = req.batch;
                let m = m.slice(s![..b, .., .., ..]);
                ndarray::Zip::indexed(&mut latents).and(&proper).for_each(
                    |(bi, _, y, x), l, &p| {
                        let keep = m[[bi, 0, y, x]];
                        *l = (1.0 - keep) * p + keep * *l;
                    },
                );
            }
            timings.unet.push(t3 - t2);
            timings.scheduler.push((t2 - t1) + (t5 - t4));
            timings.guidance.push((t1 - t0) + (t4 - t3) + t5.elapsed());
            progress(Progress::Step {
                done: i + 1 - begin,
                total: timesteps.len() - begin,
            });
        }

        if let Some(u) = self.unet.as_mut() {
            u.unbind();
            timings.bound_unet_calls = std::mem::take(&mut u.bound_runs);
            timings.unet_buffers_reused = u.reused_binding;
            timings.unet_capture = u.capture().clone();
            if let GraphCapture::Refused(why) = u.capture() {
                warnings.push(format!(
                    "--cuda-graph: the UNet runs without graph capture: {why}"
                ));
            }
        }
        if self.memory != MemoryMode::KeepAll {
            self.unet = None;
        }

        // 4. Decode one image at a time.
        progress(Progress::Decoding);
        let decode_start = Instant::now();
        let scale = self.profile.vae_scaling_factor.value;
        let mut images = Vec::with_capacity(req.batch);
        for b in 0..req.batch {
            let mut one = latents.slice(s![b..b + 1, .., .., ..]).to_owned();
            one.mapv_inplace(|v| v / scale);
            let mut decoded = self.vae_decoder()?.decode(&one)?;
            if decoded.iter().any(|v| !v.is_finite()) {
                decoded = self.decode_fp32_fallback(&one, b, &mut warnings)?;
            }
            images.push(to_rgb(&decoded));
        }
        timings.decode = decode_start.elapsed();
        if self.memory != MemoryMode::KeepAll {
            self.vae_decoder = None;
        }
        Ok(Generated {
            images,
            latents,
            warnings,
            timings,
        })
    }
}

/// The UNet's inputs must agree with what the folder's configs say, since they decide the text encoding: a
/// guidance embedding (`timestep_cond`, LCM) and SDXL's added conditioning (`text_embeds`, `time_ids`).
fn check_unet(profile: &ModelProfile, unet: &Unet) -> Result<()> {
    // Whether the UNet takes the guidance as an embedding decides the text encoding (no unconditional
    // pass), so the config that says it and the graph must agree.
    match (unet.takes_guidance, &profile.guidance_embedding) {
        (true, None) => {
            return Err(Error::model(
                &profile.unet.graph,
                "takes `timestep_cond` (a guidance-distilled UNet) but unet/config.json gives no \
                 time_cond_proj_dim: add the config the export came with",
            ));
        }
        (false, Some(g)) => {
            return Err(Error::model(
                &profile.unet.graph,
                format!(
                    "has no `timestep_cond` input, but {} says the UNet takes a guidance embedding",
                    g.source
                ),
            ));
        }
        _ => {}
    }
    if unet.takes_added_cond != profile.xl.is_some() {
        return Err(Error::model(
            &profile.unet.graph,
            if unet.takes_added_cond {
                "takes SDXL's `text_embeds`/`time_ids`, but the folder has no text_encoder_2/"
            } else {
                "lacks SDXL's `text_embeds`/`time_ids` inputs, but the folder is an SDXL pipeline"
            },
        ));
    }
    Ok(())
}

/// diffusers' `rescale_noise_cfg`: per image, scale the guided prediction to the text prediction's standard
/// deviation (torch's unbiased `std` over channels and pixels), then mix `phi` of that with `1 - phi` of the
/// guided prediction.
fn rescale_guided(pred: &mut Latents, text: &ndarray::ArrayView4<f32>, phi: f32) {
    fn std(v: ndarray::ArrayView3<f32>) -> f64 {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt()
    }
    for (mut p, t) in pred.outer_iter_mut().zip(text.outer_iter()) {
        let ratio = (std(t) / std(p.view()).max(f64::MIN_POSITIVE)) as f32;
        p.mapv_inplace(|x| phi * (x * ratio) + (1.0 - phi) * x);
    }
}

/// diffusers' `get_guidance_scale_embedding(w)` (LatentConsistencyModelPipeline, StableDiffusionPipeline):
/// sinusoidal features of `w * 1000` at frequencies `10000^(-i / (dim/2 - 1))`, sines then cosines, zero-padded
/// to an odd `dim`; one row per image. In float32, as torch computes it.
pub fn guidance_scale_embedding(w: f32, dim: usize, batch: usize) -> Array2<f32> {
    let w = w * 1000.0;
    let half = dim / 2;
    let step = 10000f32.ln() / (half.max(2) - 1) as f32;
    let mut row = vec![0f32; dim];
    for i in 0..half {
        let x = w * (i as f32 * -step).exp();
        row[i] = x.sin();
        row[half + i] = x.cos();
    }
    Array2::from_shape_fn((batch, dim), |(_, j)| row[j])
}

/// `torch.nn.functional.interpolate(mode="nearest")` of a (H, W) mask to (h, w): source index
/// floor(dst * H / h).
fn nearest_resize(mask: &Array2<f32>, h: usize, w: usize) -> Array2<f32> {
    let (sh, sw) = (mask.shape()[0], mask.shape()[1]);
    let (ry, rx) = (sh as f32 / h as f32, sw as f32 / w as f32);
    Array2::from_shape_fn((h, w), |(y, x)| {
        let sy = ((y as f32 * ry).floor() as usize).min(sh - 1);
        let sx = ((x as f32 * rx).floor() as usize).min(sw - 1);
        mask[[sy, sx]]
    })
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
