//! The command line: what each subcommand asks of the library, and printing. It holds no model knowledge: it
//! turns flags into an [`sd_onnx::pipeline::Intent`] and runtime settings, and maps the library's field
//! errors back to flag names.

mod args;
mod bench;
mod config;
mod generate;
mod inspect;
mod progress;
mod serve;

pub use args::Cli;
use args::{Command, RuntimeArgs};
pub use config::argv;
use sd_onnx::error::{Error, Result};
use sd_onnx::pipeline::family::GraphShapes;
use sd_onnx::profile::ModelProfile;
use sd_onnx::prompt::PromptSyntax;
use sd_onnx::prompt::chunk::Chunk;
use sd_onnx::rng::RngKind;
use sd_onnx::runtime::{ProviderSettings, Runtime, RuntimeConfig};
use sd_onnx::schedulers::SchedulerKind;
use sd_onnx::tokenizer::ClipTokenizer;

/// clap's error on one line (its message and what it lists, without the usage block and the tip), so that a
/// usage error reads like every other error.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    parts.join(" ")
}

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
        Command::Embeddings(a) => embeddings(a),
        Command::Lora {
            command: args::LoraCommand::Inspect(a),
        } => lora_inspect(a),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve::serve(a),
        Command::Schedulers => {
            schedulers();
            Ok(())
        }
    };
    result.map_err(as_flags)
}

