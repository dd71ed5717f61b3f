//! The command line: argument definitions and what each subcommand does with the library. Printing and
//! file writing happen here, never in the pipeline.

use crate::error::{Error, Result};
use crate::graphs::{Graph, Port};
use crate::output::{OutputFormat, a1111_parameters, write_image};
use crate::pipeline::{Init, MemoryMode, Pipeline, Progress, Request};
use crate::profile::ModelProfile;
use crate::rng::RngKind;
use crate::runtime::{
    Provider, ProviderChoice, Runtime, RuntimeConfig, ShapeProfile, default_cache_dir,
};
use crate::schedulers::SchedulerKind;
use crate::tokenizer::ClipTokenizer;
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "sd-onnx",
    version,
    about = "Stable Diffusion from exported ONNX graphs, through ONNX Runtime"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate images from a text prompt.
    Txt2img(Txt2ImgArgs),
    /// Re-imagine an image: noise it to `--strength` of the schedule, then denoise towards the prompt.
    Img2img(Img2ImgArgs),
    /// Repaint the white part of `--mask` (9-channel inpainting UNets, or any UNet by latent blending).
    Inpaint(InpaintArgs),
    /// Show what a model folder holds and what will not work.
    Inspect(InspectArgs),
    /// Print the 77 token ids the text encoder will receive.
    Tokenize(TokenizeArgs),
    /// List the schedulers and their diffusers classes.
    Schedulers,
    /// Time session creation, text encoding, UNet and scheduler per step, VAE decode, end to end, peak RSS.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// Timed runs after one warm-up run.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f32,
    /// Scheduler for the timed runs (default: the folder's).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Generator for the runs and the scheduler micro-benchmark (ancestral samplers draw every step).
    #[arg(long, default_value = "torch")]
    pub rng: String,
    #[arg(long)]
    pub json: bool,
    /// Measure with --low-memory's policy (sessions created per phase and dropped).
    #[arg(long)]
    pub low_memory: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// ONNX Runtime shared library (else ORT_DYLIB_PATH, else one next to the executable).
    #[arg(long, value_name = "PATH", global = true)]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider: cpu, cuda, tensorrt, directml, coreml.
    #[arg(long, default_value = "cpu")]
    pub ep: String,
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// Provider option passed as-is, e.g. `--ep-option cudnn_conv_algo_search=HEURISTIC` (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub ep_option: Vec<String>,
    /// Provider for one component, e.g. `--component-ep vae_decoder=cpu` (repeatable).
    #[arg(long, value_name = "COMPONENT=EP")]
    pub component_ep: Vec<String>,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    pub trt_fp16: bool,
    /// CUDA/TensorRT: capture the UNet's run as a CUDA graph once and replay it every step (fixed shapes;
    /// falls back, with the reason, when ONNX Runtime cannot capture this graph).
    #[arg(long)]
    pub cuda_graph: bool,
    /// Cache for optimised graphs and TensorRT engines (default: $SD_ONNX_CACHE, $XDG_CACHE_HOME/sd-onnx
    /// or ~/.cache/sd-onnx).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Optimise graphs at every start instead of loading the cached optimised graph.
    #[arg(long)]
    pub no_graph_cache: bool,
    /// Intra-op threads (default: physical cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

const COMPONENTS: [&str; 5] = [
    "text_encoder",
    "text_encoder_2",
    "unet",
    "vae_decoder",
    "vae_encoder",
];

fn split_kv<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Error::Usage(format!("{flag} {s}: expected KEY=VALUE")))
}

