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
    /// Defaults for any option, from a TOML file (also $SD_ONNX_CONFIG); the command line overrides them.
    /// Keys are option names (`steps = 30`, `low_memory = true`); a `[txt2img]` table applies to one command.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
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
    /// Print the token ids (77 per chunk) and weights the text encoder will receive.
    Tokenize(TokenizeArgs),
    /// List the textual-inversion embeddings a folder holds for a model: what loads, and what does not and why.
    Embeddings(EmbeddingsArgs),
    /// LoRA files: `sd-onnx lora inspect FILE [-m MODEL]`.
    Lora {
        #[command(subcommand)]
        command: LoraCommand,
    },
    /// List the schedulers and their diffusers classes.
    Schedulers,
    /// Time session creation, text encoding, UNet and scheduler per step, VAE decode, end to end, peak RSS.
    Bench(BenchArgs),
    /// Serve AUTOMATIC1111's web API (/sdapi/v1/txt2img, img2img, options, ...) and OpenAI's
    /// /v1/images/generations, with the model kept loaded.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Exported ONNX pipeline folder, loaded at start.
    #[arg(short, long, value_name = "DIR")]
    pub model: PathBuf,
    /// A folder of model folders, listed by /sdapi/v1/sd-models; `sd_model_checkpoint` switches to one.
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Address and port to listen on (port 0: any free one, printed). Anything but loopback without
    /// --api-auth is warned about.
    #[arg(long, default_value = "127.0.0.1:7860", value_name = "ADDR:PORT")]
    pub listen: String,
    /// HTTP Basic credentials every request must carry, as A1111's --api-auth (`USER:PASS`, comma-separated
    /// for several).
    #[arg(long, value_name = "USER:PASS")]
    pub api_auth: Option<String>,
    /// LoRA files for `<lora:NAME:WEIGHT>` in prompts (listed by /sdapi/v1/loras).
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// Textual-inversion embeddings, loaded with each model (listed by /sdapi/v1/embeddings).
    #[arg(long, value_name = "DIR")]
    pub embeddings_dir: Option<PathBuf>,
    /// Most denoising steps a request may ask for.
    #[arg(long, default_value_t = 150, value_name = "N")]
    pub max_steps: usize,
    /// Most images per request (batch_size x n_iter).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_images: usize,
    /// Most pixels per image (width x height).
    #[arg(long, default_value_t = 1024 * 1024, value_name = "N")]
    pub max_pixels: usize,
    /// Largest request body, in MiB (413 beyond).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub max_body_mb: usize,
    /// Jobs that may wait behind the running one (503 with Retry-After beyond).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub queue: usize,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Exported ONNX pipeline folder.
    #[arg(short, long, value_name = "DIR")]
    pub model: PathBuf,
    /// Denoising steps per run.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// The prompt of the timed runs (A1111 syntax: a long one takes several 75-token chunks).
    #[arg(
        short,
        long,
        default_value = "a photograph of an astronaut riding a horse"
    )]
    pub prompt: String,
    /// Width in pixels (default: the model's).
    #[arg(short = 'W', long)]
    pub width: Option<usize>,
    /// Height in pixels (default: the model's).
    #[arg(short = 'H', long)]
    pub height: Option<usize>,
    /// Timed runs after one warm-up run.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Guidance scale (above 1: two UNet batches per step).
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f32,
    /// Scheduler for the timed runs (default: the folder's).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Generator for the runs and the scheduler micro-benchmark (ancestral samplers draw every step).
    #[arg(long, default_value = "torch")]
    pub rng: String,
    /// Machine-readable output (JSON).
    #[arg(long)]
    pub json: bool,
    /// Measure with --low-memory's policy (sessions created per phase and dropped).
    #[arg(long)]
    pub low_memory: bool,
    /// Merge these LoRAs (PATH[:WEIGHT], repeatable) into the sessions: session creation then includes reading
    /// and merging them (or, once merged before, loading the cached merged graphs).
    #[arg(long = "lora", value_name = "PATH[:WEIGHT]")]
    pub lora: Vec<String>,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// ONNX Runtime shared library (else ORT_DYLIB_PATH, else one next to the executable).
    #[arg(long, value_name = "PATH", global = true, help_heading = MODEL)]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider: cpu, cuda, tensorrt, directml, coreml.
    #[arg(long, default_value = "cpu", help_heading = MODEL)]
    pub ep: String,
    /// GPU index for cuda, tensorrt and directml.
    #[arg(long, default_value_t = 0, help_heading = MODEL)]
    pub device_id: i32,
    /// Provider option passed as-is, e.g. `--ep-option cudnn_conv_algo_search=HEURISTIC` (repeatable).
    #[arg(long, value_name = "KEY=VALUE", help_heading = MODEL)]
    pub ep_option: Vec<String>,
    /// Provider for one component, e.g. `--component-ep vae_decoder=cpu` (repeatable).
    #[arg(long, value_name = "COMPONENT=EP", help_heading = MODEL)]
    pub component_ep: Vec<String>,
    /// TensorRT: build fp16 engines.
    #[arg(long, help_heading = MODEL)]
    pub trt_fp16: bool,
    /// CUDA/TensorRT: capture the UNet's run as a CUDA graph once and replay it every step (fixed shapes;
    /// falls back, with the reason, when ONNX Runtime cannot capture this graph).
    #[arg(long, help_heading = MODEL)]
    pub cuda_graph: bool,
    /// Cache for optimised graphs, TensorRT engines and model hashes (default: $SD_ONNX_CACHE,
    /// $XDG_CACHE_HOME/sd-onnx or ~/.cache/sd-onnx).
    #[arg(long, value_name = "DIR", help_heading = MODEL)]
    pub cache_dir: Option<PathBuf>,
    /// Optimise graphs at every start instead of loading the cached optimised graph.
    #[arg(long, help_heading = MODEL)]
    pub no_graph_cache: bool,
    /// Keep the export's attention operators on the CPU (every score matrix in memory) instead of ONNX
    /// Runtime's tiled MultiHeadAttention kernel.
    #[arg(long, help_heading = MODEL)]
    pub no_fused_attention: bool,
    /// Intra-op threads (default: physical cores).
    #[arg(allow_negative_numbers = true, long, value_name = "N", help_heading = MODEL)]
    pub threads: Option<usize>,
}

