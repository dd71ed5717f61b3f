//! txt2img on both bundled layouts against diffusers' PyTorch `StableDiffusionPipeline` references
//! (tests/fixtures/txt2img, written by scripts/make_fixtures.py): every case, every image.
//!
//! Tolerances: images mean |diff| <= 1.0 and max <= 8 levels of 255 (the bar), and the final
//! latents (before the VAE) within 2e-3 absolute of diffusers', which is what tells one scheduler from
//! another on these tiny models. onnx/sd-tiny-fp16 (fp16 graphs, int64 timestep) is held to the same image
//! bar against the same float32 references, latents within 1.0. Needs ORT_DYLIB_PATH (scripts/test sets it).

use sd_onnx::images::load_image;
use sd_onnx::pipeline::{BatchSeeds, Init, Pipeline, Request};
use sd_onnx::profile::ModelProfile;
use sd_onnx::rng::RngKind;
use sd_onnx::schedulers::{SchedulerKind, SigmaSpacing};
use serde_json::Value;
use std::path::Path;

mod common;
use common::{compare, copy_dir, load_cases, runtime};

fn request(case: &Value) -> Request {
    Request {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance: case["guidance"].as_f64().unwrap() as f32,
        guidance_rescale: case["guidance_rescale"].as_f64().unwrap_or(0.0) as f32,
        scheduler: SchedulerKind::from_name(case["scheduler"].as_str().unwrap()).unwrap(),
        schedule: case["karras"]
            .as_bool()
            .unwrap()
            .then_some(SigmaSpacing::Karras),
        seed: case["seed"].as_u64().unwrap(),
        // diffusers' references draw a batch from one generator.
        seeds: BatchSeeds::Shared,
        rng: RngKind::parse(case["rng"].as_str().unwrap()).unwrap(),
        width: case["width"].as_u64().unwrap() as usize,
        height: case["height"].as_u64().unwrap() as usize,
        batch: case["batch"].as_u64().unwrap() as usize,
        batch_count: 1,
        init: None,
        text: Default::default(),
        prompt_embeds: None,
    }
}

/// fp16 graphs against float32 diffusers: measured up to 0.31, and 0.62 for LCM (which re-noises from its
/// x0 estimate every step, amplifying fp16 rounding); images stay within 2 levels.
const FP16_LATENT_TOL: f32 = 1.0;

