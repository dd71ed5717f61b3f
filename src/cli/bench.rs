//! `bench`: where the time goes, measured side by side in one process (figures, not assertions).

use super::args::BenchArgs;
use super::{load_runtime, ms, parse_rng};
use sd_onnx::error::{Error, Result};
use sd_onnx::pipeline::{BatchSeeds, MemoryMode, Pipeline, Request};
use sd_onnx::profile::ModelProfile;
use sd_onnx::schedulers::SchedulerKind;

pub fn bench(a: BenchArgs) -> Result<()> {
    use sd_onnx::bench::{median, peak_rss_bytes, quantile, scheduler_steps};
    use std::time::Instant;
    if a.runs == 0 {
        return Err(Error::Usage("--runs must be at least 1".into()));
    }
    let start = Instant::now();
    let profile = ModelProfile::load(&a.model)?;
    let scheduler = match a.scheduler.as_deref() {
        Some(n) => SchedulerKind::parse_name(n)?.0,
        None => profile.default_scheduler.unwrap_or(SchedulerKind::Pndm),
    };
    let (dw, dh) = profile.default_size();
    let req = Request {
        prompt: a.prompt.clone(),
        negative_prompt: None,
        steps: a.steps,
        guidance: a.guidance,
        guidance_rescale: 0.0,
        scheduler,
        schedule: None,
        seed: 0,
        seeds: BatchSeeds::Consecutive,
        rng: parse_rng(&a.rng)?,
        width: a.width.unwrap_or(dw),
        height: a.height.unwrap_or(dh),
        batch: 1,
        batch_count: 1,
        init: None,
        text: Default::default(),
        prompt_embeds: None,
    };
    // Fail on a bad size or scheduler before anything is loaded.
    let req = req.plan(&profile)?.request;
    let config = profile.scheduler_config.clone();
    let shapes = profile
        .family()
        .graph_shapes(&profile, req.width, req.height, 1, req.guidance);
    let runtime = load_runtime(&a.runtime, Some(&shapes), false)?;
    let t_load = Instant::now();
    let memory = if a.low_memory {
        MemoryMode::Low
    } else {
        MemoryMode::KeepAll
    };
    let mut loras = Vec::new();
    for spec in &a.lora {
        let (path, w) = sd_onnx::lora::parse_spec(spec)?;
        loras.push(sd_onnx::lora::Active {
            file: std::sync::Arc::new(sd_onnx::lora::LoraFile::read(&path)?),
            te: w,
            unet: w,
        });
    }
    let (mut pipeline, lora_warnings) = Pipeline::with_loras(&runtime, profile, memory, &loras)?;
    let session_creation = t_load.elapsed();
    for w in lora_warnings {
        eprintln!("warning: {w}");
    }
    let first_image = start.elapsed();
    // One warm-up run, then the timed ones.
    pipeline.generate(&req, &mut |_| {})?;
    let mut bound_calls = 0usize;
    let mut capture = sd_onnx::runtime::GraphCapture::Off;
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
    let chunks = sd_onnx::prompt::chunks(pipeline.tokenizer(), &req.prompt, &Default::default())
        .map_or(0, |c| c.len());
    let capture_text = capture.to_string();
    let report = serde_json::json!({
        "model": a.model, "scheduler": scheduler.name(), "rng": req.rng.name(), "steps": a.steps, "size": [req.width, req.height],
        "runs": a.runs, "ort_version": runtime.version, "threads": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "session_creation_ms": ms(session_creation),
        "loras": a.lora,
        "first_load_ms": ms(first_image),
        "text_encoding_ms": ms(median(&text)),
        "prompt_chunks": chunks,
        "text_encoding_share_of_run_pct": 100.0 * median(&text).as_secs_f64() / median(&total).as_secs_f64().max(1e-12),
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
    print_text(&report);
    Ok(())
}

/// The report as a table.
fn print_text(r: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let dims = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x")
            })
            .unwrap_or_default()
    };
    println!(
        "model {} | {} {} steps, --rng {} | {} | {} runs | ONNX Runtime {}",
        r["model"].as_str().unwrap_or(""),
        r["scheduler"].as_str().unwrap_or(""),
        r["steps"],
        r["rng"].as_str().unwrap_or(""),
        dims(&r["size"]),
        r["runs"],
        r["ort_version"].as_str().unwrap_or("")
    );
    println!(
        "session creation      {:>10.1} ms",
        f(&r["session_creation_ms"])
    );
    println!(
        "UNet calls            {:>10} ({} IO-bound; CUDA graph: {})",
        r["unet_calls"],
        r["unet_calls_io_bound"],
        r["unet_graph_capture"].as_str().unwrap_or("")
    );
    println!(
        "text encoding         {:>10.2} ms ({} chunk(s) of 75 tokens; {:.2}% of a run)",
        f(&r["text_encoding_ms"]),
        r["prompt_chunks"],
        f(&r["text_encoding_share_of_run_pct"])
    );
    println!(
        "UNet per step         {:>10.2} ms median, {:.2} p90",
        f(&r["unet_step_ms"]["median"]),
        f(&r["unet_step_ms"]["p90"])
    );
    println!(
        "UNet host I/O per step{:>10.3} ms median ({:.2}% of a UNet step; latents in, output out)",
        f(&r["unet_host_io_ms"]["median"]),
        f(&r["unet_host_io_ms"]["share_of_unet_pct"])
    );
    println!(
        "scheduler per step    {:>10.3} ms median ({:.3}% of a UNet step)",
        f(&r["scheduler_step_ms"]["median"]),
        f(&r["scheduler_step_ms"]["share_of_unet_pct"])
    );
    println!(
        "guidance/host per step{:>10.3} ms median",
        f(&r["guidance_host_ms"]["median"])
    );
    println!("VAE decode            {:>10.2} ms", f(&r["vae_decode_ms"]));
    println!(
        "end to end (loaded)   {:>10.1} ms median",
        f(&r["end_to_end_ms"]["median"])
    );
    if let Some(mib) = r["peak_rss_mib"].as_f64() {
        println!("peak RSS              {mib:>10.1} MiB");
    }
    let micro = &r["scheduler_micro"];
    println!(
        "scheduler step (scale_model_input + step), median over a {}-step schedule:",
        r["steps"]
    );
    println!(
        "  {:<12} {:>12} {:>14}",
        "scheduler",
        dims(&micro["shape_run"]),
        "1x4x128x128"
    );
    for row in micro["per_scheduler_ms"].as_array().into_iter().flatten() {
        println!(
            "  {:<12} {:>9.3} ms {:>11.3} ms",
            row["scheduler"].as_str().unwrap_or(""),
            f(&row["run_shape"]),
            f(&row["1x4x128x128"])
        );
    }
}
