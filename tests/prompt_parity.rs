//! A1111 prompt syntax against references from a Python port of A1111's parser, chunker and emphasis driving
//! diffusers' components (tests/fixtures/prompts, scripts/make_prompt_fixture.py, scripts/a1111_prompt.py):
//! weights, nesting, escapes, BREAK, prompts past 75 tokens with and without commas, weighted and long
//! negative prompts (the UNet run on each half separately), "No norm" emphasis, plain syntax, an SD 2.x-style
//! tokenizer that pads with "!", SDXL's two encoders, and clip skip 2 (against diffusers' own `clip_skip=1` for
//! plain prompts; on both export layouts, whose text encoders lack the layer and are edited to expose it).
//!
//! Bar: as every parity test, images mean |diff| <= 1 and max <= 8 levels, final latents within 2e-3 of
//! diffusers'. And the syntax must matter: read plainly, the weighted cases miss their references.

use sd_onnx::pipeline::{Pipeline, Request};
use sd_onnx::profile::ModelProfile;
use sd_onnx::prompt::{PromptSyntax, TextOptions};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;
use common::{case_request, compare, copy_dir, load_cases, runtime};

/// The bundled tiny SD folder with its tokenizer padding with "!" (id 0), as SD 2.x's does.
fn sd2_style(tmp: &Path) -> PathBuf {
    let dir = tmp.join("sd2-style");
    copy_dir(Path::new("onnx/sd-tiny-optimum"), &dir);
    for f in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join("tokenizer").join(f);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut v: Value = serde_json::from_str(&text).unwrap();
            v["pad_token"] = Value::String("!".into());
            std::fs::write(&path, v.to_string()).unwrap();
        }
    }
    dir
}

/// Whether `req` meets the case's reference at the parity bar.
fn matches(pipe: &mut Pipeline, req: &Request, refs: &Path, case: &Value) -> bool {
    let out = pipe.generate(req, &mut |_| {}).unwrap();
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    compare(&out, refs, case, "", 2e-3, &mut report, &mut failures);
    failures.is_empty()
}

#[test]
fn a1111_prompts_match_the_python_port_on_diffusers() {
    let refs = Path::new("tests/fixtures/prompts");
    let doc = load_cases(refs);
    let runtime = runtime();
    let tmp = std::env::temp_dir().join(format!("sd-onnx-prompts-{}", std::process::id()));
    let sd2 = sd2_style(&tmp);
    let mut pipes: HashMap<PathBuf, Pipeline> = HashMap::new();
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dir = match case["tokenizer_pad"].as_str() {
            Some("!") => sd2.clone(),
            _ => PathBuf::from(case["model"].as_str().unwrap()),
        };
        let pipe = pipes.entry(dir.clone()).or_insert_with(|| {
            Pipeline::load(&runtime, ModelProfile::load(&dir).unwrap()).unwrap()
        });
        let req = case_request(case);
        let out = pipe.generate(&req, &mut |_| {}).unwrap();
        assert!(
            out.warnings.iter().all(|w| !w.contains("cut")),
            "{name}: nothing is cut in A1111 syntax: {:?}",
            out.warnings
        );
        compare(&out, refs, case, name, 2e-3, &mut report, &mut failures);
        // The chunks the port made: (prompt, negative prompt) x 77 tokens.
        if let Some(chunks) = case["chunks"].as_array() {
            let e = pipe
                .encode_prompt(
                    &req.prompt,
                    req.negative_prompt.as_deref(),
                    req.guidance,
                    &req.text,
                    &mut Vec::new(),
                )
                .unwrap();
            let want = chunks[0].as_u64().unwrap() as usize * 77;
            assert_eq!(e.cond.shape()[1], want, "{name}: prompt tokens");
            if let (Some(u), Some(n)) = (&e.uncond, chunks.get(1)) {
                assert_eq!(
                    u.shape()[1],
                    n.as_u64().unwrap() as usize * 77,
                    "{name}: negative tokens"
                );
            }
        }
        // The syntax must be what made the image: read plainly, a weighted prompt misses. (A long unweighted
        // prompt's second chunk moves these tiny random models' images too little to tell; its chunks are
        // checked above.)
        if req.text.syntax == PromptSyntax::A1111
            && sd_onnx::prompt::parse::has_syntax(&format!(
                "{} {}",
                req.prompt,
                req.negative_prompt.as_deref().unwrap_or("")
            ))
        {
            let plain = Request {
                text: TextOptions {
                    syntax: PromptSyntax::Plain,
                    ..req.text
                },
                ..req.clone()
            };
            let out = pipe.generate(&plain, &mut |_| {}).unwrap();
            let (mut r, mut f) = (Vec::new(), Vec::new());
            compare(&out, refs, case, name, 2e-3, &mut r, &mut f);
            if f.is_empty() {
                failures.push(format!("{name}: plain syntax also matches the reference"));
            }
        }
        // Clip skip must be what made the image.
        if req.text.clip_skip > 1 {
            let last = Request {
                text: TextOptions {
                    clip_skip: 1,
                    ..req.text
                },
                ..req.clone()
            };
            if matches(pipe, &last, refs, case) {
                failures.push(format!("{name}: clip skip 1 also matches the reference"));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
