//! From what a caller asks for to what the pipeline runs, once, for the CLI, the library and the server alike:
//! an [`Intent`] (everything optional but the prompt) is resolved against a [`ModelProfile`] by [`resolve`],
//! which applies the model's defaults, prepares the input images at the run's size and validates everything,
//! returning a [`Plan`]: the complete [`Request`], its scheduler (built once) and notes for the user.
//! Errors name the [`Intent`] field at fault ([`Error::Invalid`]); the CLI maps fields to its flags.

use crate::error::{Error, Result};
use crate::images;
use crate::pipeline::conditioning::PromptEmbeds;
use crate::pipeline::limits;
use crate::profile::ModelProfile;
use crate::prompt::TextOptions;
use crate::rng::RngKind;
use crate::schedulers::{Scheduler, SchedulerKind, SigmaSpacing};
use image::DynamicImage;
use ndarray::{Array2, Array4};

/// The image (and mask) that img2img and inpainting start from, already at the request's size.
#[derive(Clone, Debug)]
pub struct Init {
    /// (1, 3, height, width), values in [-1, 1] (see [`images::prepare_image`]).
    pub image: Array4<f32>,
    /// (height, width), 1 = repaint, 0 = keep; `None` for img2img.
    pub mask: Option<Array2<f32>>,
    /// How much of the schedule to run: 1 = all of it (from pure noise for inpainting), 0 = none.
    pub strength: f64,
}

/// One generation request, with every default already resolved (see [`resolve`] to get one from an
/// [`Intent`]).
#[derive(Clone, Debug)]
pub struct Request {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (the unconditional half's text); `None`: the empty prompt (or zeros on SDXL).
    pub negative_prompt: Option<String>,
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f32,
    /// diffusers' `guidance_rescale` (0 = off): pull the guided prediction's spread back toward the text
    /// prediction's, for zero-terminal-SNR models ("Common Diffusion Noise Schedules are Flawed", 0.7 there).
    pub guidance_rescale: f32,
    /// The sampler.
    pub scheduler: SchedulerKind,
    /// The sigma schedule asked for (`use_karras_sigmas` and friends); `None`: the folder's config decides.
    pub schedule: Option<SigmaSpacing>,
    /// The seed of the first image (see [`Request::seeds`] for the others).
    pub seed: u64,
    /// How a batch is seeded.
    pub seeds: BatchSeeds,
    /// Which generator reproduces the seed.
    pub rng: RngKind,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Images per UNet call (A1111's batch size).
    pub batch: usize,
    /// Batches run one after the other (A1111's batch count); seeds continue from batch to batch.
    pub batch_count: usize,
    /// img2img / inpainting input; `None` for txt2img.
    pub init: Option<Init>,
    /// How the prompts are read: syntax, emphasis, clip skip.
    pub text: TextOptions,
    /// Embeddings to use instead of encoding `prompt` and `negative_prompt` (diffusers' `prompt_embeds` and
    /// friends); see [`crate::pipeline::Pipeline::encode_prompt`].
    pub prompt_embeds: Option<PromptEmbeds>,
}

/// What a caller asks for. Everything but the prompt may be left out and then comes from the model's
/// diffusers pipeline ([`crate::pipeline::Family::defaults`]) or the folder (scheduler, size).
#[derive(Clone, Debug, Default)]
pub struct Intent {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: Option<String>,
    /// Denoising steps (default 25; 4 for LCM).
    pub steps: Option<usize>,
    /// Guidance scale (default 7.5; 5 for SDXL, 8.5 for LCM).
    pub guidance: Option<f32>,
    /// diffusers' `guidance_rescale`, 0 to 1 (default 0: off).
    pub guidance_rescale: Option<f32>,
    /// The sampler (default: the class in the folder's scheduler_config.json).
    pub scheduler: Option<SchedulerKind>,
    /// The sigma schedule (default: the folder's config).
    pub schedule: Option<SigmaSpacing>,
    /// The seed; `None` picks a random one (A1111's -1), returned in the [`Request`].
    pub seed: Option<u64>,
    /// How a batch is seeded (default: image `i` gets seed + `i`, with its own generator).
    pub seeds: BatchSeeds,
    /// The generator (default: torch's CPU generator, as diffusers' PyTorch pipelines).
    pub rng: RngKind,
    /// Width in pixels (default: the input image's, else the UNet's sample size x VAE factor, else 512).
    pub width: Option<usize>,
    /// Height in pixels (as `width`).
    pub height: Option<usize>,
    /// Images per UNet call (default 1).
    pub batch: Option<usize>,
    /// Batches, one after the other (default 1).
    pub batch_count: Option<usize>,
    /// img2img / inpainting input.
    pub init: Option<InitIntent>,
    /// How the prompts are read (default: A1111's syntax, its "Original" emphasis, clip skip 1).
    pub text: TextOptions,
    /// Precomputed embeddings instead of the text encoders.
    pub prompt_embeds: Option<PromptEmbeds>,
}

/// How the images of a batch are seeded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchSeeds {
    /// Image `i` gets seed + `i` and its own generator, as A1111 and stable-diffusion.cpp seed batches and as
    /// diffusers does given `generator=[torch.Generator().manual_seed(seed + i) for i in ...]`: each image is
    /// the image a run of one with its seed gives, and says that seed.
    #[default]
    Consecutive,
    /// One generator seeded once for the whole batch (diffusers' `generator=torch.Generator().manual_seed(seed)`
    /// with `num_images_per_prompt`): every image says the same seed and is reproduced only by the same batch.
    Shared,
}

/// An input image as given: decoded, at any size (read files with [`images::read`]).
#[derive(Clone, Debug)]
pub struct InitIntent {
    /// The starting image.
    pub image: DynamicImage,
    /// What the caller calls it in messages (a path, `init_images[0]`).
    pub image_name: String,
    /// For inpainting: white = repaint, black = keep; with its name.
    pub mask: Option<(DynamicImage, String)>,
    /// Share of the schedule to run (default: the family's img2img or inpainting strength).
    pub strength: Option<f64>,
}

/// A validated request and what runs it: the scheduler built for it (once), and notes worth telling the user
/// (sizes rounded, masks resized).
pub struct Plan {
    /// The request, complete.
    pub request: Request,
    /// Its scheduler, configured for its steps (and strength, where it shapes the schedule).
    pub scheduler: Box<dyn Scheduler>,
    /// Things the user should know; not errors.
    pub notes: Vec<String>,
}

fn invalid(field: &'static str, msg: impl Into<String>) -> Error {
    Error::Invalid {
        field,
        msg: msg.into(),
    }
}

/// A random seed below 2^32 (what A1111 draws for -1).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() & 0xffff_ffff
}

