//! `inspect`: the library's diagnosis of a folder ([`sd_onnx::inspect`]), printed; and `--providers`.

use super::args::InspectArgs;
use super::load_runtime;
use sd_onnx::error::Result;
use sd_onnx::profile::ModelProfile;
use sd_onnx::runtime::{Runtime, RuntimeConfig};

pub fn inspect(a: InspectArgs) -> Result<()> {
    if a.providers {
        return providers(&a);
    }
    let profile = ModelProfile::load(&a.model.clone().unwrap_or_default())?;
    let runtime = load_runtime(&a.runtime, None, false);
    let r = sd_onnx::inspect::inspect(profile, runtime);
    let report = r.to_json();
    let profile = &r.profile;
    let family = r.family;
    let problems = &r.problems;
    let pad_id = r.pad.as_ref().map(|p| p.1);
    let components = report["components"].as_array().cloned().unwrap_or_default();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return verdict(&r);
    }
    println!("model:      {}", profile.dir.display());
    println!("layout:     {}", profile.layout.describe());
    println!("family:     {family}");
    if let Some(rt) = &r.runtime {
        println!(
            "runtime:    ONNX Runtime {} ({}, {})",
            rt.version,
            rt.library.path.display(),
            rt.library.source
        );
    }
    for c in &components {
        println!("{}:", c["name"].as_str().unwrap_or(""));
        println!("  graph: {}", c["graph"].as_str().unwrap_or(""));
        for f in c["external_data"].as_array().into_iter().flatten() {
            println!("  external data: {}", f.as_str().unwrap_or(""));
        }
        if let Some(q) = c["quantization"].as_str() {
            println!("  weights: {q}");
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
        for p in problems {
            println!("  - {p}");
        }
    }
    verdict(&r)
}

/// Exit 2 for a folder nothing can be generated from (the problems say why; this line says so).
fn verdict(r: &sd_onnx::inspect::Report) -> Result<()> {
    if r.unusable {
        return Err(sd_onnx::Error::Model {
            path: r.profile.dir.clone(),
            msg: "cannot be run as it is: see the problems listed above".into(),
        });
    }
    Ok(())
}

/// `inspect --providers`: what the loaded library offers.
fn providers(a: &InspectArgs) -> Result<()> {
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
    Ok(())
}
