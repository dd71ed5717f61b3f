//! txt2img on both bundled layouts against diffusers' PyTorch `StableDiffusionPipeline` references
//! (tests/fixtures/txt2img, written by scripts/make_fixtures.py): every case, every image.
//!
//! Tolerances: images mean |diff| <= 1.0 and max <= 8 levels of 255 (the bar), and the final
//! latents (before the VAE) within 2e-3 absolute of diffusers', which is what tells one scheduler from
//! another on these tiny models. onnx/sd-tiny-fp16 (fp16 graphs, int64 timestep) is held to the same image
//! bar against the same float32 references, latents within 1.0. Needs ORT_DYLIB_PATH (scripts/test sets it).

use sd_onnx::pipeline::{Pipeline, Request};
use sd_onnx::profile::ModelProfile;
use sd_onnx::rng::RngKind;
use sd_onnx::runtime::Runtime;
use sd_onnx::schedulers::SchedulerKind;
use serde_json::Value;
use std::path::Path;

fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

fn request(case: &Value) -> Request {
    Request {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        steps: case["steps"].as_u64().unwrap() as usize,
        guidance: case["guidance"].as_f64().unwrap() as f32,
        scheduler: SchedulerKind::from_name(case["scheduler"].as_str().unwrap()).unwrap(),
        karras: case["karras"].as_bool().unwrap(),
        seed: case["seed"].as_u64().unwrap(),
        rng: RngKind::parse(case["rng"].as_str().unwrap()).unwrap(),
        width: case["width"].as_u64().unwrap() as usize,
        height: case["height"].as_u64().unwrap() as usize,
        batch: case["batch"].as_u64().unwrap() as usize,
        init: None,
    }
}

/// fp16 graphs against float32 diffusers: measured up to 0.31, and 0.62 for LCM (which re-noises from its
/// x0 estimate every step, amplifying fp16 rounding); images stay within 2 levels.
const FP16_LATENT_TOL: f32 = 1.0;

#[test]
fn txt2img_matches_diffusers_on_every_layout() {
    let refs = Path::new("tests/fixtures/txt2img");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(refs.join("cases.json")).unwrap()).unwrap();
    let runtime =
        Runtime::load(None).expect("ONNX Runtime (run scripts/test, which sets ORT_DYLIB_PATH)");
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
            let want_lat: Vec<f32> =
                std::fs::read(refs.join(format!("{}.latents.bin", case["name"].as_str().unwrap())))
                    .unwrap()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
            let lat_diff = out
                .latents
                .iter()
                .zip(&want_lat)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            if out.latents.len() != want_lat.len() || lat_diff > lat_tol {
                failures.push(format!("{name}: latents differ by {lat_diff}"));
            }
            for (img, file) in out.images.iter().zip(case["files"].as_array().unwrap()) {
                let (w, h, want) = read_png(&refs.join(file.as_str().unwrap()));
                assert_eq!((img.width, img.height), (w, h), "{name}: size");
                let diffs: Vec<f64> = img
                    .pixels
                    .iter()
                    .zip(&want)
                    .map(|(&a, &b)| (a as f64 - b as f64).abs())
                    .collect();
                let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
                let max = diffs.iter().copied().fold(0.0, f64::max);
                report.push(format!(
                    "{name}: mean {mean:.4} max {max} latents {lat_diff:.2e}"
                ));
                if mean > 1.0 || max > 8.0 {
                    failures.push(format!("{name} {file}: mean {mean:.3} max {max}"));
                }
            }
        }
    }
    println!("{}", report.join("\n"));
    println!("generations that reused the UNet's bound buffers: {reused}");
    assert!(reused > 0, "no generation reused the UNet's bound buffers");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