/// The session configuration the flags describe; `shapes` (width, height, batch, guided) set TensorRT's
/// optimisation profiles for that request.
fn runtime_config(
    a: &RuntimeArgs,
    profile: &ModelProfile,
    shapes: Option<(usize, usize, usize, bool)>,
) -> Result<RuntimeConfig> {
    let options = a
        .ep_option
        .iter()
        .map(|o| split_kv("--ep-option", o).map(|(k, v)| (k.to_string(), v.to_string())))
        .collect::<Result<Vec<_>>>()?;
    // Graph capture needs fixed buffers and one graph id per buffer set, which only --cuda-graph arranges; the
    // raw provider option would also capture the text encoder and VAE runs, with ONNX Runtime's own outputs.
    if let Some((k, _)) = options
        .iter()
        .find(|(k, _)| k == "enable_cuda_graph" || k == "trt_cuda_graph_enable")
    {
        return Err(Error::Usage(format!(
            "--ep-option {k}: use --cuda-graph instead (it binds the UNet's buffers at fixed addresses and \
             captures the UNet only)"
        )));
    }
    let providers = ProviderChoice {
        provider: Provider::parse(&a.ep)?,
        device_id: a.device_id,
        options,
    };
    let mut per_component = std::collections::HashMap::new();
    for spec in &a.component_ep {
        let (name, ep) = split_kv("--component-ep", spec)?;
        if !COMPONENTS.contains(&name) {
            return Err(Error::Usage(format!(
                "--component-ep {spec}: component is one of {}",
                COMPONENTS.join(", ")
            )));
        }
        let provider = Provider::parse(ep)?;
        let options = if provider == providers.provider {
            providers.options.clone()
        } else {
            Vec::new()
        };
        per_component.insert(
            name.to_string(),
            ProviderChoice {
                provider,
                device_id: a.device_id,
                options,
            },
        );
    }
    let mut trt_profiles = std::collections::HashMap::new();
    if let Some((w, h, b, guided)) = shapes {
        let f = profile.vae_factor.value;
        let (lh, lw) = (h / f, w / f);
        let unet_b = if guided { 2 * b } else { b };
        let ch = profile.unet_in_channels.unwrap_or(4);
        let config_u64 = |c: &crate::profile::Component, key: &str| {
            c.config.as_ref().and_then(|c| c[key].as_u64())
        };
        let same = |s: String| ShapeProfile {
            min: s.clone(),
            opt: s.clone(),
            max: s,
        };
        trt_profiles.insert("text_encoder".into(), same("input_ids:1x77".into()));
        // The UNet's text conditioning: one encoder's width, or SDXL's two widths side by side plus the
        // second encoder's pooled projection and the six time ids.
        let unet_text = match &profile.xl {
            None => config_u64(&profile.text_encoder, "hidden_size")
                .map(|d| format!("encoder_hidden_states:{unet_b}x77x{d}")),
            Some(xl) => {
                trt_profiles.insert("text_encoder_2".into(), same("input_ids:1x77".into()));
                let d1 = config_u64(&profile.text_encoder, "hidden_size");
                let d2 = config_u64(&xl.text_encoder_2, "hidden_size");
                let p = config_u64(&xl.text_encoder_2, "projection_dim");
                match (d1, d2, p) {
                    (Some(d1), Some(d2), Some(p)) => Some(format!(
                        "encoder_hidden_states:{unet_b}x77x{},text_embeds:{unet_b}x{p},time_ids:{unet_b}x6",
                        d1 + d2
                    )),
                    _ => None,
                }
            }
        };
        if let Some(text) = unet_text {
            trt_profiles.insert(
                "unet".into(),
                same(format!("sample:{unet_b}x{ch}x{lh}x{lw},{text}")),
            );
        }
        let latent_ch = profile
            .latent_channels
            .as_ref()
            .map(|c| c.value)
            .unwrap_or(4);
        trt_profiles.insert(
            "vae_decoder".into(),
            same(format!("latent_sample:1x{latent_ch}x{lh}x{lw}")),
        );
        trt_profiles.insert("vae_encoder".into(), same(format!("sample:1x3x{h}x{w}")));
    }
    Ok(RuntimeConfig {
        providers,
        per_component,
        trt_fp16: a.trt_fp16,
        cache_dir: a.cache_dir.clone().or_else(default_cache_dir),
        trt_profiles,
        graph_cache: !a.no_graph_cache,
        threads: a.threads,
        low_memory: false,
        cuda_graph: a.cuda_graph,
    })
}

