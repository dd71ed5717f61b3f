//! `txt2img`, `img2img`, `inpaint`: flags to an [`Intent`], the library resolves and runs it, then the
//! images are written and what happened is printed.

use super::args::Txt2ImgArgs;
use super::{load_runtime, ms, parse_rng};
use sd_onnx::error::Result;
use sd_onnx::graphs::EncoderOutput;
use sd_onnx::images;
use sd_onnx::output::{OutputFormat, a1111_parameters, check_output_path, encode, write_atomic};
use sd_onnx::pipeline::{InitIntent, Intent, MemoryMode, Pipeline, Progress, resolve};
use sd_onnx::profile::ModelProfile;
use sd_onnx::schedulers::SchedulerKind;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// img2img / inpaint inputs as given on the command line (`strength`: none given, the pipeline's default).
pub struct InitSpec {
    pub image: PathBuf,
    pub mask: Option<PathBuf>,
    pub strength: Option<f64>,
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
    Ok(Intent {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        steps: a.steps,
        guidance: a.guidance,
        guidance_rescale: Some(a.guidance_rescale),
        scheduler: named.map(|(k, _)| k),
        karras: a.karras || named.is_some_and(|(_, karras)| karras),
        seed: a.seed.and_then(|s| s.0),
        rng: parse_rng(&a.rng)?,
        width: a.width,
        height: a.height,
        batch: Some(a.batch),
        init,
        prompt_embeds: None,
    })
}

fn progress_bar(show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
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
}

pub fn generate(a: Txt2ImgArgs, init: Option<InitSpec>) -> Result<()> {
    let process_start = Instant::now();
    // Cheap checks first, before anything is loaded: every output must be writable where it is asked for.
    if let Some(out) = &a.output {
        OutputFormat::from_path(out)?;
        for i in 0..a.batch.min(sd_onnx::pipeline::limits::MAX_BATCH) {
            check_output_path(&batch_path(out, i, a.batch), "--output")?;
        }
    }
    if let Some(t) = &a.timings_json {
        check_output_path(t, "--timings-json")?;
    }
    let intent = intent(&a, init)?;
    let profile = ModelProfile::load(&a.model)?;
    // Defaults, sizes, images and validation: before any graph is loaded.
    let plan = resolve(&profile, intent)?;
    for n in &plan.notes {
        eprintln!("note: {n}");
    }
    let req = &plan.request;
    let shapes =
        profile
            .family()
            .graph_shapes(&profile, req.width, req.height, req.batch, req.guidance);
    let t_ort = Instant::now();
    let runtime = load_runtime(&a.runtime, Some(&shapes), a.low_memory)?;
    let ort_setup = t_ort.elapsed();
    let what = format!("{}x{} batch {}", req.width, req.height, req.batch);
    if let Some(note) = runtime.config.engine_build_note(&what).filter(|_| !a.quiet) {
        eprintln!("note: {note}");
    }
    let model_name = profile.name();
    let memory = if a.low_memory {
        MemoryMode::Low
    } else {
        MemoryMode::OneShot
    };
    let t_sessions = Instant::now();
    let mut pipeline = Pipeline::with_memory(&runtime, profile, memory)?;
    let session_creation = t_sessions.elapsed();
    let bar = progress_bar(!a.quiet && std::io::stderr().is_terminal());
    let (seed, batch) = (req.seed, req.batch);
    if a.seed.and_then(|s| s.0).is_none() && !a.quiet {
        eprintln!("seed: {seed}");
    }
    let params = a1111_parameters(req, seed, &model_name);
    let is_init = req.init.is_some();
    let result = pipeline.run(plan, &mut |p| match p {
        Progress::Step { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        Progress::Decoding => bar.set_message("decoding"),
    });
    bar.finish_and_clear();
    let generated = result?;
    if pipeline.encoder_output() == Some(EncoderOutput::Sample) && is_init && !a.quiet {
        eprintln!(
            "note: this export samples its VAE latents inside the graph (`latent_sample`); the result cannot be reproduced exactly"
        );
    }
    for w in generated.warnings.iter().chain(&runtime.take_warnings()) {
        eprintln!("warning: {w}");
    }
    let base = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("sd-onnx-{seed}.png")));
    // A batch is all or nothing: every image is encoded first, and if one cannot be written, the ones written
    // before it are removed again.
    let mut files = Vec::with_capacity(generated.images.len());
    for (i, img) in generated.images.iter().enumerate() {
        let path = batch_path(&base, i, batch);
        files.push((encode(img, OutputFormat::from_path(&path)?, &params)?, path));
    }
    for (i, (bytes, path)) in files.iter().enumerate() {
        if let Err(e) = write_atomic(path, bytes) {
            for (_, written) in &files[..i] {
                let _ = std::fs::remove_file(written);
            }
            return Err(e);
        }
    }
    if !a.quiet {
        for (_, path) in &files {
            println!("{}", path.display());
        }
    }
    if let Some(path) = &a.timings_json {
        let t = &generated.timings;
        let wall = process_start.elapsed();
        // Inside ONNX Runtime's Session::run (input/output copies into ORT tensors included): text encoder,
        // every UNet call, VAE decode (+ encode for img2img, counted in `text`/`decode` phases' neighbours).
        let in_run = t.text + t.unet.iter().sum::<Duration>() + t.decode;
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