/// Apply the model's defaults to `intent`, prepare its images at the run's size, and validate the result.
pub fn resolve(profile: &ModelProfile, intent: Intent) -> Result<Plan> {
    let family = profile.family();
    let defaults = family.defaults();
    let scheduler = match (intent.scheduler, profile.default_scheduler) {
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => {
            let why = match &profile.scheduler_class {
                None => {
                    "the folder has no scheduler/scheduler_config.json naming a scheduler class"
                        .to_string()
                }
                Some(c) => format!("the folder's scheduler class {c} is not one we port"),
            };
            return Err(invalid(
                "scheduler",
                format!("is needed: {why} ({})", SchedulerKind::names().join(", ")),
            ));
        }
    };
    let mut notes = Vec::new();
    let (width, height) = match &intent.init {
        Some(i) => init_size(profile, i, intent.width, intent.height, &mut notes)?,
        None => {
            let (dw, dh) = profile.default_size();
            (intent.width.unwrap_or(dw), intent.height.unwrap_or(dh))
        }
    };
    // Before the images are resized to it (which allocates); `Request::plan` checks the rest.
    check_size(profile, width, height)?;
    let init = match intent.init {
        None => None,
        Some(spec) => {
            if profile.vae_encoder.is_none() {
                return Err(Error::model(
                    &profile.dir,
                    "has no vae_encoder: img2img and inpainting need one (export the pipeline with its VAE encoder)",
                ));
            }
            let strength = spec.strength.unwrap_or(match spec.mask {
                None => defaults.img2img_strength,
                Some(_) => defaults.inpaint_strength,
            });
            let image = images::prepare_image(&spec.image, width, height);
            let mask = match &spec.mask {
                Some((m, name)) => {
                    let (mask, resized) = images::prepare_mask(m, width, height);
                    if resized {
                        notes.push(format!(
                            "{name}: resized to {width}x{height} to match the image"
                        ));
                    }
                    Some(mask)
                }
                None => None,
            };
            Some(Init {
                image,
                mask,
                strength,
            })
        }
    };
    let request = Request {
        prompt: intent.prompt,
        negative_prompt: intent.negative_prompt,
        steps: intent.steps.unwrap_or(defaults.steps),
        guidance: intent.guidance.unwrap_or(defaults.guidance),
        guidance_rescale: intent.guidance_rescale.unwrap_or(0.0),
        scheduler,
        schedule: intent.schedule,
        seed: intent.seed.unwrap_or_else(random_seed),
        seeds: intent.seeds,
        rng: intent.rng,
        width,
        height,
        batch: intent.batch.unwrap_or(1),
        batch_count: intent.batch_count.unwrap_or(1),
        init,
        text: intent.text,
        prompt_embeds: intent.prompt_embeds,
    };
    let mut plan = request.plan(profile)?;
    notes.append(&mut plan.notes);
    plan.notes = notes;
    Ok(plan)
}

