//! Generation as diffusers' Stable Diffusion pipelines do it, in five stages, one module each:
//!
//! 0. [`request`]: an [`Intent`] resolved against the model into a validated [`Request`] and its scheduler
//!    (a [`Plan`]);
//! 1. [`conditioning`]: prompt to UNet conditioning (cond + uncond for classifier-free guidance, or LCM's
//!    guidance embedding; SDXL's two encoders, pooled embeddings and time ids);
//! 2. `latents`: the starting latents, drawn from the run's generator in diffusers' order (txt2img noise,
//!    img2img's noised input, inpainting's mask and masked-image latents);
//! 3. `denoise`: the scheduler loop from the strength's start index;
//! 4. `decode`: latents to 8-bit RGB with diffusers' rounding.
//!
//! What differs between SD, SDXL and guidance-distilled models is decided in [`family`]; when sessions are
//! created and dropped, in `sessions` ([`MemoryMode`]). Generator draws happen in diffusers' order, so a seed gives
//! diffusers' image (txt2img, img2img and inpainting pipelines of SD 1.x/2.x, SDXL base and LCM).
//!
//! No file I/O and no printing here: progress, notes and warnings go back to the caller.

pub mod conditioning;
mod decode;
mod denoise;
pub mod family;
mod latents;
pub mod limits;
pub mod request;
mod sessions;

pub use conditioning::{PromptEmbeds, guidance_scale_embedding};
pub use decode::RgbImage;
pub use family::{Family, Guidance, RunDefaults, TextConditioning};
pub use request::{BatchSeeds, Init, InitIntent, Intent, Plan, Request, random_seed, resolve};
pub use sessions::MemoryMode;

use crate::error::Result;
use crate::graphs::EncoderOutput;
use crate::profile::ModelProfile;
pub use crate::prompt::TextOptions;
use crate::runtime::{GraphCapture, Runtime};
use crate::schedulers::Latents;
use crate::tokenizer::ClipTokenizer;
use conditioning::Tokenizers;
use sessions::{Done, Sessions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a generation returns.
pub struct Generated {
    /// The images, in batch order.
    pub images: Vec<RgbImage>,
    /// Each image's seed ([`Request::seeds`]): seed + `i` with [`BatchSeeds::Consecutive`], each image
    /// reproduced alone by its seed; the batch's seed for all with [`BatchSeeds::Shared`].
    pub seeds: Vec<u64>,
    /// Each image's position in its batch (A1111's "Batch pos").
    pub batch_pos: Vec<usize>,
    /// The final latents of every image, before the VAE (for parity checks).
    pub latents: Latents,
    /// Things that went differently than asked (prompt truncated, fallbacks), one sentence each.
    pub warnings: Vec<String>,
    /// Where the time went.
    pub timings: Timings,
}

/// Where a run's time went (measured with `Instant`; for `bench` and the PERFORMANCE figures).
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Tokenizing and running the text encoder (cond + uncond); session creation not included.
    pub text: Duration,
    /// Creating the sessions this run needed and did not have (a one-shot run creates each when first needed):
    /// none of the other phases includes it.
    pub sessions: Duration,
    /// Each UNet `Session::run`, input conversion included.
    pub unet: Vec<Duration>,
    /// Of each bound UNet call, the host work around `Session::run`: latents and timestep into the bound
    /// inputs, the output back (host<->device copies on GPUs). Included in `unet`.
    pub unet_host_io: Vec<Duration>,
    /// Each step's `scale_model_input` + `step`.
    pub scheduler: Vec<Duration>,
    /// Each step's other host work: CFG batch concat and guidance arithmetic.
    pub guidance: Vec<Duration>,
    /// VAE decode of all images, RGB conversion included; session creation not included.
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
    /// The prompt is being encoded.
    Encoding,
    /// A batch starts (every request has at least one).
    Batch {
        /// 0-based.
        index: usize,
        /// Batches in the request.
        count: usize,
    },
    /// A denoising step finished.
    Step {
        /// Steps done in this run.
        done: usize,
        /// Steps this run makes.
        total: usize,
    },
    /// The VAE is decoding.
    Decoding,
}