#[test]
fn txt2img_matches_diffusers_on_every_layout() {
    let refs = Path::new("tests/fixtures/txt2img");
    let doc = load_cases(refs);
    let runtime = runtime();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut reused = 0;
    // (folder, latent tolerance): the fp16 folder (scripts/make_fp16_fixture.py: fp16 inputs/outputs, int64
    // timestep, model.onnx_data) is held to the same image bar; its latents carry fp16 rounding.
    for (layout, lat_tol) in [
        ("onnx/sd-tiny-convert", 2e-3f32),
        ("onnx/sd-tiny-optimum", 2e-3),
        ("onnx/sd-tiny-fp16", FP16_LATENT_TOL),
    ] {
        let mut pipe =
            Pipeline::load(&runtime, ModelProfile::load(Path::new(layout)).unwrap()).unwrap();
        for case in doc["cases"].as_array().unwrap() {
            let name = format!("{layout} {}", case["name"].as_str().unwrap());
            let out = pipe.generate(&request(case), &mut |_| {}).unwrap();
            // Every UNet call went through the IO binding (context bound once, buffers reused).
            assert_eq!(
                out.timings.bound_unet_calls,
                out.timings.unet.len(),
                "{name}: unbound UNet calls"
            );
            // A later case with the same shapes keeps the bound buffers and only refills the context (what a
            // captured CUDA graph needs); its parity below shows the refill is right.
            reused += out.timings.unet_buffers_reused as usize;
            compare(&out, refs, case, &name, lat_tol, &mut report, &mut failures);
        }
    }
    println!("{}", report.join("\n"));
    println!("generations that reused the UNet's bound buffers: {reused}");
    assert!(reused > 0, "no generation reused the UNet's bound buffers");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A guidance-distilled (LCM) UNet, `timestep_cond` input, against diffusers' LatentConsistencyModelPipeline and
/// LatentConsistencyModelImg2ImgPipeline (tests/fixtures/lcm, scripts/make_lcm_fixture.py): the guidance scale
/// enters as an embedding, one UNet pass per step. Same bar as above.
#[test]
fn guidance_distilled_unet_matches_diffusers_lcm_pipeline() {
    let refs = Path::new("tests/fixtures/lcm");
    let doc = load_cases(refs);
    let runtime = runtime();
    let profile = ModelProfile::load(Path::new("onnx/sd-tiny-lcm-optimum")).unwrap();
    assert_eq!(
        profile.guidance_embedding.as_ref().map(|g| g.value),
        Some(8)
    );
    let mut pipe = Pipeline::load(&runtime, profile).unwrap();
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for case in doc["cases"].as_array().unwrap() {
        let name = format!("lcm {}", case["name"].as_str().unwrap());
        let mut req = request(case);
        if let Some(image) = case["image"].as_str() {
            let path = Path::new("tests/fixtures/images").join(image);
            req.init = Some(Init {
                image: load_image(&path, req.width, req.height).unwrap(),
                mask: None,
                strength: case["strength"].as_f64().unwrap(),
            });
        }
        let out = pipe.generate(&req, &mut |_| {}).unwrap();
        // One UNet pass per step (no unconditional half), all of them bound; for img2img too, since the
        // strength shapes LCMScheduler's timesteps instead of skipping some
        // (LatentConsistencyModelImg2ImgPipeline).
        assert_eq!(
            out.timings.unet.len(),
            case["steps"].as_u64().unwrap() as usize
        );
        assert_eq!(out.timings.bound_unet_calls, out.timings.unet.len());
        compare(&out, refs, case, &name, 2e-3, &mut report, &mut failures);
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// SD 2.x-style schedules on the bundled weights (tests/fixtures/vpred, scripts/make_vpred_fixture.py): a copy
/// of onnx/sd-tiny-optimum whose scheduler_config.json says v-prediction (DDIM as SD 2.1 ships it, DDIM with
/// zero terminal SNR and trailing spacing, Euler, DPM-Solver++ with Karras sigmas), against diffusers'
/// StableDiffusionPipeline with the same config. The prediction type flows from the folder, never a flag.
#[test]
fn v_prediction_folders_match_diffusers() {
    let refs = Path::new("tests/fixtures/vpred");
    let doc = load_cases(refs);
    let runtime = runtime();
    let dir = std::env::temp_dir().join(format!("sdonnx-vpred-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(Path::new(doc["model"].as_str().unwrap()), &dir);
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for case in doc["cases"].as_array().unwrap() {
        let name = format!("vpred {}", case["name"].as_str().unwrap());
        std::fs::write(
            dir.join("scheduler/scheduler_config.json"),
            case["config"].to_string(),
        )
        .unwrap();
        let profile = ModelProfile::load(&dir).unwrap();
        assert_eq!(profile.prediction_type, "v_prediction");
        let req = request(case);
        assert_eq!(profile.default_scheduler, Some(req.scheduler), "{name}");
        let mut pipe = Pipeline::load(&runtime, profile).unwrap();
        let out = pipe.generate(&req, &mut |_| {}).unwrap();
        compare(&out, refs, case, &name, 2e-3, &mut report, &mut failures);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every case of a reference folder whose manifest names the model, on one pipeline; `check` sees each request
/// first. All UNet calls must go through the IO binding.
fn run_reference_folder(refs: &Path, label: &str, check: &dyn Fn(&ModelProfile, &Request)) {
    let doc = load_cases(refs);
    let runtime = runtime();
    let profile = ModelProfile::load(Path::new(doc["model"].as_str().unwrap())).unwrap();
    let mut pipe = Pipeline::load(&runtime, profile).unwrap();
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for case in doc["cases"].as_array().unwrap() {
        let name = format!("{label} {}", case["name"].as_str().unwrap());
        let req = request(case);
        check(&pipe.profile, &req);
        let out = pipe.generate(&req, &mut |_| {}).unwrap();
        let (bound, calls) = (out.timings.bound_unet_calls, out.timings.unet.len());
        assert_eq!(bound, calls, "{name}: unbound UNet calls");
        compare(&out, refs, case, &name, 2e-3, &mut report, &mut failures);
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// SDXL (tests/fixtures/sdxl, scripts/make_sdxl_fixture.py): a tiny StableDiffusionXLPipeline exported by optimum
/// (two text encoders, pooled `text_embeds`, `time_ids`, VAE scale 0.13025, `force_zeros_for_empty_prompt`)
/// against diffusers' PyTorch pipeline: default and negative prompts, DPM-Solver++ Karras, Euler ancestral at
/// 96x64, batch 2 without guidance. Same bar as above.
#[test]
fn sdxl_matches_diffusers() {
    run_reference_folder(Path::new("tests/fixtures/sdxl"), "sdxl", &|profile, _| {
        assert!(profile.xl.as_ref().unwrap().zeros_for_empty_negative.value);
        assert!((profile.vae_scaling_factor.value - 0.13025).abs() < 1e-7);
    });
}

/// `--rng philox` end to end (tests/fixtures/philox, scripts/make_philox_fixture.py): diffusers' pipeline given
/// the tensors a real `torch.Generator("cuda")` drew (initial latents, and for Euler ancestral the per-step noise
/// of two steps, three successive draws), against our run with `--rng philox` and the same seed, which must
/// draw those same tensors itself. Same bar as above.
#[test]
fn philox_runs_match_diffusers_fed_with_cuda_draws() {
    run_reference_folder(Path::new("tests/fixtures/philox"), "philox", &|_, req| {
        assert_eq!(req.rng, RngKind::Philox);
    });
}

/// When the profile cannot know the UNet's depth (no config, a graph too large to read), a size the export
/// cannot run still fails with words, as a model/usage error naming the UNet, not a bare Concat error.
#[test]
fn sizes_the_unet_cannot_run_are_explained() {
    let runtime = runtime();
    let mut profile = ModelProfile::load(Path::new("onnx/sd-tiny-optimum")).unwrap();
    assert_eq!(profile.size_multiple.value, 16);
    profile.size_multiple.value = 8; // as if unknown: only the VAE factor
    let mut pipe = Pipeline::load(&runtime, profile).unwrap();
    let req = request(&serde_json::json!({
        "prompt": "a cat", "negative_prompt": null, "steps": 2, "guidance": 7.5, "scheduler": "euler",
        "karras": false, "seed": 1, "rng": "torch", "width": 72, "height": 64, "batch": 1
    }));
    let err = pipe
        .generate(&req, &mut |_| {})
        .err()
        .map(|e| (e.is_usage(), e.to_string()));
    let (usage, msg) = err.unwrap_or_default();
    assert!(usage, "{msg}");
    assert!(msg.contains("cannot run a 9x8 latent"), "{msg}");
}

/// A UNet that does not match its folder (an SD UNet in an SDXL folder) is refused when the pipeline loads every
/// graph up front too (library users, `bench`), not only on the CLI's load-on-use path.
#[test]
fn a_unet_that_does_not_match_its_folder_is_refused_at_load() {
    let runtime = runtime();
    let dir = std::env::temp_dir().join(format!("sdonnx-xl-mixed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(Path::new("onnx/sdxl-tiny-optimum"), &dir);
    std::fs::remove_dir_all(dir.join("unet")).unwrap();
    copy_dir(Path::new("onnx/sd-tiny-optimum/unet"), &dir.join("unet"));
    let err = Pipeline::load(&runtime, ModelProfile::load(&dir).unwrap())
        .err()
        .expect("an SD UNet in an SDXL folder must be refused");
    assert!(err.to_string().contains("lacks SDXL's"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
