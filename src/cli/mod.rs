//! The command line: what each subcommand asks of the library, and printing. It holds no model knowledge: it
//! turns flags into an [`sd_onnx::pipeline::Intent`] and runtime settings, and maps the library's field
//! errors back to flag names.

mod args;
mod bench;
mod generate;
mod inspect;

pub use args::Cli;
use args::{Command, RuntimeArgs};
use sd_onnx::error::{Error, Result};
use sd_onnx::pipeline::family::GraphShapes;
use sd_onnx::profile::ModelProfile;
use sd_onnx::rng::RngKind;
use sd_onnx::runtime::{ProviderSettings, Runtime, RuntimeConfig};
use sd_onnx::schedulers::SchedulerKind;
use sd_onnx::tokenizer::ClipTokenizer;

/// Run one subcommand.
pub fn run(cli: Cli) -> Result<()> {
    let result = match cli.command {
        Command::Txt2img(a) => generate::generate(a, None),
        Command::Img2img(a) => generate::generate(
            a.common,
            Some(generate::InitSpec {
                image: a.init_image,
                mask: None,
                strength: a.strength,
            }),
        ),
        Command::Inpaint(a) => generate::generate(
            a.common,
            Some(generate::InitSpec {
                image: a.init_image,
                mask: Some(a.mask),
                strength: a.strength,
            }),
        ),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Tokenize(a) => tokenize(a),
        Command::Bench(a) => bench::bench(a),
        Command::Schedulers => {
            for (kind, name, about) in SchedulerKind::all() {
                println!("{name:<12} {:<33} {about}", kind.class_name());
            }
            // On stderr: stdout stays one scheduler per line for scripts.
            eprintln!(
                "\nAlso accepted, in any case: A1111's names (PLMS, Euler a, DPM++ 2M, DPM++ 2M SDE, DPM2 a, ...), \
                 the k_ aliases (k_euler_a, k_dpmpp_2m, ...), sd.cpp's (euler_a, dpm2, ...), and NAME Karras."
            );
            Ok(())
        }
    };
    result.map_err(as_flags)
}

/// The library names request fields (`width`, `guidance_rescale`); on the command line they are flags.
fn as_flags(e: Error) -> Error {
    match e {
        Error::Invalid { field, msg } => {
            Error::Usage(format!("--{} {msg}", field.replace('_', "-")))
        }
        other => other,
    }
}

/// The runtime the flags describe, with TensorRT profiles for `shapes` when given.
fn load_runtime(
    a: &RuntimeArgs,
    shapes: Option<&GraphShapes>,
    low_memory: bool,
) -> Result<Runtime> {
    let settings = ProviderSettings {
        ep: a.ep.clone(),
        device_id: a.device_id,
        ep_options: a.ep_option.clone(),
        component_eps: a.component_ep.clone(),
        trt_fp16: a.trt_fp16,
        cuda_graph: a.cuda_graph,
    };
    let mut config = RuntimeConfig::from_settings(&settings, shapes)?;
    if a.cache_dir.is_some() {
        config.cache_dir = a.cache_dir.clone();
    }
    config.graph_cache = !a.no_graph_cache;
    config.threads = a.threads;
    config.low_memory = low_memory;
    Runtime::load_with(a.ort_lib.as_deref(), config)
}

fn tokenize(a: args::TokenizeArgs) -> Result<()> {
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