pub const GENERATION: &str = "Generation";
pub const IMAGES: &str = "Images";
pub const MODEL: &str = "Model and runtime";
pub const OUTPUT: &str = "Output";

#[derive(Args, Debug)]
pub struct Txt2ImgArgs {
    /// What to draw.
    #[arg(short, long, help_heading = GENERATION)]
    pub prompt: String,
    /// What to steer away from (the unconditional half of classifier-free guidance; default: empty).
    #[arg(short, long, value_name = "PROMPT", help_heading = GENERATION)]
    pub negative_prompt: Option<String>,
    /// Denoising steps (default 25; 4 for guidance-distilled LCM models, diffusers' LCM default). Heun and DPM2
    /// call the UNet twice a step; the progress bar counts steps.
    #[arg(allow_negative_numbers = true, long, value_name = "N", help_heading = GENERATION)]
    pub steps: Option<usize>,
    /// Guidance scale (default 7.5; 5 for SDXL, 8.5 for LCM models). Classifier-free: 1 or less skips the
    /// unconditional pass; LCM models take it as an embedding instead.
    #[arg(short, long, visible_alias = "cfg-scale", allow_negative_numbers = true, help_heading = GENERATION)]
    pub guidance: Option<f32>,
    /// diffusers' guidance_rescale, 0 to 1 (0 = off): for zero-terminal-SNR models, 0.7 is the paper's value.
    #[arg(allow_negative_numbers = true, long, default_value_t = 0.0, help_heading = GENERATION)]
    pub guidance_rescale: f32,
    /// Sampler: pndm, ddim, ddpm, lms, euler, euler-a, heun, dpm++2m, dpm++2m-sde, unipc, kdpm2, kdpm2-a, deis,
    /// lcm; or A1111's names (PLMS, Euler a, DPM++ 2M, "DPM++ 2M Karras"), the k_ aliases (k_euler_a), sd.cpp's
    /// (euler_a, dpm++2m) or diffusers' classes, any case (default: the class in scheduler_config.json).
    #[arg(long, visible_aliases = ["sampler", "sampling-method"], value_name = "NAME", help_heading = GENERATION)]
    pub scheduler: Option<String>,
    /// Sigma schedule: uniform (diffusers' default spacing), karras, exponential or beta; only for schedulers
    /// with sigmas (not pndm, ddim, ddpm, lcm; euler-a has only uniform). Default: the folder's config.
    #[arg(long, value_name = "NAME", help_heading = GENERATION)]
    pub schedule: Option<String>,
    /// Shorthand for --schedule karras.
    #[arg(long, help_heading = GENERATION)]
    pub karras: bool,
    /// Seed of the first image; image i of the run gets seed + i (default, or -1 as in A1111: random, printed).
    #[arg(short, long, allow_negative_numbers = true, value_parser = parse_seed, help_heading = GENERATION)]
    pub seed: Option<SeedArg>,
    /// How prompts are read. a1111: `(word:1.2)` and `(word)` weigh 1.2 and 1.1, `[word]` 1/1.1, `\(` is a
    /// literal bracket, `BREAK` starts a new 75-token chunk, and prompts of any length are encoded 75 tokens
    /// at a time. plain: diffusers' reading, the text as it is, cut at 77 tokens.
    #[arg(long, default_value = "a1111", value_name = "SYNTAX", help_heading = GENERATION)]
    pub prompt_syntax: String,
    /// How weights act (A1111's Emphasis setting): original (multiply, then restore the chunk's mean) or
    /// no-norm (multiply only).
    #[arg(long, default_value = "original", value_name = "NAME", help_heading = GENERATION)]
    pub emphasis: String,
    /// A1111's Clip skip: 1 = the text encoder's last layer, 2 = the one before it (through the final layer
    /// norm), and so on. diffusers counts one less: its `clip_skip=1` is our 2, and it skips for the prompt
    /// only, which --prompt-syntax plain keeps (A1111 syntax skips for the negative prompt too, as A1111).
    /// SDXL starts at its penultimate layer, and N moves N - 1 layers further back.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_name = "N", help_heading = GENERATION)]
    pub clip_skip: usize,
    /// torch: torch.Generator("cpu") (diffusers' PyTorch pipelines); numpy: RandomState (diffusers' ONNX
    /// pipelines); philox: torch.Generator("cuda") on NVIDIA GPUs (A1111's GPU/NV seeds), bit for bit.
    #[arg(long, default_value = "torch", value_name = "NAME", help_heading = GENERATION)]
    pub rng: String,
    /// Width in pixels (default: unet sample_size x VAE factor, else 512).
    #[arg(allow_negative_numbers = true, short = 'W', long, value_name = "PX", help_heading = IMAGES)]
    pub width: Option<usize>,
    /// Height in pixels (default: as --width).
    #[arg(allow_negative_numbers = true, short = 'H', long, value_name = "PX", help_heading = IMAGES)]
    pub height: Option<usize>,
    /// Images per UNet call (A1111's batch size); image i has its own generator seeded seed + i.
    #[arg(allow_negative_numbers = true, long, visible_alias = "batch", default_value_t = 1, value_name = "N", help_heading = IMAGES)]
    pub batch_size: usize,
    /// Batches, one after the other (A1111's batch count; sd.cpp's -b); seeds continue across batches.
    #[arg(allow_negative_numbers = true, short = 'b', long, default_value_t = 1, value_name = "N", help_heading = IMAGES)]
    pub batch_count: usize,
    /// One generator seeded once for each batch, as diffusers' `num_images_per_prompt` does: diffusers' images,
    /// but image i is reproduced only by the same batch.
    #[arg(long, help_heading = IMAGES)]
    pub shared_generator: bool,
    /// Exported ONNX pipeline folder (diffusers convert script or optimum layout).
    #[arg(short, long, value_name = "DIR", help_heading = MODEL)]
    pub model: PathBuf,
    /// Textual-inversion embeddings (A1111's flag): every .pt, .bin and .safetensors file in DIR, triggered in
    /// prompts by its file name without the extension (`sd-onnx embeddings` lists what loads).
    #[arg(long, value_name = "DIR", help_heading = MODEL)]
    pub embeddings_dir: Option<PathBuf>,
    /// A LoRA (.safetensors: kohya, diffusers/PEFT, LoCon, LoHa, LoKr) merged into the text encoder(s) and UNet
    /// at this weight (default 1; negative weights subtract it). Repeatable.
    #[arg(long = "lora", value_name = "PATH[:WEIGHT]", help_heading = MODEL)]
    pub lora: Vec<String>,
    /// Where the prompt's <lora:NAME:WEIGHT> (or <lora:NAME:TE:UNET>) tags find NAME.safetensors (A1111's flag;
    /// searched 4 folders deep). The tags are taken out of the prompt.
    #[arg(long, value_name = "DIR", help_heading = MODEL)]
    pub lora_dir: Option<PathBuf>,
    /// Drop every session after each batch of a --batch-count run, and plan no memory blocks on GPU providers
    /// (lower peak memory, slower).
    #[arg(long, help_heading = MODEL)]
    pub low_memory: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Output file: .png, .jpg or .webp by its extension (default sd-onnx-{seed}.png). Placeholders: {seed},
    /// {i} (image index in the run), {batch}, {pos} (position in its batch), %d or %03d (= {i}); without one,
    /// several images get -<i> before the extension. An existing file is refused unless --overwrite; default
    /// names instead number past existing files (sd-onnx-5-2.png).
    #[arg(short, long, value_name = "PATH", help_heading = OUTPUT)]
    pub output: Option<PathBuf>,
    /// Replace existing output files.
    #[arg(long, help_heading = OUTPUT)]
    pub overwrite: bool,
    /// No progress, notes or file names (errors and warnings still print).
    #[arg(short, long, help_heading = OUTPUT)]
    pub quiet: bool,
    /// Write where the time went (session creation, inside Session::run, ours) to this JSON file.
    #[arg(long, value_name = "PATH", help_heading = OUTPUT)]
    pub timings_json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct Img2ImgArgs {
    /// The starting image (PNG, JPEG or WebP); its size, rounded down to the VAE factor, unless --width/--height.
    #[arg(short, long, value_name = "PATH", help_heading = IMAGES)]
    pub init_image: PathBuf,
    /// Share of the schedule to run, in [0, 1]: 0 returns the image re-encoded, 1 ignores most of it
    /// (default: diffusers' img2img pipelines', 0.8, or 0.3 for SDXL).
    #[arg(long, allow_negative_numbers = true, help_heading = IMAGES)]
    pub strength: Option<f64>,
    #[command(flatten)]
    pub common: Txt2ImgArgs,
}

#[derive(Args, Debug)]
pub struct InpaintArgs {
    /// The image to repaint (PNG, JPEG or WebP).
    #[arg(short, long, value_name = "PATH", help_heading = IMAGES)]
    pub init_image: PathBuf,
    /// White = repaint, black = keep (converted to grayscale and binarised at 50%).
    #[arg(long, value_name = "PATH", help_heading = IMAGES)]
    pub mask: PathBuf,
    /// Share of the schedule to run (default: diffusers' inpainting pipelines', 1.0, or 0.9999 for SDXL).
    #[arg(long, allow_negative_numbers = true, help_heading = IMAGES)]
    pub strength: Option<f64>,
    #[command(flatten)]
    pub common: Txt2ImgArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Exported ONNX pipeline folder.
    #[arg(short, long, value_name = "DIR", required_unless_present = "providers")]
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

#[derive(Subcommand, Debug)]
pub enum LoraCommand {
    /// Show a LoRA file's format, base model, ranks and targets; with --model, which modules land in it.
    Inspect(LoraInspectArgs),
}

#[derive(Args, Debug)]
pub struct LoraInspectArgs {
    /// The LoRA file (.safetensors).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// An exported pipeline folder: show which keys match its graphs and which do not.
    #[arg(short, long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Machine-readable output (the report as JSON).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EmbeddingsArgs {
    /// Exported ONNX pipeline folder (its text encoders' widths decide what fits).
    #[arg(short, long, value_name = "DIR")]
    pub model: PathBuf,
    /// The folder of embeddings (.pt, .bin, .safetensors).
    #[arg(long, value_name = "DIR")]
    pub embeddings_dir: PathBuf,
    /// Machine-readable output: {"loaded": [{"name", "aliases", "vectors", "file"}], "refused": [{"file", "reason"}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Exported ONNX pipeline folder (its tokenizer).
    #[arg(short, long, value_name = "DIR")]
    pub model: PathBuf,
    /// Machine-readable output: {"ids", "tokens", "chunks": [{"ids", "tokens", "weights"}], "truncated"}.
    #[arg(long)]
    pub json: bool,
    /// a1111 (chunks of 75 with weights) or plain (77 ids, the rest cut), as for txt2img.
    #[arg(long, default_value = "a1111", value_name = "SYNTAX")]
    pub prompt_syntax: String,
    /// The prompt to tokenize.
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