/// diffusers rounds an input's size down to the VAE factor; the exported UNet needs its own multiple, so the
/// size is rounded to that (and said) rather than failing inside the graph.
fn init_size(
    profile: &ModelProfile,
    init: &InitIntent,
    width: Option<usize>,
    height: Option<usize>,
    notes: &mut Vec<String>,
) -> Result<(usize, usize)> {
    let dims = (init.image.width() as usize, init.image.height() as usize);
    let round = |factor: usize| {
        let (w, h) = (
            width.unwrap_or(dims.0 - dims.0 % factor),
            height.unwrap_or(dims.1 - dims.1 % factor),
        );
        if w == 0 || h == 0 {
            Err(invalid(
                "init_image",
                format!("{}: image smaller than {factor} pixels", init.image_name),
            ))
        } else {
            Ok((w, h))
        }
    };
    let by_vae = round(profile.vae_factor.value)?;
    let m = profile.size_multiple.value;
    let by_unet = round(m)?;
    if by_unet != by_vae && (width.is_none() || height.is_none()) {
        notes.push(format!(
            "{}: used at {}x{} (diffusers would take {}x{}, which this export cannot run: sizes must be \
             multiples of {m})",
            init.image_name, by_unet.0, by_unet.1, by_vae.0, by_vae.1
        ));
    }
    Ok(by_unet)
}

/// Clip skip counts layers back from the last: at least 1, and no further back than the encoder has layers
/// (SDXL already starts one back, at the penultimate). Without a config the graph is checked when it is edited.
fn check_clip_skip(profile: &ModelProfile, n: usize) -> Result<()> {
    if n == 0 {
        return Err(invalid(
            "clip_skip",
            "must be at least 1 (1 = the last layer, A1111's default)",
        ));
    }
    let layers = profile
        .text_encoder
        .config
        .as_ref()
        .and_then(|c| c["num_hidden_layers"].as_u64())
        .map(|l| l as usize);
    let back = if profile.xl.is_some() { n + 1 } else { n };
    match layers {
        Some(l) if back > l => Err(invalid(
            "clip_skip",
            format!(
                "{n} is more than this text encoder's {l} layers allow (at most {})",
                if profile.xl.is_some() {
                    l.saturating_sub(1)
                } else {
                    l
                }
            ),
        )),
        _ => Ok(()),
    }
}

fn check_size(profile: &ModelProfile, width: usize, height: usize) -> Result<()> {
    let m = &profile.size_multiple;
    for (field, v) in [("width", width), ("height", height)] {
        if v > limits::MAX_SIDE {
            return Err(invalid(
                field,
                format!(
                    "{v} is more than sd-onnx's limit of {} pixels",
                    limits::MAX_SIDE
                ),
            ));
        }
        if v == 0 || !v.is_multiple_of(m.value) {
            return Err(invalid(
                field,
                format!(
                    "{v} is not a positive multiple of {} ({})",
                    m.value, m.source
                ),
            ));
        }
    }
    if width * height > limits::MAX_PIXELS {
        return Err(invalid(
            "width",
            format!(
                "{width} x height {height} is {:.1} megapixels, more than sd-onnx's limit of {:.1} (4096x4096)",
                (width * height) as f64 / 1e6,
                limits::MAX_PIXELS as f64 / 1e6
            ),
        ));
    }
    Ok(())
}