#[derive(Args, Debug)]
pub struct Txt2ImgArgs {
    /// Exported ONNX pipeline folder (diffusers convert script or optimum layout).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Denoising steps (default 25; 4 for guidance-distilled LCM models, diffusers' LCM default).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (default 7.5; 5 for SDXL, 8.5 for LCM models). Classifier-free: 1 or less skips the unconditional
    /// pass; LCM models take it as an embedding instead.
    #[arg(long)]
    pub guidance: Option<f32>,
    /// diffusers' guidance_rescale, 0 to 1 (0 = off): for zero-terminal-SNR models, 0.7 is the paper's value.
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f32,
    /// Scheduler, by the names `sd-onnx schedulers` lists (default: the class in scheduler_config.json).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Karras sigmas (use_karras_sigmas=True).
    #[arg(long)]
    pub karras: bool,
    /// Seed (default, or -1 as in A1111: random, printed).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_seed)]
    pub seed: Option<SeedArg>,
    /// torch: torch.Generator("cpu") (diffusers' PyTorch pipelines); numpy: RandomState (diffusers' ONNX
    /// pipelines); philox: torch.Generator("cuda") on NVIDIA GPUs (A1111's GPU/NV seeds), bit for bit.
    #[arg(long, default_value = "torch")]
    pub rng: String,
    /// Width in pixels (default: unet sample_size x VAE factor, else 512).
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Output file: .png (default sd-onnx-<seed>.png), .jpg or .webp by its extension; with --batch, -<i> is added
    /// before the extension.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Create each graph's session only while it is needed (lower peak memory, slower).
    #[arg(long)]
    pub low_memory: bool,
    /// Write where the time went (session creation, inside Session::run, ours) to this JSON file.
    #[arg(long, value_name = "PATH")]
    pub timings_json: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct Img2ImgArgs {
    /// The starting image (PNG, JPEG or WebP); its size, rounded down to the VAE factor, unless --width/--height.
    #[arg(long, value_name = "PATH")]
    pub init_image: PathBuf,
    /// Share of the schedule to run, in [0, 1]: 0 returns the image re-encoded, 1 ignores most of it
    /// (default: diffusers' img2img pipelines', 0.8, or 0.3 for SDXL).
    #[arg(long)]
    pub strength: Option<f64>,
    #[command(flatten)]
    pub common: Txt2ImgArgs,
}

#[derive(Args, Debug)]
pub struct InpaintArgs {
    #[arg(long, value_name = "PATH")]
    pub init_image: PathBuf,
    /// White = repaint, black = keep (converted to grayscale and binarised at 50%).
    #[arg(long, value_name = "PATH")]
    pub mask: PathBuf,
    /// Share of the schedule to run (default: diffusers' inpainting pipelines', 1.0, or 0.9999 for SDXL).
    #[arg(long)]
    pub strength: Option<f64>,
    #[command(flatten)]
    pub common: Txt2ImgArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[arg(long, value_name = "DIR", required_unless_present = "providers")]
    pub model: Option<PathBuf>,
    /// List the execution providers the loaded ONNX Runtime library offers.
    #[arg(long)]
    pub providers: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[arg(long)]
    pub json: bool,
    pub text: String,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Txt2img(a) => generate(a, None),
        Command::Img2img(a) => generate(
            a.common,
            Some(InitSpec {
                image: a.init_image,
                mask: None,
                strength: a.strength,
            }),
        ),
        Command::Inpaint(a) => generate(
            a.common,
            Some(InitSpec {
                image: a.init_image,
                mask: Some(a.mask),
                strength: a.strength,
            }),
        ),
        Command::Inspect(a) => inspect(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Bench(a) => bench(a),
        Command::Schedulers => {
            for (kind, name, about) in SchedulerKind::all() {
                println!("{name:<9} {:<34} {about}", kind.class_name());
            }
            Ok(())
        }
    }
}

/// `--seed`: a number, or -1 for a random one (A1111's convention).
#[derive(Clone, Copy, Debug)]
pub struct SeedArg(pub Option<u64>);

fn parse_seed(s: &str) -> std::result::Result<SeedArg, String> {
    if s.trim() == "-1" {
        return Ok(SeedArg(None));
    }
    s.trim()
        .parse::<u64>()
        .map(|v| SeedArg(Some(v)))
        .map_err(|_| format!("`{s}` is not a seed (0 to 2^64-1, or -1 for a random one)"))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() & 0xffff_ffff
}

/// `out.png` -> `out-1.png` for the second image of a batch.
fn batch_path(base: &Path, i: usize, batch: usize) -> PathBuf {
    if batch == 1 {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = base
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    base.with_file_name(format!("{stem}-{i}.{ext}"))
}

/// img2img / inpaint inputs as given on the command line (`strength`: none given, the pipeline's default).
struct InitSpec {
    image: PathBuf,
    mask: Option<PathBuf>,
    strength: Option<f64>,
}

fn generate(a: Txt2ImgArgs, init: Option<InitSpec>) -> Result<()> {
    let process_start = std::time::Instant::now();
    // Cheap checks first, before anything is loaded.
    if a.steps == Some(0) {
        return Err(Error::Usage("--steps must be at least 1".into()));
    }
    if let Some(out) = &a.output {
        OutputFormat::from_path(out)?;
    }
    let rng = parse_rng(&a.rng)?;
    let explicit = a
        .scheduler
        .as_deref()
        .map(SchedulerKind::from_name)
        .transpose()?;
    let profile = ModelProfile::load(&a.model)?;
    let scheduler = match (explicit, profile.default_scheduler) {
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => {
            return Err(Error::Usage(format!(
                "{}: no scheduler class we port in scheduler_config.json; pass --scheduler ({})",
                a.model.display(),
                SchedulerKind::names().join(", ")
            )));
        }
    };
    let defaults = profile.defaults();
    let steps = a.steps.unwrap_or(defaults.steps);
    let guidance = a.guidance.unwrap_or(defaults.guidance);
    let mut notes = Vec::new();
    let (dw, dh) = match &init {
        Some(i) => {
            // diffusers rounds an input's size down to the VAE factor; the exported UNet needs its own
            // multiple, so the size is rounded to that (and said) rather than failing inside the graph.
            let vae = profile.vae_factor.value;
            let by_vae = crate::images::target_size(&i.image, a.width, a.height, vae)?;
            let m = profile.size_multiple.value;
            let by_unet = crate::images::target_size(&i.image, a.width, a.height, m)?;
            if by_unet != by_vae && (a.width.is_none() || a.height.is_none()) {
                notes.push(format!(
                    "{}: used at {}x{} (diffusers would take {}x{}, which this export cannot run: sizes must \
                     be multiples of {m})",
                    i.image.display(),
                    by_unet.0,
                    by_unet.1,
                    by_vae.0,
                    by_vae.1
                ));
            }
            by_unet
        }
        None => profile.default_size(),
    };
    let (width, height) = (a.width.unwrap_or(dw), a.height.unwrap_or(dh));
    let init = match init {
        None => None,
        Some(spec) => {
            let strength = spec.strength.unwrap_or(match spec.mask {
                None => defaults.img2img_strength,
                Some(_) => defaults.inpaint_strength,
            });
            if !(0.0..=1.0).contains(&strength) || strength.is_nan() {
                return Err(Error::Usage(format!(
                    "--strength {strength} is outside [0, 1]"
                )));
            }
            let image = crate::images::load_image(&spec.image, width, height)?;
            let mask = match &spec.mask {
                Some(m) => {
                    let (mask, resized) = crate::images::load_mask(m, width, height)?;
                    if resized {
                        notes.push(format!(
                            "{}: resized to {width}x{height} to match the image",
                            m.display()
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
    if init.is_some() && profile.vae_encoder.is_none() {
        return Err(Error::model(
            &a.model,
            "has no vae_encoder: img2img and inpainting need one (export the pipeline with its VAE encoder)",
        ));
    }
    let seed = a.seed.and_then(|s| s.0).unwrap_or_else(random_seed);
    let req = Request {
        prompt: a.prompt,
        negative_prompt: a.negative_prompt,
        steps,
        guidance,
        guidance_rescale: a.guidance_rescale,
        scheduler,
        karras: a.karras,
        seed,
        rng,
        width,
        height,
        batch: a.batch,
        init,
    };
    for n in &notes {
        eprintln!("note: {n}");
    }
    // Fail on bad sizes or a scheduler config we cannot honour before any graph is loaded.
    req.check(&profile)?;

    let mut config = runtime_config(
        &a.runtime,
        &profile,
        Some((req.width, req.height, req.batch, req.guidance > 1.0)),
    )?;
    config.low_memory = a.low_memory;
    let uses_trt = config.providers.provider == Provider::TensorRt
        || config
            .per_component
            .values()
            .any(|c| c.provider == Provider::TensorRt);
    let t_ort = std::time::Instant::now();
    let runtime = Runtime::load_with(a.runtime.ort_lib.as_deref(), config)?;
    let ort_setup = t_ort.elapsed();
    if uses_trt && !a.quiet {
        eprintln!(
            "note: TensorRT builds an engine for {}x{} batch {} on first use; that takes minutes; engines are cached in {}",
            req.width,
            req.height,
            req.batch,
            runtime
                .config
                .cache_dir
                .as_ref()
                .map(|d| d.join("tensorrt").display().to_string())
                .unwrap_or_else(|| "(no cache dir)".into())
        );
    }
    let model_name = profile.name();
    let memory = if a.low_memory {
        MemoryMode::Low
    } else {
        MemoryMode::OneShot
    };
    let t_sessions = std::time::Instant::now();
    let mut pipeline = Pipeline::with_memory(&runtime, profile, memory)?;
    let session_creation = t_sessions.elapsed();
    let show = !a.quiet && std::io::stderr().is_terminal();
    let bar = if show {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {its} {msg}")
                .map(|st| {
                    st.with_key(
                        "its",
                        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{:.2} it/s", state.per_sec());
                        },
                    )
                })
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    if a.seed.and_then(|s| s.0).is_none() && !a.quiet {
        eprintln!("seed: {seed}");
    }
    if pipeline.encoder_output() == Some(crate::graphs::EncoderOutput::Sample)
        && req.init.is_some()
        && !a.quiet
    {
        eprintln!(
            "note: this export samples its VAE latents inside the graph (`latent_sample`); the result cannot be reproduced exactly"
        );
    }
    let result = pipeline.generate(&req, &mut |p| match p {
        Progress::Step { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        Progress::Decoding => bar.set_message("decoding"),
    });
    bar.finish_and_clear();
    let generated = result?;
    for w in &generated.warnings {
        eprintln!("warning: {w}");
    }
    let base = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("sd-onnx-{seed}.png")));
    let params = a1111_parameters(&req, seed, &model_name);
    for (i, img) in generated.images.iter().enumerate() {
        let path = batch_path(&base, i, req.batch);
        write_image(&path, img, &params)?;
        if !a.quiet {
            println!("{}", path.display());
        }
    }
    if let Some(path) = &a.timings_json {
        let t = &generated.timings;
        let wall = process_start.elapsed();
        // Inside ONNX Runtime's Session::run (input/output copies into ORT tensors included): text encoder,
        // every UNet call, VAE decode (+ encode for img2img, counted in `text`/`decode` phases' neighbours).
        let in_run = t.text + t.unet.iter().sum::<std::time::Duration>() + t.decode;
        let ours = wall.saturating_sub(ort_setup + session_creation + in_run);
        let report = serde_json::json!({
            "wall_ms": ms(wall),
            "ort_library_load_ms": ms(ort_setup),
            "session_creation_ms": ms(session_creation),
            "session_run_ms": ms(in_run),
            "outside_ort_ms": ms(ours),
            "outside_ort_pct": 100.0 * ours.as_secs_f64() / wall.as_secs_f64().max(1e-12),
            "unet_calls": t.unet.len(),
            "unet_calls_io_bound": t.bound_unet_calls,
            "unet_host_io_ms": ms(t.unet_host_io.iter().sum()),
            "unet_graph_capture": t.unet_capture.to_string(),
            "scheduler_ms": ms(t.scheduler.iter().sum()),
            "guidance_ms": ms(t.guidance.iter().sum()),
        });
        crate::output::write_atomic(path, report.to_string().as_bytes())?;
    }
    Ok(())
}

fn port_json(p: &Port) -> serde_json::Value {
    serde_json::json!({
        "name": p.name,
        "dtype": p.dtype.map(crate::graphs::dtype_name),
        "shape": p.dims,
    })
}

fn inspect(a: InspectArgs) -> Result<()> {
    if a.providers {
        let runtime = Runtime::load_with(a.runtime.ort_lib.as_deref(), RuntimeConfig::default())?;
        let list = runtime.available_providers()?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"library": runtime.library.path, "version": runtime.version, "providers": list})
            );
        } else {
            println!(
                "ONNX Runtime {} at {}",
                runtime.version,
                runtime.library.path.display()
            );
            for p in list {
                println!("  {p}");
            }
        }
        return Ok(());
    }
    let model = a.model.clone().unwrap_or_default();
    let profile = ModelProfile::load(&model)?;
    let tok = ClipTokenizer::from_dir(&profile.tokenizer_dir);
    let runtime = runtime_config(&a.runtime, &profile, None)
        .and_then(|c| Runtime::load_with(a.runtime.ort_lib.as_deref(), c));
    let mut problems = profile.problems.clone();
    let mut components = Vec::new();
    let mut comps = vec![&profile.text_encoder];
    if let Some(xl) = &profile.xl {
        comps.push(&xl.text_encoder_2);
    }
    comps.extend([&profile.unet, &profile.vae_decoder]);
    if let Some(e) = &profile.vae_encoder {
        comps.push(e);
    }
    for c in comps {
        let graph = match &runtime {
            Ok(rt) => match Graph::load(rt, c) {
                Ok(g) => Some(g),
                Err(e) => {
                    problems.push(format!("{}: does not load: {e}", c.name));
                    None
                }
            },
            Err(_) => None,
        };
        if c.name == "vae_encoder"
            && let Some(g) = &graph
            && g.outputs.iter().any(|o| o.name == "latent_sample")
        {
            problems.push(
                "vae_encoder outputs `latent_sample` (sampled inside the graph): img2img from this export cannot be \
                 bit-reproducible"
                    .into(),
            );
        }
        // Which providers can run it: graphs fused for GPUs carry contrib ops the CPU provider lacks.
        let gpu_only: Vec<String> = std::fs::read(&c.graph)
            .ok()
            .and_then(|b| crate::onnx_proto::operators(&b))
            .map(|ops| {
                ops.into_iter()
                    .filter(|(d, o)| {
                        d == "com.microsoft"
                            && crate::onnx_proto::GPU_ONLY_CONTRIB_OPS.contains(&o.as_str())
                    })
                    .map(|(_, o)| o)
                    .collect()
            })
            .unwrap_or_default();
        let runs_on: Vec<&str> = if gpu_only.is_empty() {
            vec!["cpu", "cuda", "tensorrt", "directml", "coreml"]
        } else {
            vec!["cuda", "tensorrt"]
        };
        if !gpu_only.is_empty() {
            problems.push(format!(
                "{}: uses ONNX Runtime contrib ops {} that only the CUDA/TensorRT providers implement; the CPU provider cannot run it",
                c.name,
                gpu_only.join(", ")
            ));
        }
        components.push(serde_json::json!({
            "name": c.name,
            "runs_on": runs_on,
            "gpu_only_ops": gpu_only,
            "graph": c.graph,
            "external_data": c.external_data,
            "config_json": c.config.is_some(),
            "inputs": graph.as_ref().map(|g| g.inputs.iter().map(port_json).collect::<Vec<_>>()),
            "outputs": graph.as_ref().map(|g| g.outputs.iter().map(port_json).collect::<Vec<_>>()),
        }));
    }
    if let Err(e) = &runtime {
        problems.push(format!("graphs not opened: {e}"));
    }
    let (pad_token, pad_id) = match &tok {
        Ok(t) => {
            let (s, id) = t.pad_token();
            (Some(s.to_string()), Some(id))
        }
        Err(e) => {
            problems.push(format!("tokenizer: {e}"));
            (None, None)
        }
    };
    let family = match profile
        .text_encoder
        .config
        .as_ref()
        .and_then(|c| c["hidden_size"].as_u64())
    {
        _ if profile.xl.is_some() => {
            "SDXL (two text encoders, pooled text embeddings and size/crop time ids)"
        }
        Some(768) => "SD 1.x (CLIP ViT-L/14 text encoder)",
        Some(1024) => "SD 2.x (OpenCLIP ViT-H text encoder)",
        Some(_) => "Stable Diffusion architecture (non-standard text encoder width)",
        None => "Stable Diffusion (text encoder width unknown without config.json)",
    };
    let report = serde_json::json!({
        "model": profile.dir,
        "layout": profile.layout.describe(),
        "family": family,
        "onnx_runtime": runtime.as_ref().ok().map(|r| serde_json::json!({"library": r.library.path, "found_by": r.library.source, "version": r.version})),
        "components": components,
        "scheduler": {"class": profile.scheduler_class, "ported_as": profile.default_scheduler.map(|k| k.name()), "config": profile.scheduler_config.raw()},
        "prediction_type": profile.prediction_type,
        "guidance_embedding": profile.guidance_embedding.as_ref().map(|g| serde_json::json!({"width": g.value, "from": g.source})),
        "sdxl": profile.xl.as_ref().map(|x| serde_json::json!({"tokenizer_2": x.tokenizer_2_dir, "zeros_for_empty_negative": {"value": x.zeros_for_empty_negative.value, "from": x.zeros_for_empty_negative.source}})),
        "tokenizer": {"dir": profile.tokenizer_dir, "tokenizer_json": profile.tokenizer_dir.join("tokenizer.json").is_file(), "pad_token": pad_token, "pad_id": pad_id},
        "vae_scaling_factor": {"value": profile.vae_scaling_factor.value, "from": profile.vae_scaling_factor.source},
        "vae_factor": {"value": profile.vae_factor.value, "from": profile.vae_factor.source},
        "size_multiple": {"value": profile.size_multiple.value, "from": profile.size_multiple.source},
        "latent_channels": profile.latent_channels.as_ref().map(|c| serde_json::json!({"value": c.value, "from": c.source})),
        "default_size": profile.default_size(),
        "problems": problems,
    });
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(());
    }
    println!("model:      {}", profile.dir.display());
    println!("layout:     {}", profile.layout.describe());
    println!("family:     {family}");
    if let Ok(r) = &runtime {
        println!(
            "runtime:    ONNX Runtime {} ({}, {})",
            r.version,
            r.library.path.display(),
            r.library.source
        );
    }
    for c in &components {
        println!("{}:", c["name"].as_str().unwrap_or(""));
        println!("  graph: {}", c["graph"].as_str().unwrap_or(""));
        for f in c["external_data"].as_array().into_iter().flatten() {
            println!("  external data: {}", f.as_str().unwrap_or(""));
        }
        for (label, key) in [("in ", "inputs"), ("out", "outputs")] {
            for p in c[key].as_array().into_iter().flatten() {
                let dims: Vec<&str> = p["shape"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str())
                    .collect();
                println!(
                    "  {label} {} {}[{}]",
                    p["name"].as_str().unwrap_or(""),
                    p["dtype"].as_str().unwrap_or("?"),
                    dims.join(", ")
                );
            }
        }
    }
    println!(
        "scheduler:  {} (as `{}`)",
        profile.scheduler_class.as_deref().unwrap_or("none"),
        profile
            .default_scheduler
            .map(|k| k.name())
            .unwrap_or("not ported")
    );
    println!("prediction: {}", profile.prediction_type);
    match &profile.guidance_embedding {
        Some(g) => println!(
            "guidance:   embedded ({}-wide `timestep_cond`, {}; one UNet pass per step, no negative prompt)",
            g.value, g.source
        ),
        None => {
            println!("guidance:   classifier-free (two UNet passes per step when --guidance > 1)")
        }
    }
    if let (Some(p), Some(id)) = (&report["tokenizer"]["pad_token"].as_str(), pad_id) {
        println!(
            "tokenizer:  {} (pad token {p:?} = {id})",
            profile.tokenizer_dir.display()
        );
    }
    if let Some(xl) = &profile.xl {
        println!(
            "SDXL:       second tokenizer {}; no negative prompt -> {} ({})",
            xl.tokenizer_2_dir.display(),
            if xl.zeros_for_empty_negative.value {
                "zero unconditional embeddings"
            } else {
                "the empty prompt's embeddings"
            },
            xl.zeros_for_empty_negative.source
        );
    }
    println!(
        "VAE scale:  {} ({})",
        profile.vae_scaling_factor.value, profile.vae_scaling_factor.source
    );
    println!(
        "VAE factor: {} ({})",
        profile.vae_factor.value, profile.vae_factor.source
    );
    println!(
        "sizes:      multiples of {} ({})",
        profile.size_multiple.value, profile.size_multiple.source
    );
    let (w, h) = profile.default_size();
    println!("default size: {w}x{h}");
    if problems.is_empty() {
        println!("problems:   none found");
    } else {
        println!("problems:");
        for p in &problems {
            println!("  - {p}");
        }
    }
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let profile = ModelProfile::load(&a.model)?;
    let tok = ClipTokenizer::from_dir(&profile.tokenizer_dir)?;
    let enc = tok.encode(&a.text)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"ids": enc.ids, "truncated": enc.truncated})
        );
    } else {
        println!(
            "{}",
            enc.ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        if let Some(cut) = enc.truncated {
            eprintln!("warning: longer than 77 tokens; cut: \"{cut}\"");
        }
    }
    Ok(())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn parse_rng(name: &str) -> Result<RngKind> {
    RngKind::parse(name)
        .ok_or_else(|| Error::Usage(format!("--rng {name}: choose torch, numpy or philox")))
}

fn bench(a: BenchArgs) -> Result<()> {
    use crate::bench::{median, peak_rss_bytes, quantile, scheduler_steps};
    use std::time::Instant;
    if a.runs == 0 {
        return Err(Error::Usage("--runs must be at least 1".into()));
    }
    let start = Instant::now();
    let profile = ModelProfile::load(&a.model)?;
    let scheduler = match a.scheduler.as_deref() {
        Some(n) => SchedulerKind::from_name(n)?,
        None => profile.default_scheduler.unwrap_or(SchedulerKind::Pndm),
    };
    let (dw, dh) = profile.default_size();
    let req = Request {
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative_prompt: None,
        steps: a.steps,
        guidance: a.guidance,
        guidance_rescale: 0.0,
        scheduler,
        karras: false,
        seed: 0,
        rng: parse_rng(&a.rng)?,
        width: a.width.unwrap_or(dw),
        height: a.height.unwrap_or(dh),
        batch: 1,
        init: None,
    };
    req.check(&profile)?;
    let config = profile.scheduler_config.clone();
    let runtime = Runtime::load_with(
        a.runtime.ort_lib.as_deref(),
        runtime_config(
            &a.runtime,
            &profile,
            Some((req.width, req.height, 1, req.guidance > 1.0)),
        )?,
    )?;
    let t_load = Instant::now();
    let memory = if a.low_memory {
        MemoryMode::Low
    } else {
        MemoryMode::KeepAll
    };
    let mut pipeline = Pipeline::with_memory(&runtime, profile, memory)?;
    let session_creation = t_load.elapsed();
    let first_image = start.elapsed();
    // One warm-up run, then the timed ones.
    pipeline.generate(&req, &mut |_| {})?;
    let mut bound_calls = 0usize;
    let mut capture = crate::runtime::GraphCapture::Off;
    let mut host_io = Vec::new();
    let (mut unet, mut sched, mut guide, mut text, mut decode, mut total) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..a.runs {
        let t = Instant::now();
        let g = pipeline.generate(&req, &mut |_| {})?;
        total.push(t.elapsed());
        bound_calls += g.timings.bound_unet_calls;
        capture = g.timings.unet_capture;
        unet.extend(g.timings.unet);
        host_io.extend(g.timings.unet_host_io);
        sched.extend(g.timings.scheduler);
        guide.extend(g.timings.guidance);
        text.push(g.timings.text);
        decode.push(g.timings.decode);
    }
    let unet_med = median(&unet);
    let factor = pipeline.profile.vae_factor.value;
    let run_shape = [1, 4, req.height / factor, req.width / factor];
    let big = [1, 4, 128, 128];
    let micro_run = scheduler_steps(&config, run_shape, a.steps, req.rng);
    let micro_big = scheduler_steps(&config, big, a.steps, req.rng);
    let share =
        |d: std::time::Duration| 100.0 * d.as_secs_f64() / unet_med.as_secs_f64().max(1e-12);
    let rss = peak_rss_bytes();
    let capture_text = capture.to_string();
    let report = serde_json::json!({
        "model": a.model, "scheduler": scheduler.name(), "rng": req.rng.name(), "steps": a.steps, "size": [req.width, req.height],
        "runs": a.runs, "ort_version": runtime.version, "threads": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "session_creation_ms": ms(session_creation),
        "first_load_ms": ms(first_image),
        "text_encoding_ms": ms(median(&text)),
        "unet_step_ms": {"median": ms(unet_med), "p90": ms(quantile(&unet, 0.9))},
        "unet_calls": unet.len(),
        "unet_calls_io_bound": bound_calls,
        "unet_graph_capture": capture_text,
        "unet_host_io_ms": {"median": ms(median(&host_io)), "share_of_unet_pct": share(median(&host_io))},
        "scheduler_step_ms": {"median": ms(median(&sched)), "p90": ms(quantile(&sched, 0.9)), "share_of_unet_pct": share(median(&sched))},
        "guidance_host_ms": {"median": ms(median(&guide))},
        "vae_decode_ms": ms(median(&decode)),
        "end_to_end_ms": {"median": ms(median(&total)), "min": ms(*total.iter().min().unwrap_or(&std::time::Duration::ZERO))},
        "peak_rss_mib": rss.map(|b| b as f64 / 1048576.0),
        "scheduler_micro": {
            "shape_run": run_shape, "shape_large": big,
            "per_scheduler_ms": micro_run.iter().zip(&micro_big).map(|((k, d), (_, d2))| serde_json::json!({"scheduler": k.name(), "run_shape": ms(*d), "1x4x128x128": ms(*d2)})).collect::<Vec<_>>(),
        },
    });
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "model {} | {} {} steps, --rng {} | {}x{} | {} runs | ONNX Runtime {}",
        a.model.display(),
        scheduler.name(),
        a.steps,
        req.rng.name(),
        req.width,
        req.height,
        a.runs,
        runtime.version
    );
    println!("session creation      {:>10.1} ms", ms(session_creation));
    println!(
        "UNet calls            {:>10} ({} IO-bound; CUDA graph: {capture_text})",
        unet.len(),
        bound_calls
    );
    println!("text encoding         {:>10.2} ms", ms(median(&text)));
    println!(
        "UNet per step         {:>10.2} ms median, {:.2} p90",
        ms(unet_med),
        ms(quantile(&unet, 0.9))
    );
    println!(
        "UNet host I/O per step{:>10.3} ms median ({:.2}% of a UNet step; latents in, output out)",
        ms(median(&host_io)),
        share(median(&host_io))
    );
    println!(
        "scheduler per step    {:>10.3} ms median ({:.3}% of a UNet step)",
        ms(median(&sched)),
        share(median(&sched))
    );
    println!(
        "guidance/host per step{:>10.3} ms median",
        ms(median(&guide))
    );
    println!("VAE decode            {:>10.2} ms", ms(median(&decode)));
    println!(
        "end to end (loaded)   {:>10.1} ms median",
        ms(median(&total))
    );
    if let Some(b) = rss {
        println!("peak RSS              {:>10.1} MiB", b as f64 / 1048576.0);
    }
    println!(
        "scheduler step (scale_model_input + step), median over a {}-step schedule:",
        a.steps
    );
    println!(
        "  {:<12} {:>12} {:>14}",
        "scheduler",
        format!(
            "{}x{}x{}x{}",
            run_shape[0], run_shape[1], run_shape[2], run_shape[3]
        ),
        "1x4x128x128"
    );
    for ((k, d), (_, d2)) in micro_run.iter().zip(&micro_big) {
        println!("  {:<12} {:>9.3} ms {:>11.3} ms", k.name(), ms(*d), ms(*d2));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        rt: RuntimeArgs,
    }

    /// TensorRT's shape profiles are exactly the requested size and batch (CFG doubles the UNet batch), so one
    /// engine per size is built and cached, and a new size is a new engine rather than a silent rebuild.
    #[test]
    fn tensorrt_profiles_follow_the_request() {
        let profile = ModelProfile::load(std::path::Path::new("onnx/sd-tiny-optimum"))
            .unwrap_or_else(|e| panic!("{e}"));
        let args = Wrap::parse_from(["x", "--ep", "tensorrt", "--trt-fp16"]).rt;
        let hidden = profile
            .text_encoder
            .config
            .as_ref()
            .and_then(|c| c["hidden_size"].as_u64())
            .unwrap_or_default();
        let c = runtime_config(&args, &profile, Some((96, 64, 2, true)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.trt_fp16);
        assert_eq!(c.providers.provider, Provider::TensorRt);
        let f = profile.vae_factor.value;
        let unet = &c.trt_profiles["unet"];
        let want = format!(
            "sample:4x4x{}x{},encoder_hidden_states:4x77x{hidden}",
            64 / f,
            96 / f
        );
        assert_eq!((&unet.min, &unet.opt, &unet.max), (&want, &want, &want));
        assert_eq!(
            c.trt_profiles["vae_decoder"].opt,
            format!("latent_sample:1x4x{}x{}", 64 / f, 96 / f)
        );
        assert_eq!(c.trt_profiles["vae_encoder"].opt, "sample:1x3x64x96");
        // Without guidance the UNet batch is the image batch.
        let c = runtime_config(&args, &profile, Some((96, 64, 2, false)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.trt_profiles["unet"].opt.starts_with("sample:2x4x"));
        // SDXL: both encoders' widths side by side, the pooled projection and the time ids.
        let xl = ModelProfile::load(std::path::Path::new("onnx/sdxl-tiny-optimum"))
            .unwrap_or_else(|e| panic!("{e}"));
        let c =
            runtime_config(&args, &xl, Some((64, 64, 1, true))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.trt_profiles["unet"].opt,
            "sample:2x4x8x8,encoder_hidden_states:2x77x16,text_embeds:2x8,time_ids:2x6"
        );
        assert_eq!(c.trt_profiles["text_encoder_2"].opt, "input_ids:1x77");
    }
}
