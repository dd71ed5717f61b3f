//! `txt2img`, `img2img`, `inpaint`: flags to an [`Intent`], the library resolves and runs it, then the
//! images are written and what happened is printed.

use super::args::Txt2ImgArgs;
use super::progress::Ui;
use super::{load_runtime, ms, parse_rng};
use sd_onnx::error::{Error, Result};
use sd_onnx::graphs::EncoderOutput;
use sd_onnx::images;
use sd_onnx::infotext;
use sd_onnx::model_hash::unet_hash;
use sd_onnx::output::{
    ImageSlot, OutputFormat, check_output_path, encode, output_paths, write_atomic,
};
use sd_onnx::pipeline::{BatchSeeds, InitIntent, Intent, MemoryMode, Pipeline, resolve};
use sd_onnx::profile::ModelProfile;
use sd_onnx::prompt::{Emphasis, PromptSyntax, TextOptions};
use sd_onnx::schedulers::{SchedulerKind, SigmaSpacing};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// img2img / inpaint inputs as given on the command line (`strength`: none given, the pipeline's default).
pub struct InitSpec {
    pub image: PathBuf,
    pub mask: Option<PathBuf>,
    pub strength: Option<f64>,
}

fn intent(a: &Txt2ImgArgs, init: Option<InitSpec>) -> Result<Intent> {
    let init = match init {
        None => None,
        Some(spec) => Some(InitIntent {
            image: images::read(&spec.image)?,
            image_name: spec.image.display().to_string(),
            mask: match &spec.mask {
                Some(m) => Some((images::read(m)?, m.display().to_string())),
                None => None,
            },
            strength: spec.strength,
        }),
    };
    // "DPM++ 2M Karras" (A1111's combined form) asks for Karras sigmas too.
    let named = a
        .scheduler
        .as_deref()
        .map(SchedulerKind::parse_name)
        .transpose()?;
    let flag = match &a.schedule {
        Some(name) => Some(SigmaSpacing::parse(name).ok_or_else(|| {
            Error::Usage(format!(
                "--schedule {name}: choose uniform, karras, exponential or beta"
            ))
        })?),
        None => None,
    };
    let mut asked = Vec::new();
    if let Some(s) = flag {
        asked.push(("--schedule", s));
    }
    if a.karras {
        asked.push(("--karras", SigmaSpacing::Karras));
    }
    if let Some(s) = named.and_then(|(_, s)| s) {
        asked.push(("--scheduler", s));
    }
    if let Some((w1, s1)) = asked.first()
        && let Some((w2, s2)) = asked.iter().find(|(_, s)| s != s1)
    {
        return Err(Error::Usage(format!(
            "{w1} asks for the {} schedule and {w2} for {}: give one",
            s1.name(),
            s2.name()
        )));
    }
    Ok(Intent {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        steps: a.steps,
        guidance: a.guidance,
        guidance_rescale: Some(a.guidance_rescale),
        scheduler: named.map(|(k, _)| k),
        schedule: asked.first().map(|(_, s)| *s),
        seed: a.seed.and_then(|s| s.0),
        seeds: if a.shared_generator {
            BatchSeeds::Shared
        } else {
            BatchSeeds::Consecutive
        },
        rng: parse_rng(&a.rng)?,
        width: a.width,
        height: a.height,
        batch: Some(a.batch_size),
        batch_count: Some(a.batch_count),
        init,
        text: TextOptions {
            syntax: PromptSyntax::parse(&a.prompt_syntax).ok_or_else(|| {
                Error::Usage(format!(
                    "--prompt-syntax {}: choose a1111 or plain",
                    a.prompt_syntax
                ))
            })?,
            emphasis: Emphasis::parse(&a.emphasis).ok_or_else(|| {
                Error::Usage(format!(
                    "--emphasis {}: choose original or no-norm",
                    a.emphasis
                ))
            })?,
            clip_skip: a.clip_skip,
        },
        prompt_embeds: None,
    })
}

