//! Helpers the parity tests share: reading the committed references and holding a generation against them.
#![allow(dead_code)] // each test binary uses its own subset

use serde_json::Value;
use std::path::Path;

/// An 8-bit PNG as (width, height, bytes).
/// The `cases.json` manifest of a reference folder.
pub fn load_cases(refs: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(refs.join("cases.json")).unwrap()).unwrap()
}

/// The ONNX Runtime `scripts/test` points at (ORT_DYLIB_PATH).
pub fn runtime() -> sd_onnx::runtime::Runtime {
    sd_onnx::runtime::Runtime::load(None)
        .expect("ONNX Runtime (run scripts/test, which sets ORT_DYLIB_PATH)")
}

pub fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

/// Copy a folder tree (a model folder to alter in a test).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A little-endian float32 file.
pub fn read_f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Hold one generation against its diffusers reference (final latents, then every image), recording the
/// differences in `report` and anything over the bar in `failures`.
pub fn compare(
    out: &sd_onnx::pipeline::Generated,
    refs: &Path,
    case: &Value,
    name: &str,
    lat_tol: f32,
    report: &mut Vec<String>,
    failures: &mut Vec<String>,
) {
    let want_lat = read_f32s(&refs.join(format!("{}.latents.bin", case["name"].as_str().unwrap())));
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

/// A reference case's request (txt2img, one generator for the batch as diffusers' references draw it): the
/// fields every manifest has, and the optional ones with diffusers' defaults.
pub fn case_request(case: &Value) -> sd_onnx::pipeline::Request {
    use sd_onnx::prompt::{Emphasis, PromptSyntax, TextOptions};
    let num = |k: &str, d: u64| case[k].as_u64().unwrap_or(d) as usize;
    let text = TextOptions {
        syntax: PromptSyntax::parse(case["prompt_syntax"].as_str().unwrap_or("a1111")).unwrap(),
        emphasis: Emphasis::parse(case["emphasis"].as_str().unwrap_or("original")).unwrap(),
        clip_skip: num("clip_skip", 1),
    };
    sd_onnx::pipeline::Request {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        steps: num("steps", 0),
        guidance: case["guidance"].as_f64().unwrap() as f32,
        guidance_rescale: case["guidance_rescale"].as_f64().unwrap_or(0.0) as f32,
        scheduler: sd_onnx::schedulers::SchedulerKind::from_name(
            case["scheduler"].as_str().unwrap(),
        )
        .unwrap(),
        schedule: case["karras"]
            .as_bool()
            .unwrap_or(false)
            .then_some(sd_onnx::schedulers::SigmaSpacing::Karras),
        seed: case["seed"].as_u64().unwrap(),
        seeds: sd_onnx::pipeline::BatchSeeds::Shared,
        rng: sd_onnx::rng::RngKind::parse(case["rng"].as_str().unwrap_or("torch")).unwrap(),
        width: num("width", 64),
        height: num("height", 64),
        batch: num("batch", 1),
        batch_count: 1,
        init: None,
        text,
        prompt_embeds: None,
    }
}