impl Request {
    /// The prompt's `<lora:NAME:TE:UNET>` tags (A1111 syntax only; plain prompts are text as diffusers reads
    /// them). Checked by [`Request::plan`]; the files are loaded by the caller
    /// ([`crate::pipeline::Pipeline::set_loras`]).
    pub fn lora_tags(&self) -> Result<Vec<crate::prompt::networks::LoraTag>> {
        match self.text.syntax {
            crate::prompt::PromptSyntax::A1111 => {
                Ok(crate::prompt::networks::extra_networks(&self.prompt)?.1)
            }
            crate::prompt::PromptSyntax::Plain => Ok(Vec::new()),
        }
    }

    /// Validate the request against the model and build its scheduler (with `schedule` applied): the one
    /// place a request is checked. [`resolve`] ends here; [`crate::pipeline::Pipeline::generate`] calls it
    /// for requests built by hand.
    pub fn plan(self, profile: &ModelProfile) -> Result<Plan> {
        check_size(profile, self.width, self.height)?;
        self.lora_tags()?;
        if self.steps == 0 {
            return Err(invalid("steps", "must be at least 1"));
        }
        check_clip_skip(profile, self.text.clip_skip)?;
        if self.batch == 0 || self.batch > limits::MAX_BATCH {
            return Err(invalid(
                "batch",
                format!("{} is not between 1 and {}", self.batch, limits::MAX_BATCH),
            ));
        }
        if self.batch_count == 0 || self.batch_count > limits::MAX_BATCH_COUNT {
            return Err(invalid(
                "batch_count",
                format!(
                    "{} is not between 1 and {}",
                    self.batch_count,
                    limits::MAX_BATCH_COUNT
                ),
            ));
        }
        if self
            .seed
            .checked_add((self.batch * self.batch_count) as u64 - 1)
            .is_none()
        {
            return Err(invalid(
                "seed",
                format!(
                    "{} + {} images passes 2^64-1 (image i is seeded with seed + i)",
                    self.seed,
                    self.batch * self.batch_count
                ),
            ));
        }
        let f = profile.vae_factor.value;
        let latent_pixels = self.batch * (self.width / f) * (self.height / f);
        if latent_pixels > limits::MAX_LATENT_PIXELS {
            return Err(invalid(
                "batch",
                format!(
                    "{} at {}x{} is {latent_pixels} latent pixels, more than sd-onnx's limit of {} (64 images of \
                     1024x1024): make fewer or smaller images per run",
                    self.batch,
                    self.width,
                    self.height,
                    limits::MAX_LATENT_PIXELS
                ),
            ));
        }
        // diffusers refuses more inference steps than training timesteps (set_timesteps' ValueError).
        let trained = profile
            .scheduler_config
            .usize("num_train_timesteps", 1000)?;
        if self.steps > trained {
            return Err(invalid(
                "steps",
                format!(
                    "{} is more than the scheduler's {trained} training timesteps (num_train_timesteps in \
                     scheduler_config.json)",
                    self.steps
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            return Err(invalid(
                "guidance_rescale",
                format!("{} is outside [0, 1]", self.guidance_rescale),
            ));
        }
        if !self.guidance.is_finite() {
            return Err(invalid(
                "guidance",
                format!("{} is not a finite number", self.guidance),
            ));
        }
        if let Some(init) = &self.init {
            self.check_init(profile, init)?;
        }
        let (unet_in, latent) = (
            profile.unet_in_channels.value,
            profile.latent_channels.value,
        );
        let has_mask = self.init.as_ref().is_some_and(|i| i.mask.is_some());
        if profile.inpainting_unet() && !has_mask {
            return Err(Error::Usage(format!(
                "{}: this UNet takes {unet_in} input channels (an inpainting model): use `sd-onnx inpaint`",
                profile.dir.display()
            )));
        }
        if unet_in != latent && !profile.inpainting_unet() {
            return Err(Error::model(
                &profile.unet.graph,
                format!(
                    "UNet takes {unet_in} input channels; expected {latent} or {}",
                    2 * latent + 1
                ),
            ));
        }
        let scheduler = self.build_scheduler(profile)?;
        Ok(Plan {
            request: self,
            scheduler,
            notes: Vec::new(),
        })
    }

    fn check_init(&self, profile: &ModelProfile, init: &Init) -> Result<()> {
        if !(0.0..=1.0).contains(&init.strength) || init.strength.is_nan() {
            return Err(invalid(
                "strength",
                format!("{} is outside [0, 1]", init.strength),
            ));
        }
        if init.image.shape() != [1, 3, self.height, self.width] {
            return Err(invalid(
                "init_image",
                format!(
                    "tensor {:?} does not match {}x{}",
                    init.image.shape(),
                    self.width,
                    self.height
                ),
            ));
        }
        match &init.mask {
            None => {}
            Some(m) => {
                if m.shape() != [self.height, self.width] {
                    return Err(invalid(
                        "mask",
                        format!(
                            "{:?} does not match {}x{}",
                            m.shape(),
                            self.width,
                            self.height
                        ),
                    ));
                }
                if !self.strength_in_schedule(profile) && self.start_index(1) >= self.steps {
                    return Err(invalid(
                        "strength",
                        format!(
                            "{} leaves no denoising step out of {} (diffusers refuses this too)",
                            init.strength, self.steps
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The scheduler for this request (with `schedule` and, where it shapes the schedule, the strength
    /// applied); [`Request::plan`] builds the first, each further batch gets a fresh one.
    pub fn build_scheduler(&self, profile: &ModelProfile) -> Result<Box<dyn Scheduler>> {
        let mut config = profile.scheduler_config.clone();
        if let Some(schedule) = self.schedule {
            let can = self.scheduler.schedules();
            if !can.contains(&schedule) {
                let offer = if can.is_empty() {
                    format!("{} has no sigma schedule", self.scheduler.class_name())
                } else {
                    let names: Vec<&str> = can.iter().map(|s| s.name()).collect();
                    format!("it has {}", names.join(", "))
                };
                let with: Vec<&str> = SchedulerKind::all()
                    .filter(|(k, _, _)| k.schedules().contains(&schedule))
                    .map(|(_, n, _)| n)
                    .collect();
                return Err(invalid(
                    "schedule",
                    format!(
                        "{} does not apply to {} ({offer}); schedulers with it: {}",
                        schedule.name(),
                        self.scheduler.name(),
                        with.join(", ")
                    ),
                ));
            }
            schedule.apply(&mut config);
        }
        Ok(match &self.init {
            Some(init) if self.strength_in_schedule(profile) => self
                .scheduler
                .build_with_strength(&config, self.steps, init.strength)?,
            _ => self.scheduler.build(&config, self.steps)?,
        })
    }

    /// The sigma schedule the run uses: the one asked for, else the folder config's; `None` for schedulers
    /// without one (PNDM, DDIM, DDPM, LCM).
    pub fn effective_schedule(&self, profile: &ModelProfile) -> Option<SigmaSpacing> {
        if self.scheduler.schedules().is_empty() {
            return None;
        }
        self.schedule
            .or_else(|| SigmaSpacing::from_config(&profile.scheduler_config).ok())
    }

    /// The seed of each image of batch `index` (0-based, of [`Request::batch_count`]): consecutive across
    /// batches (A1111's `seed + i` over the whole run), or with [`BatchSeeds::Shared`] the batch's one seed
    /// (that of its first image) for all.
    pub fn seeds(&self, index: usize) -> Vec<u64> {
        let first = index * self.batch;
        (0..self.batch)
            .map(|i| match self.seeds {
                BatchSeeds::Consecutive => self.seed.wrapping_add((first + i) as u64),
                BatchSeeds::Shared => self.seed.wrapping_add(first as u64),
            })
            .collect()
    }

    /// The generator of batch `index`: one per image (seeds from [`Request::seeds`]), or one for all.
    pub fn noise(&self, index: usize) -> Box<dyn crate::rng::NoiseSource> {
        match self.seeds {
            BatchSeeds::Consecutive => {
                Box::new(crate::rng::PerImage::new(self.rng, &self.seeds(index)))
            }
            BatchSeeds::Shared => self
                .rng
                .build(self.seed.wrapping_add((index * self.batch) as u64)),
        }
    }

    /// Whether the strength shapes the schedule instead of skipping its start (see
    /// [`crate::pipeline::Family::strength_in_schedule`]).
    pub fn strength_in_schedule(&self, profile: &ModelProfile) -> bool {
        let img2img = self.init.as_ref().is_some_and(|i| i.mask.is_none());
        profile
            .family()
            .strength_in_schedule(self.scheduler, img2img)
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn profile(dir: &str) -> ModelProfile {
        ModelProfile::load(Path::new(dir)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(r: Result<Plan>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn defaults_come_from_the_model_and_the_folder() {
        let p = profile("onnx/sd-tiny-optimum");
        let plan = resolve(
            &p,
            Intent {
                prompt: "a cat".into(),
                seed: Some(3),
                ..Intent::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = &plan.request;
        assert_eq!(
            (r.steps, r.guidance, r.width, r.height, r.batch),
            (25, 7.5, 64, 64, 1)
        );
        assert_eq!(
            (r.scheduler, r.seed, r.rng),
            (SchedulerKind::Pndm, 3, RngKind::Torch)
        );
        // PNDM (PLMS) repeats one timestep: 26 entries for 25 steps.
        assert_eq!(plan.scheduler.timesteps().len(), 26);
        let lcm = resolve(&profile("onnx/sd-tiny-lcm-optimum"), Intent::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((lcm.request.steps, lcm.request.guidance), (4, 8.5));
    }

    #[test]
    fn errors_name_the_field() {
        let p = profile("onnx/sd-tiny-optimum");
        let with = |f: &dyn Fn(&mut Intent)| {
            let mut i = Intent::default();
            f(&mut i);
            err(resolve(&p, i))
        };
        assert!(
            with(&|i| i.width = Some(72)).starts_with("width 72 is not a positive multiple of 16")
        );
        assert!(with(&|i| i.height = Some(0)).starts_with("height 0"));
        assert_eq!(with(&|i| i.steps = Some(0)), "steps must be at least 1");
        assert_eq!(
            with(&|i| i.batch = Some(0)),
            "batch 0 is not between 1 and 64"
        );
        assert!(with(&|i| i.guidance_rescale = Some(1.5)).starts_with("guidance_rescale 1.5"));
        assert!(with(&|i| i.guidance_rescale = Some(f32::NAN)).starts_with("guidance_rescale NaN"));
        assert_eq!(
            with(&|i| i.guidance = Some(f32::NAN)),
            "guidance NaN is not a finite number"
        );
        assert_eq!(
            with(&|i| i.guidance = Some(f32::INFINITY)),
            "guidance inf is not a finite number"
        );
        // Bounds that keep allocations sane, each naming its field and the limit.
        assert!(
            with(&|i| i.steps = Some(1_000_000_000))
                .starts_with("steps 1000000000 is more than the scheduler's 1000")
        );
        assert_eq!(
            with(&|i| i.batch = Some(1_000_000_000)),
            "batch 1000000000 is not between 1 and 64"
        );
        assert!(
            with(&|i| i.width = Some(100_000))
                .starts_with("width 100000 is more than sd-onnx's limit of 8192")
        );
        let e = with(&|i| (i.width, i.height) = (Some(8192), Some(8192)));
        assert!(
            e.starts_with("width 8192 x height 8192 is 67.1 megapixels"),
            "{e}"
        );
        let e = with(&|i| (i.width, i.height, i.batch) = (Some(2048), Some(2048), Some(64)));
        assert!(e.starts_with("batch 64 at 2048x2048"), "{e}");
        let image = DynamicImage::new_rgb8(64, 64);
        let e = with(&|i| {
            i.init = Some(InitIntent {
                image: image.clone(),
                image_name: "in.png".into(),
                mask: None,
                strength: Some(1.5),
            })
        });
        assert_eq!(e, "strength 1.5 is outside [0, 1]");
        // The 9-channel UNet needs a mask.
        let inpaint = profile("onnx/sd-tiny-inpaint-optimum");
        let e = err(resolve(
            &inpaint,
            Intent {
                init: Some(InitIntent {
                    image,
                    image_name: "in.png".into(),
                    mask: None,
                    strength: None,
                }),
                ..Intent::default()
            },
        ));
        assert!(e.contains("an inpainting model"), "{e}");
    }

    #[test]
    fn input_sizes_round_to_what_the_unet_runs_with_a_note() {
        let p = profile("onnx/sd-tiny-optimum");
        let plan = resolve(
            &p,
            Intent {
                init: Some(InitIntent {
                    image: DynamicImage::new_rgb8(100, 72),
                    image_name: "in.png".into(),
                    mask: Some((DynamicImage::new_rgb8(50, 36), "mask.png".into())),
                    strength: None,
                }),
                ..Intent::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((plan.request.width, plan.request.height), (96, 64));
        assert_eq!(plan.request.init.as_ref().map(|i| i.strength), Some(1.0));
        assert_eq!(plan.notes.len(), 2, "{:?}", plan.notes);
        assert!(
            plan.notes[0].contains("diffusers would take 96x72"),
            "{:?}",
            plan.notes
        );
        assert!(
            plan.notes[1].starts_with("mask.png: resized"),
            "{:?}",
            plan.notes
        );
    }
}
