//! LoRA merged into the exported graphs at session creation (tests/fixtures/lora, scripts/make_lora_fixture.py):
//! kohya and diffusers/PEFT files of the same LoRA, weights 1, 0.6 and negative, text-encoder-only and
//! UNet-only (`<lora:NAME:TE:UNET>`), LoCon convolutions (with a Tucker core), two LoRAs at once, LoHa and LoKr,
//! both export layouts, an SD 2.x-shaped export (onnx/sd2-tiny-optimum: linear proj_in/proj_out, GELU text
//! encoder) and SDXL (kohya SGM names, `lora_te1_`/`lora_te2_`), against diffusers'
//! `load_lora_weights` + `fuse_lora(lora_scale=w)` or the published merge on the PyTorch weights.
//!
//! Bar: as every parity test, images mean |diff| <= 1 and max <= 8 levels, latents within 2e-3. And the LoRA
//! must be what made the image: without it every case misses its reference.

use sd_onnx::lora::{Active, LoraFile, find};
use sd_onnx::pipeline::Pipeline;
use sd_onnx::profile::ModelProfile;
use std::path::Path;
use std::sync::Arc;

mod common;
use common::{case_request, compare, load_cases, runtime};

#[test]
fn loras_match_diffusers_and_the_published_merges() {
    let refs = Path::new("tests/fixtures/lora");
    let doc = load_cases(refs);
    let runtime = runtime();
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let profile = ModelProfile::load(Path::new(case["model"].as_str().unwrap())).unwrap();
        let mut pipe = Pipeline::load(&runtime, profile).unwrap();
        let req = case_request(case);
        let dir = Path::new(case["lora_dir"].as_str().unwrap());
        let active: Vec<Active> = req
            .lora_tags()
            .unwrap()
            .into_iter()
            .map(|t| Active {
                file: Arc::new(LoraFile::read(&find(dir, &t.name).unwrap()).unwrap()),
                te: t.te,
                unet: t.unet,
            })
            .collect();
        // Without the LoRA: refused (the prompt names it), and the exported weights miss the reference.
        assert!(pipe.generate(&req, &mut |_| {}).is_err(), "{name}");
        let mut bare_req = req.clone();
        bare_req.prompt = sd_onnx::prompt::networks::extra_networks(&req.prompt)
            .unwrap()
            .0;
        let bare = pipe.generate(&bare_req, &mut |_| {}).unwrap();
        let (mut r, mut f) = (Vec::new(), Vec::new());
        compare(&bare, refs, case, name, 2e-3, &mut r, &mut f);
        if f.is_empty() {
            failures.push(format!("{name}: matches without the LoRA"));
        }
        let warnings = pipe.set_loras(&active).unwrap();
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
        let out = pipe.generate(&req, &mut |_| {}).unwrap();
        compare(&out, refs, case, name, 2e-3, &mut report, &mut failures);
        // Back to the exported weights without reloading the runtime.
        pipe.set_loras(&[]).unwrap();
        let again = pipe.generate(&bare_req, &mut |_| {}).unwrap();
        assert_eq!(
            again.latents, bare.latents,
            "{name}: set_loras(&[]) restores the export"
        );
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An fp16 export (onnx/sd-tiny-fp16, weights stored as float16, external data): the merge is done in f32 and
/// stored back as float16, held to the fp16 export's own bar (txt2img_parity.rs: the image bar, latents within
/// 1.0) against the float32 reference; without the LoRA it misses.
#[test]
fn fp16_exports_take_the_lora_too() {
    let refs = Path::new("tests/fixtures/lora");
    let doc = load_cases(refs);
    let case = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kohya_1")
        .unwrap();
    let runtime = runtime();
    let profile = ModelProfile::load(Path::new("onnx/sd-tiny-fp16")).unwrap();
    let mut pipe = Pipeline::load(&runtime, profile).unwrap();
    let req = case_request(case);
    let file =
        Arc::new(LoraFile::read(Path::new("tests/fixtures/loras/style.safetensors")).unwrap());
    let mut bare_req = req.clone();
    bare_req.prompt = "a cube ".into();
    let bare = pipe.generate(&bare_req, &mut |_| {}).unwrap();
    let (mut r, mut f) = (Vec::new(), Vec::new());
    compare(&bare, refs, case, "fp16 bare", 1.0, &mut r, &mut f);
    assert!(!f.is_empty(), "fp16: matches without the LoRA");
    let warnings = pipe
        .set_loras(&[Active {
            file,
            te: 1.0,
            unet: 1.0,
        }])
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let out = pipe.generate(&req, &mut |_| {}).unwrap();
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    compare(
        &out,
        refs,
        case,
        "fp16 kohya_1",
        1.0,
        &mut report,
        &mut failures,
    );
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