pub fn generate(a: Txt2ImgArgs, init: Option<InitSpec>) -> Result<()> {
    let process_start = Instant::now();
    let show = !a.quiet && std::io::stderr().is_terminal();
    let mut ui = Ui::new(show);
    // Cheap checks first, before anything is loaded.
    if let Some(out) = &a.output {
        OutputFormat::from_path(out)?;
    }
    if let Some(t) = &a.timings_json {
        check_output_path(t, "--timings-json")?;
    }
    let intent = intent(&a, init)?;
    let profile = ModelProfile::load(&a.model)?;
    // Defaults, sizes, images and validation: before any graph is loaded. A schedule refused is blamed on the
    // flag that asked for it.
    let plan = resolve(&profile, intent).map_err(|e| match e {
        Error::Invalid {
            field: "schedule",
            msg,
        } if a.schedule.is_none() => {
            let rest = msg.split_once(' ').map_or(msg.as_str(), |(_, r)| r);
            match (&a.scheduler, a.karras) {
                (_, true) => Error::Usage(format!("--karras {rest}")),
                (Some(name), false) => Error::Usage(format!("--scheduler {name}: {msg}")),
                (None, false) => Error::Invalid {
                    field: "schedule",
                    msg,
                },
            }
        }
        other => other,
    })?;
    let req = plan.request.clone();
    // Embeddings are read (and refusals told) before anything is loaded.
    let embeddings = match &a.embeddings_dir {
        None => Vec::new(),
        Some(dir) => {
            let widths = sd_onnx::graphs::text_widths(&profile)?;
            let (loaded, refused) = sd_onnx::embeddings::load_dir(dir, &widths)?;
            for r in refused {
                eprintln!(
                    "warning: --embeddings-dir: {}: {}",
                    r.file.display(),
                    r.reason
                );
            }
            loaded
        }
    };
    // LoRA files too: --lora, then the prompt's tags from --lora-dir.
    let mut loras = Vec::new();
    for spec in &a.lora {
        let (path, w) = sd_onnx::lora::parse_spec(spec)?;
        let file = sd_onnx::lora::LoraFile::read(&path)?;
        loras.push(sd_onnx::lora::Active {
            file: std::sync::Arc::new(file),
            te: w,
            unet: w,
        });
    }
    for tag in req.lora_tags()? {
        let dir = a.lora_dir.as_deref().ok_or_else(|| {
            Error::Usage(format!(
                "the prompt's <lora:{}> needs --lora-dir (the folder its .safetensors file is in)",
                tag.name
            ))
        })?;
        let path = sd_onnx::lora::find(dir, &tag.name).map_err(|e| match e {
            Error::Invalid { msg, .. } => Error::Usage(format!("--lora-dir: {msg}")),
            other => other,
        })?;
        loras.push(sd_onnx::lora::Active {
            file: std::sync::Arc::new(sd_onnx::lora::LoraFile::read(&path)?),
            te: tag.te,
            unet: tag.unet,
        });
    }
    // Every file name, decided and checked before the run: nothing is clobbered, no run is wasted.
    let slots: Vec<ImageSlot> = (0..req.batch_count)
        .flat_map(|b| {
            req.seeds(b)
                .into_iter()
                .enumerate()
                .map(move |(pos, seed)| ImageSlot {
                    seed,
                    batch: b,
                    pos,
                })
        })
        .collect();
    let paths = output_paths(a.output.as_deref(), &slots, a.overwrite)?;
    for p in &paths {
        OutputFormat::from_path(p)?;
        check_output_path(p, "--output")?;
    }
    ui.stage("loading ONNX Runtime");
    let say = |ui: &Ui, line: String| {
        if !a.quiet {
            ui.bar_println(line);
        }
    };
    for n in &plan.notes {
        say(&ui, format!("note: {n}"));
    }
    let shapes =
        profile
            .family()
            .graph_shapes(&profile, req.width, req.height, req.batch, req.guidance);
    let t_ort = Instant::now();
    let runtime = load_runtime(&a.runtime, Some(&shapes), a.low_memory)?;
    let ort_setup = t_ort.elapsed();
    let what = format!("{}x{} batch {}", req.width, req.height, req.batch);
    if let Some(note) = runtime.config.engine_build_note(&what) {
        say(&ui, format!("note: {note}"));
    }
    ui.stage("hashing the UNet's weights (once per file; cached)");
    let model_hash = unet_hash(&profile, runtime.config.cache_dir.as_deref())?;
    let memory = if a.low_memory {
        MemoryMode::Low
    } else {
        MemoryMode::OneShot
    };
    ui.stage("creating sessions");
    let t_sessions = Instant::now();
    let mut pipeline = Pipeline::with_memory(&runtime, profile, memory)?;
    if !embeddings.is_empty() {
        pipeline.set_embeddings(&embeddings)?;
    }
    if !loras.is_empty() {
        for w in pipeline.set_loras(&loras)? {
            eprintln!("warning: {w}");
        }
    }
    let texts = infotext::for_run(&pipeline, &req, Some(&model_hash))?;
    let session_creation = t_sessions.elapsed();
    if a.seed.and_then(|s| s.0).is_none() {
        say(&ui, format!("seed: {}", req.seed));
    }
    let result = pipeline.run(plan, &mut |p| ui.on(p));
    let generated = match result {
        Ok(g) => g,
        Err(e) => {
            ui.finish(false, 0);
            return Err(e);
        }
    };
    let summary = ui.finish(!a.quiet, generated.timings.unet.len());
    if pipeline.encoder_output() == Some(EncoderOutput::Sample) && req.init.is_some() && !a.quiet {
        eprintln!(
            "note: this export samples its VAE latents inside the graph (`latent_sample`); the result cannot be reproduced exactly"
        );
    }
    for w in generated.warnings.iter().chain(&runtime.take_warnings()) {
        eprintln!("warning: {w}");
    }
    // All or nothing: every image is encoded first, and if one cannot be written, the ones written before it
    // are removed again. Names were checked before the run; one that appeared meanwhile is not clobbered.
    let mut files = Vec::with_capacity(generated.images.len());
    for ((img, path), text) in generated.images.iter().zip(&paths).zip(&texts) {
        files.push((encode(img, OutputFormat::from_path(path)?, text)?, path));
    }
    for (i, (bytes, path)) in files.iter().enumerate() {
        let appeared = !a.overwrite && std::fs::metadata(path).is_ok_and(|m| m.is_file());
        let written = if appeared {
            Err(Error::Usage(format!(
                "--output {}: appeared during the run; not replaced (pass --overwrite)",
                path.display()
            )))
        } else {
            write_atomic(path, bytes)
        };
        if let Err(e) = written {
            for (_, done) in &files[..i] {
                let _ = std::fs::remove_file(done);
            }
            return Err(e);
        }
    }
    if !a.quiet {
        for (_, path) in &files {
            println!("{}", path.display());
        }
    }
    if let Some(line) = summary {
        eprintln!("{line}");
    }
    if let Some(path) = &a.timings_json {
        let t = &generated.timings;
        let wall = process_start.elapsed();
        // Inside ONNX Runtime's Session::run (input/output copies into ORT tensors included): text encoder,
        // every UNet call, VAE decode (+ encode for img2img, counted in `text`/`decode` phases' neighbours).
        let in_run = t.text + t.unet.iter().sum::<Duration>() + t.decode;
        // Sessions are created when first needed, inside the run: counted as creation, not as ours.
        let session_creation = session_creation + t.sessions;
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
        write_atomic(path, report.to_string().as_bytes())?;
    }
    Ok(())
}