/// `sd-onnx schedulers`: one line each (name, diffusers class, schedules, the other names it takes).
fn schedulers() {
    let rows: Vec<[String; 4]> = SchedulerKind::all()
        .map(|(kind, name, about)| {
            let schedules: Vec<&str> = kind.schedules().iter().map(|s| s.name()).collect();
            let aliases: Vec<String> = kind
                .aliases()
                .iter()
                .map(|a| {
                    if a.contains(' ') {
                        format!("\"{a}\"")
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            [
                name.to_string(),
                kind.class_name().to_string(),
                if schedules.is_empty() {
                    "-".into()
                } else {
                    schedules.join(",")
                },
                format!(
                    "{about}{}",
                    if aliases.is_empty() {
                        String::new()
                    } else {
                        format!(" (also {})", aliases.join(", "))
                    }
                ),
            ]
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2).max("schedules".len()));
    println!(
        "{:<w0$}  {:<w1$}  {:<w2$}  about",
        "name", "diffusers class", "schedules"
    );
    for r in &rows {
        println!("{:<w0$}  {:<w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3]);
    }
    // On stderr: stdout stays a table for scripts.
    eprintln!(
        "\nNames are taken in any case, ignoring spaces, '_', '-' and '.'; also k_-prefixed, diffusers' class names, \
         and A1111's \"NAME Karras\" / \"NAME Exponential\" (= --schedule karras / exponential)."
    );
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
    config.fuse_attention = !a.no_fused_attention;
    config.memory_check =
        std::env::var_os("SD_ONNX_NO_MEMORY_CHECK").is_none_or(|v| v.is_empty() || v == "0");
    Runtime::load_with(a.ort_lib.as_deref(), config)
}

fn lora_inspect(a: args::LoraInspectArgs) -> Result<()> {
    use sd_onnx::lora::{LoraFile, graph};
    let file = std::sync::Arc::new(LoraFile::read(&a.file)?);
    let report = match &a.model {
        Some(m) => {
            let profile = ModelProfile::load(m)?;
            graph::report_for(&file, &graph::model_sites(&profile)?, &profile.dir)
        }
        None => file.report(),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::Usage(e.to_string()))?
        );
        return Ok(());
    }
    let join = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("{} ({})", report.name, report.file);
    println!(
        "  format      {} ({})",
        join(&report.kinds),
        report.convention
    );
    println!(
        "  base model  {}",
        report.base_model.as_deref().unwrap_or("not recorded")
    );
    let ranks: Vec<String> = report.ranks.iter().map(|r| r.to_string()).collect();
    let alphas: Vec<String> = report.alphas.iter().map(|r| r.to_string()).collect();
    println!(
        "  rank        {}   alpha {}",
        if ranks.is_empty() {
            "-".into()
        } else {
            ranks.join(", ")
        },
        if alphas.is_empty() {
            "none (= rank)".into()
        } else {
            alphas.join(", ")
        }
    );
    println!("  modules     {}", join(&report.targets));
    println!("  layers      {}", join(&report.layers));
    println!("  hash        {} (Lora hashes)", report.hash);
    if let (Some(matched), Some(unmatched)) = (&report.matched, &report.unmatched) {
        let total: usize = report.targets.values().sum();
        println!(
            "  on {}: {} of {total} modules match ({}); {} do not",
            a.model
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display(),
            matched.values().sum::<usize>(),
            join(matched),
            unmatched.len()
        );
        for k in unmatched.iter().take(8) {
            println!("    unmatched: {k}");
        }
        if unmatched.len() > 8 {
            println!("    ... and {} more", unmatched.len() - 8);
        }
        if let Some(why) = &report.refused {
            println!("  refused: {why}");
        }
    }
    Ok(())
}

fn embeddings(a: args::EmbeddingsArgs) -> Result<()> {
    let profile = ModelProfile::load(&a.model)?;
    let widths = sd_onnx::graphs::text_widths(&profile)?;
    let (loaded, refused) = sd_onnx::embeddings::load_dir(&a.embeddings_dir, &widths)?;
    if a.json {
        let loaded: Vec<_> = loaded
            .iter()
            .map(|e| {
                serde_json::json!({"name": e.name, "aliases": e.aliases, "vectors": e.len(),
                                   "file": e.file.display().to_string()})
            })
            .collect();
        let refused: Vec<_> = refused
            .iter()
            .map(|r| serde_json::json!({"file": r.file.display().to_string(), "reason": r.reason}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"loaded": loaded, "refused": refused})
        );
        return Ok(());
    }
    let widths: Vec<String> = widths.iter().map(|w| w.to_string()).collect();
    println!(
        "{} embedding(s) for {} (text encoder width {}):",
        loaded.len(),
        profile.name(),
        widths.join(" + ")
    );
    for e in &loaded {
        let also = if e.aliases.is_empty() {
            String::new()
        } else {
            format!(" (also {})", e.aliases.join(", "))
        };
        println!(
            "  {:<24} {:>2} vector(s)  {}{also}",
            e.name,
            e.len(),
            e.file.display()
        );
    }
    if !refused.is_empty() {
        println!("not loaded:");
        for r in &refused {
            println!("  {}: {}", r.file.display(), r.reason);
        }
    }
    Ok(())
}

fn tokenize(a: args::TokenizeArgs) -> Result<()> {
    let profile = ModelProfile::load(&a.model)?;
    let tok = ClipTokenizer::from_dir(&profile.tokenizer_dir)?;
    let syntax = PromptSyntax::parse(&a.prompt_syntax).ok_or_else(|| {
        Error::Usage(format!(
            "--prompt-syntax {}: choose a1111 or plain",
            a.prompt_syntax
        ))
    })?;
    // What the text encoder receives: 77-id chunks with each id's weight (plain: one chunk, the rest cut).
    let (chunks, truncated) = match syntax {
        PromptSyntax::A1111 => (
            sd_onnx::prompt::chunks(&tok, &a.text, &Default::default())?,
            None,
        ),
        PromptSyntax::Plain => {
            let enc = tok.encode(&a.text)?;
            let weights = vec![1.0; enc.ids.len()];
            (
                vec![Chunk {
                    ids: enc.ids,
                    weights,
                }],
                enc.truncated,
            )
        }
    };
    let name = |i: i64| tok.token(i).unwrap_or("?");
    if a.json {
        let ids: Vec<i64> = chunks.iter().flat_map(|c| c.ids.clone()).collect();
        let tokens: Vec<&str> = ids.iter().map(|&i| name(i)).collect();
        let per_chunk: Vec<_> = chunks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "ids": c.ids,
                    "tokens": c.ids.iter().map(|&i| name(i)).collect::<Vec<_>>(),
                    "weights": c.weights,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"ids": ids, "tokens": tokens, "chunks": per_chunk, "truncated": truncated})
        );
        return Ok(());
    }
    // Per chunk, one line per token up to the end token (with its weight where it is not 1), then the
    // padding counted; A1111 shows the count as "N/75".
    let mut used_total = 0;
    for (n, c) in chunks.iter().enumerate() {
        if chunks.len() > 1 {
            println!("chunk {}/{}", n + 1, chunks.len());
        }
        let used = c.ids[1..]
            .iter()
            .position(|&i| i == tok.eos())
            .unwrap_or(c.ids.len() - 2);
        used_total += used;
        for (id, w) in c.ids.iter().zip(&c.weights).take(used + 2) {
            if *w == 1.0 {
                println!("{id:>6}  {}", name(*id));
            } else {
                println!("{id:>6}  {:<24} x{w:.3}", name(*id));
            }
        }
        let pad = c.ids.len() - used - 2;
        println!(
            "{:>6}  {} x {pad} (padding to 77)",
            c.ids[c.ids.len() - 1],
            name(c.ids[c.ids.len() - 1])
        );
    }
    eprintln!("{used_total}/{} tokens", 75 * chunks.len());
    if let Some(cut) = truncated {
        eprintln!("warning: longer than 75 tokens; cut: \"{cut}\"");
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