/// diffusers' `num_inference_steps` for the part of the schedule a run makes: the steps asked for, or for
/// img2img/inpainting `int(steps * strength)`; where the strength shapes the schedule (LCM img2img), every call.
fn run_steps(req: &Request, profile: &ModelProfile, calls: usize) -> usize {
    let steps = match &req.init {
        _ if req.strength_in_schedule(profile) => calls,
        None => req.steps,
        Some(init) => ((req.steps as f64 * init.strength) as usize).min(req.steps),
    };
    steps.clamp(1, calls.max(1))
}

/// One model, ready to generate. Owns its sessions (and a handle on the process's ONNX Runtime), so it can
/// live in a server's state; one generation at a time (`&mut self`).
pub struct Pipeline {
    /// The model's facts.
    pub profile: ModelProfile,
    family: Family,
    tokenizers: Tokenizers,
    sessions: Sessions,
    interrupt: Arc<AtomicBool>,
    /// The embeddings set: name, file, and the ids their vectors have in the first tokenizer's chunks.
    embeddings: Vec<(String, std::path::PathBuf, std::ops::Range<i64>)>,
    /// The LoRA set merged into the graphs.
    loras: Vec<crate::lora::Active>,
    /// Where LoRA modules can land in each graph (read once, when a LoRA is first set).
    lora_sites: Option<Vec<(crate::lora::Target, Arc<crate::lora::graph::Sites>)>>,
}

impl Pipeline {
    /// Load every graph now and keep it.
    pub fn load(runtime: &Runtime, profile: ModelProfile) -> Result<Self> {
        Self::with_memory(runtime, profile, MemoryMode::KeepAll)
    }

    /// With [`MemoryMode::KeepAll`] every graph is opened now; otherwise each is opened when first needed, in
    /// the order of use (text encoder, UNet, VAE), so a one-shot run never holds them all at once.
    pub fn with_memory(
        runtime: &Runtime,
        profile: ModelProfile,
        memory: MemoryMode,
    ) -> Result<Self> {
        let mut sessions = Sessions::new(runtime.clone(), memory);
        if memory == MemoryMode::KeepAll {
            sessions.open_all(&profile)?;
        } else {
            // Opened only after the loop: a broken file is found now, not after the last step.
            crate::graphs::precheck(&profile.vae_decoder)?;
        }
        Ok(Pipeline {
            family: profile.family(),
            tokenizers: Tokenizers::load(&profile)?,
            sessions,
            profile,
            interrupt: Arc::new(AtomicBool::new(false)),
            embeddings: Vec::new(),
            loras: Vec::new(),
            lora_sites: None,
        })
    }

    /// [`Pipeline::with_memory`] with a LoRA set merged from the start ([`Pipeline::set_loras`]): the graphs are
    /// opened once, with the merged weights. Returns the set's warnings too.
    pub fn with_loras(
        runtime: &Runtime,
        profile: ModelProfile,
        memory: MemoryMode,
        loras: &[crate::lora::Active],
    ) -> Result<(Self, Vec<String>)> {
        let lazy = if memory == MemoryMode::KeepAll {
            MemoryMode::OneShot
        } else {
            memory
        };
        let mut p = Self::with_memory(runtime, profile, lazy)?;
        let warnings = p.set_loras(loras)?;
        if memory == MemoryMode::KeepAll {
            p.sessions.set_memory(MemoryMode::KeepAll);
            p.sessions.open_all(&p.profile)?;
        }
        Ok((p, warnings))
    }

