//! The command line's arguments (clap definitions only).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// diffusers' guidance_rescale, 0 to 1 (0 = off): for zero-terminal-SNR models, 0.7 is the paper's value.
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f32,
    /// Scheduler: the names `sd-onnx schedulers` lists, A1111's (`DPM++ 2M`, `Euler a`, `DPM++ 2M Karras`), the
    /// `k_` aliases or sd.cpp's, any case (default: the class in scheduler_config.json).
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

/// `--seed`: a number, or -1 for a random one (A1111's convention).
#[derive(Clone, Copy, Debug)]
pub struct SeedArg(pub Option<u64>);

pub fn parse_seed(s: &str) -> std::result::Result<SeedArg, String> {
    if s.trim() == "-1" {
        return Ok(SeedArg(None));
    }
    s.trim()
        .parse::<u64>()
        .map(|v| SeedArg(Some(v)))
        .map_err(|_| format!("`{s}` is not a seed (0 to 2^64-1, or -1 for a random one)"))
}
