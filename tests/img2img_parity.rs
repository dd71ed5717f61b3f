//! img2img and inpainting against diffusers' PyTorch `StableDiffusionImg2ImgPipeline` and
//! `StableDiffusionInpaintPipeline` (tests/fixtures/img2img, written by scripts/make_fixtures.py): several
//! strengths, seven schedulers (ancestral and SDE ones included), batch 2, a non-square image, a 4-channel UNet
//! (latent blending) and a 9-channel inpainting UNet. Run on the optimum exports, whose VAE encoder returns
//! `latent_parameters` so that we sample with the run's generator in diffusers' order.
//!
//! Tolerance as for txt2img: images mean |diff| <= 1.0, max <= 8 levels; final latents within 2e-3.
//! The convert-script exports (`latent_sample`, sampled inside the graph) cannot match and are only run.

use sd_onnx::images::{load_image, load_mask};
use sd_onnx::pipeline::{BatchSeeds, Init, Pipeline, Request};
use sd_onnx::profile::ModelProfile;
use sd_onnx::rng::RngKind;
use sd_onnx::schedulers::SchedulerKind;
use serde_json::Value;
use std::path::Path;

mod common;
use common::{compare, load_cases, runtime};

fn request(case: &Value) -> Request {
    let images = Path::new("tests/fixtures/images");
    let (w, h) = (
        case["width"].as_u64().unwrap() as usize,
        case["height"].as_u64().unwrap() as usize,
    );
    let image = load_image(&images.join(case["image"].as_str().unwrap()), w, h).unwrap();
    let mask = case["mask"]
        .as_str()
        .map(|m| load_mask(&images.join(m), w, h).unwrap().0);
    Request {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: None,
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance: case["guidance"].as_f64().unwrap() as f32,
        guidance_rescale: case["guidance_rescale"].as_f64().unwrap_or(0.0) as f32,
        scheduler: SchedulerKind::from_name(case["scheduler"].as_str().unwrap()).unwrap(),
        schedule: None,
        seed: case["seed"].as_u64().unwrap(),
        // diffusers' references draw a batch from one generator.
        seeds: BatchSeeds::Shared,
        rng: RngKind::Torch,
        width: w,
        height: h,
        batch: case["batch"].as_u64().unwrap() as usize,
        batch_count: 1,
        init: Some(Init {
            image,
            mask,
            strength: case["strength"].as_f64().unwrap(),
        }),
        text: Default::default(),
        prompt_embeds: None,
    }
}

#[test]
fn img2img_and_inpainting_match_diffusers() {
    let refs = Path::new("tests/fixtures/img2img");
    let doc = load_cases(refs);
    let runtime = runtime();
    let mut plain = Pipeline::load(
        &runtime,
        ModelProfile::load(Path::new("onnx/sd-tiny-optimum")).unwrap(),
    )
    .unwrap();
    let mut inpaint = Pipeline::load(
        &runtime,
        ModelProfile::load(Path::new("onnx/sd-tiny-inpaint-optimum")).unwrap(),
    )
    .unwrap();
    assert_eq!(plain.unet_in_channels(), 4);
    assert_eq!(inpaint.unet_in_channels(), 9);
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let pipe = if case["model"] == "sd-tiny-inpaint" {
            &mut inpaint
        } else {
            &mut plain
        };
        let out = pipe.generate(&request(case), &mut |_| {}).unwrap();
        compare(&out, refs, case, name, 2e-3, &mut report, &mut failures);
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// SDXL img2img and (4-channel, blending) inpainting on the tiny SDXL export (tests/fixtures/sdxl-img2img,
/// scripts/make_sdxl_fixture.py) against diffusers' StableDiffusionXLImg2ImgPipeline and
/// StableDiffusionXLInpaintPipeline, at their default strengths (0.3, 0.9999) and others. Same bar.
#[test]
fn sdxl_img2img_and_inpainting_match_diffusers() {
    let refs = Path::new("tests/fixtures/sdxl-img2img");
    let doc = load_cases(refs);
    let runtime = runtime();
    let profile = ModelProfile::load(Path::new(doc["model"].as_str().unwrap())).unwrap();
    assert!(profile.xl.is_some());
    let mut pipe = Pipeline::load(&runtime, profile).unwrap();
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let out = pipe.generate(&request(case), &mut |_| {}).unwrap();
        compare(&out, refs, case, name, 2e-3, &mut report, &mut failures);
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The convert-script exports sample inside the encoder graph: they run (and the 9-channel UNet is
/// recognised from `conv_in`'s weight shape, its `sample` channels being symbolic) but cannot match.
#[test]
fn convert_layouts_run_img2img_and_inpainting() {
    let runtime = runtime();
    let doc = load_cases(Path::new("tests/fixtures/img2img"));
    let cases = doc["cases"].as_array().unwrap();
    for (dir, mode) in [
        ("onnx/sd-tiny-convert", "img2img"),
        ("onnx/sd-tiny-inpaint-convert", "inpaint9"),
    ] {
        let profile = ModelProfile::load(Path::new(dir)).unwrap();
        assert!(
            profile.unet_in_channels.source.contains("conv_in"),
            "{dir} has no unet config: detection must use the graph"
        );
        let mut pipe = Pipeline::load(&runtime, profile).unwrap();
        let case = cases.iter().find(|c| c["mode"] == mode).unwrap();
        let out = pipe.generate(&request(case), &mut |_| {}).unwrap();
        assert_eq!(out.images.len(), 1);
        assert_eq!(
            pipe.encoder_output(),
            Some(sd_onnx::graphs::EncoderOutput::Sample)
        );
    }
}