    /// The (first) tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizers.first
    }

    /// 9 for an inpainting UNet, else the latent channel count.
    pub fn unet_in_channels(&self) -> usize {
        self.profile.unet_in_channels.value
    }

    /// What the VAE encoder returns (known once it has been loaded).
    pub fn encoder_output(&self) -> Option<EncoderOutput> {
        self.sessions.encoder_output()
    }

    /// A flag that stops the running generation after its current step with [`crate::Error::Interrupted`]
    /// (A1111's interrupt); set it from any thread. Each generation clears it when it starts.
    pub fn interrupter(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    /// Use these textual-inversion embeddings from now on (replacing any set before; an empty list removes
    /// them): each one's name and aliases trigger it in prompts. The text encoders are reopened with the vectors
    /// appended to their token tables. Embeddings must have one set of vectors per text encoder, of its width
    /// ([`crate::embeddings::load_dir`] checks that when reading a folder; here the width is checked against the
    /// encoder's config, and without one when the graph is edited).
    pub fn set_embeddings(&mut self, embeddings: &[crate::embeddings::Embedding]) -> Result<()> {
        let encoders = 1 + usize::from(self.profile.xl.is_some());
        let refuse = |emb: &crate::embeddings::Embedding, msg: String| crate::Error::Invalid {
            field: "embeddings",
            msg: format!("{}: {msg}", emb.file.display()),
        };
        let tokenizers = [
            Some(&self.tokenizers.first),
            self.tokenizers.second.as_ref(),
        ];
        let mut rows: [Option<(Arc<ndarray::Array2<f32>>, i64)>; 2] = [None, None];
        let mut triggers: [crate::prompt::Triggers; 2] = Default::default();
        let mut ranges = Vec::new();
        for e in 0..encoders {
            let Some(tok) = tokenizers[e] else { continue };
            // The appended rows' ids start at the table's size (vocab_size, else what the tokenizer produces).
            let first = self
                .profile
                .text_encoder_config(e)
                .and_then(|c| c["vocab_size"].as_i64())
                .unwrap_or(tok.max_id() + 1);
            let mut words: Vec<(String, Vec<i64>)> = Vec::new();
            let mut vectors: Vec<ndarray::ArrayView2<f32>> = Vec::new();
            let width = self
                .profile
                .text_encoder_config(e)
                .and_then(|c| c["hidden_size"].as_u64());
            let mut next = first;
            for emb in embeddings {
                let v = emb.vectors.get(e).filter(|_| emb.vectors.len() == encoders);
                let v = v.ok_or_else(|| {
                    refuse(
                        emb,
                        format!(
                            "has {} set(s) of vectors; this model has {encoders} text encoder(s)",
                            emb.vectors.len()
                        ),
                    )
                })?;
                if v.nrows() == 0 || v.nrows() > crate::embeddings::MAX_VECTORS {
                    return Err(refuse(
                        emb,
                        format!(
                            "has {} vectors; an embedding has 1 to {} (one chunk)",
                            v.nrows(),
                            crate::embeddings::MAX_VECTORS
                        ),
                    ));
                }
                if let Some(w) = width.filter(|&w| w != v.ncols() as u64) {
                    return Err(refuse(
                        emb,
                        format!(
                            "its vectors are {} wide; this model's text encoder is {w} wide",
                            v.ncols()
                        ),
                    ));
                }
                let ids: Vec<i64> = (next..next + v.nrows() as i64).collect();
                if e == 0 {
                    ranges.push(next..next + v.nrows() as i64);
                }
                next += v.nrows() as i64;
                for word in std::iter::once(&emb.name).chain(&emb.aliases) {
                    words.push((word.clone(), ids.clone()));
                }
                vectors.push(v.view());
            }
            if !vectors.is_empty() {
                let joined = ndarray::concatenate(ndarray::Axis(0), &vectors)
                    .map_err(|e| crate::Error::Usage(format!("embeddings: {e}")))?;
                rows[e] = Some((Arc::new(joined), first));
            }
            triggers[e] = crate::prompt::Triggers::new(tok, &words)?;
        }
        self.tokenizers.triggers = triggers;
        self.sessions.set_token_rows(rows);
        self.embeddings = embeddings
            .iter()
            .zip(ranges)
            .map(|(e, r)| (e.name.clone(), e.file.clone(), r))
            .collect();
        Ok(())
    }

    /// Merge these LoRAs (with their text-encoder and UNet multipliers) into the graphs from now on, replacing
    /// the set before; an empty list goes back to the exported weights. Each file is matched against the
    /// model's graphs first: one for another base model, one that matches nothing and a fused export are
    /// refused (nothing changes then). Returns warnings (modules that match nothing). Sessions whose weights
    /// change are reopened when next needed, from the graph cache when this set was merged before.
    pub fn set_loras(&mut self, active: &[crate::lora::Active]) -> Result<Vec<String>> {
        use crate::lora::{Target, graph};
        if active.is_empty() {
            self.sessions.set_loras([None, None, None]);
            self.loras.clear();
            return Ok(Vec::new());
        }
        let sites = match &self.lora_sites {
            Some(s) => s.clone(),
            None => {
                let s = graph::model_sites(&self.profile)?;
                self.lora_sites = Some(s.clone());
                s
            }
        };
        let refs: Vec<(Target, &graph::Sites)> = sites.iter().map(|(t, s)| (*t, &**s)).collect();
        let (plans, warnings, _) = graph::plan(active, &refs, &self.profile.dir)?;
        let mut computed: [Option<crate::runtime::Computed>; 3] = [None, None, None];
        for plan in plans {
            let (i, c) = match plan.target {
                Target::TextEncoder => (0, &self.profile.text_encoder),
                Target::TextEncoder2 => match &self.profile.xl {
                    Some(xl) => (1, &xl.text_encoder_2),
                    None => continue,
                },
                Target::Unet => (2, &self.profile.unet),
            };
            let graph_path = c.graph.clone();
            let plan = Arc::new(plan);
            computed[i] = Some(crate::runtime::Computed {
                identity: plan.identity.clone(),
                sources: plan.sources.clone(),
                values: {
                    let plan = plan.clone();
                    Arc::new(move || graph::merged(&plan, &graph_path))
                },
            });
        }
        self.sessions.set_loras(computed);
        self.loras = active.to_vec();
        Ok(warnings)
    }

    /// The LoRA set merged into the graphs ([`Pipeline::set_loras`]).
    pub fn loras(&self) -> &[crate::lora::Active] {
        &self.loras
    }

    /// Every `<lora:…>` tag of `req` must be in the set merged, with its multipliers: a request never runs
    /// without a LoRA it names.
    fn check_lora_tags(&self, req: &Request) -> Result<()> {
        for tag in req.lora_tags()? {
            let loaded = self
                .loras
                .iter()
                .any(|a| a.file.name == tag.name && a.te == tag.te && a.unet == tag.unet);
            if !loaded {
                return Err(crate::Error::Invalid {
                    field: "prompt",
                    msg: format!(
                        "<lora:{}:{}:{}> is not loaded (Pipeline::set_loras; the CLI finds it with --lora-dir)",
                        tag.name, tag.te, tag.unet
                    ),
                });
            }
        }
        Ok(())
    }

    /// The embeddings (name, file) that `req`'s prompt or negative prompt triggers, in the order they were set.
    pub fn used_embeddings(&self, req: &Request) -> Result<Vec<(String, std::path::PathBuf)>> {
        if self.embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let tok = &self.tokenizers.first;
        let triggers = &self.tokenizers.triggers[0];
        let mut ids: Vec<i64> = Vec::new();
        for text in std::iter::once(req.prompt.as_str()).chain(req.negative_prompt.as_deref()) {
            match req.text.syntax {
                crate::prompt::PromptSyntax::A1111 => {
                    for c in crate::prompt::chunks(tok, text, triggers)? {
                        ids.extend(c.ids);
                    }
                }
                crate::prompt::PromptSyntax::Plain => {
                    ids.extend(crate::prompt::plain_chunk(tok, text, triggers)?.0.ids)
                }
            }
        }
        Ok(self
            .embeddings
            .iter()
            .filter(|(_, _, range)| ids.iter().any(|i| range.contains(i)))
            .map(|(name, file, _)| (name.clone(), file.clone()))
            .collect())
    }

    /// diffusers' `encode_prompt`: the embeddings a run at this guidance scale would use, read as `text` says
    /// (syntax, emphasis, clip skip), to inspect, change or pass back as [`Request::prompt_embeds`]. Warnings
    /// (a truncated plain prompt) are appended to `warnings`.
    pub fn encode_prompt(
        &mut self,
        prompt: &str,
        negative_prompt: Option<&str>,
        guidance: f32,
        text: &TextOptions,
        warnings: &mut Vec<String>,
    ) -> Result<PromptEmbeds> {
        let guided = self.family.guided(guidance);
        conditioning::encode_prompt(
            &mut self.sessions,
            &self.profile,
            &self.tokenizers,
            conditioning::Texts {
                prompt,
                negative: negative_prompt,
                guided,
                opts: text,
            },
            warnings,
        )
    }

    /// Validate `req` against the model and run it (see [`Pipeline::run`]).
    pub fn generate(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        let plan = req.clone().plan(&self.profile)?;
        self.run(plan, progress)
    }

    /// Run a resolved plan: condition, prepare latents, denoise, decode. `progress` hears of every step.
    pub fn run(&mut self, plan: Plan, progress: &mut dyn FnMut(Progress)) -> Result<Generated> {
        let Plan {
            request: req,
            scheduler,
            ..
        } = plan;
        self.check_lora_tags(&req)?;
        self.interrupt.store(false, Ordering::Relaxed);
        let family = self.family;
        let mut warnings = Vec::new();
        let mut timings = Timings::default();
        if req.negative_prompt.is_some() && !family.uses_negative_prompt() {
            warnings.push(
                "the negative prompt is not used: this UNet is guidance-distilled (LCM); the guidance scale \
                 enters as an embedding, with no unconditional pass (as in diffusers)"
                    .into(),
            );
        }

        self.check_memory(&req)?;

        // 1. Conditioning, once for every batch.
        progress(Progress::Encoding);
        let started = Instant::now();
        let created_before = self.sessions.created();
        let guided = family.guided(req.guidance);
        let encoded;
        let embeds = match &req.prompt_embeds {
            Some(e) => e,
            None => {
                encoded = conditioning::encode_prompt(
                    &mut self.sessions,
                    &self.profile,
                    &self.tokenizers,
                    conditioning::Texts {
                        prompt: &req.prompt,
                        negative: req.negative_prompt.as_deref(),
                        guided,
                        opts: &req.text,
                    },
                    &mut warnings,
                )?;
                &encoded
            }
        };
        let cond = conditioning::condition(
            family,
            embeds,
            req.batch,
            req.width,
            req.height,
            req.guidance,
        )?;
        timings.text = started
            .elapsed()
            .saturating_sub(self.sessions.created() - created_before);
        self.sessions.done(Done::Text);

        // 2.-4. Each batch: starting latents, denoising, decoding.
        let mut first = Some(scheduler);
        let (mut images, mut seeds, mut batch_pos, mut all_latents) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for index in 0..req.batch_count {
            progress(Progress::Batch {
                index,
                count: req.batch_count,
            });
            let scheduler = match first.take() {
                Some(s) => s,
                None => req.build_scheduler(&self.profile)?,
            };
            let (imgs, latents) = self.run_batch(
                &req,
                index,
                scheduler,
                &cond,
                &mut timings,
                &mut warnings,
                progress,
            )?;
            images.extend(imgs);
            seeds.extend(req.seeds(index));
            batch_pos.extend(0..req.batch);
            all_latents.push(latents);
        }
        let views: Vec<_> = all_latents.iter().map(|l| l.view()).collect();
        let latents = ndarray::concatenate(ndarray::Axis(0), &views)
            .map_err(|e| crate::Error::Usage(format!("latents of the batches: {e}")))?;
        timings.sessions = self.sessions.created() - created_before;
        Ok(Generated {
            images,
            seeds,
            batch_pos,
            latents,
            warnings,
            timings,
        })
    }

    /// Refuse, before anything is allocated, a CPU run whose UNet attention would not fit in the memory
    /// available (ONNX Runtime would otherwise allocate until the process is killed).
    fn check_memory(&self, req: &Request) -> Result<()> {
        let config = &self.sessions.runtime().config;
        // With the attention rewrite the scores are computed in tiles: memory no longer grows with their square.
        if !config.memory_check
            || config.fuse_attention
            || config.choice_for("unet").provider != crate::runtime::Provider::Cpu
        {
            return Ok(());
        }
        let f = self.profile.vae_factor.value;
        let unet_batch = self.family.unet_batch(req.batch, req.guidance);
        let (Some(cfg), Some(available)) = (
            &self.profile.unet.config,
            crate::runtime::available_memory(),
        ) else {
            return Ok(());
        };
        let Some(need) = limits::attention_bytes(cfg, req.width / f, req.height / f, unet_batch)
        else {
            return Ok(());
        };
        if need > available {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(crate::Error::Invalid {
                field: "width",
                msg: format!(
                    "{} at {}x{} with {unet_batch} image(s) per UNet call: its attention needs about {:.1} GiB, \
                     more than the {:.1} GiB this machine has available; make smaller or fewer images (or set \
                     SD_ONNX_NO_MEMORY_CHECK=1 to try anyway)",
                    req.width,
                    req.width,
                    req.height,
                    gib(need),
                    gib(available)
                ),
            });
        }
        Ok(())
    }

    /// One batch of a request: its generator, starting latents, the denoising loop and the decode.
    #[allow(clippy::too_many_arguments)]
    fn run_batch(
        &mut self,
        req: &Request,
        index: usize,
        mut scheduler: Box<dyn crate::schedulers::Scheduler>,
        cond: &conditioning::Conditioning,
        timings: &mut Timings,
        warnings: &mut Vec<String>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Vec<RgbImage>, Latents)> {
        let profile = &self.profile;
        let guided = self.family.guided(req.guidance);
        let mut noise = req.noise(index);
        let start = latents::prepare(
            &mut self.sessions,
            profile,
            req,
            scheduler.as_ref(),
            noise.as_mut(),
        )?;
        let last = index + 1 == req.batch_count;
        self.sessions.done_batch(Done::Encoding, last);
        let latents = if start.begin < scheduler.timesteps().len() {
            let steps = run_steps(req, profile, scheduler.timesteps().len() - start.begin);
            let unet = self.sessions.unet(profile)?;
            let lp = denoise::Loop {
                scheduler: scheduler.as_mut(),
                noise: noise.as_mut(),
                cond,
                guided,
                guidance: req.guidance,
                guidance_rescale: req.guidance_rescale,
                batch: req.batch,
                steps,
                interrupt: &self.interrupt,
            };
            denoise::denoise(unet, start, lp, timings, warnings, progress)?
        } else {
            start.latents
        };
        self.sessions.done_batch(Done::Denoising, last);
        progress(Progress::Decoding);
        let decode_start = Instant::now();
        let created = self.sessions.created();
        let images = decode::decode(&mut self.sessions, profile, &latents, warnings)?;
        timings.decode += decode_start
            .elapsed()
            .saturating_sub(self.sessions.created() - created);
        self.sessions.done_batch(Done::Decoding, last);
        Ok((images, latents))
    }
}
