//! Textual inversion at run time (tests/fixtures/ti, scripts/make_ti_fixture.py): embeddings in A1111's `.pt`
//! and `.safetensors`, diffusers' `learned_embeds.bin` / `.safetensors` and SDXL's `clip_l`/`clip_g` formats,
//! against diffusers' own `load_textual_inversion` (unweighted) and the Python port of A1111's embedding
//! handling (weighted, and an embedding that would straddle a chunk's end), on the bundled tiny exports.
//!
//! Bar: as every parity test, images mean |diff| <= 1 and max <= 8 levels, latents within 2e-3. And the
//! embeddings must be what made the image: without them every case misses its reference.

use sd_onnx::embeddings::load_dir;
use sd_onnx::graphs::text_widths;
use sd_onnx::pipeline::Pipeline;
use sd_onnx::profile::ModelProfile;
use std::path::Path;

mod common;
use common::{case_request, compare, load_cases, runtime};

#[test]
fn embeddings_match_diffusers_and_the_a1111_port() {
    let refs = Path::new("tests/fixtures/ti");
    let doc = load_cases(refs);
    let runtime = runtime();
    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let profile = ModelProfile::load(Path::new(case["model"].as_str().unwrap())).unwrap();
        let widths = text_widths(&profile).unwrap();
        let (embeddings, refused) =
            load_dir(Path::new(case["embeddings_dir"].as_str().unwrap()), &widths).unwrap();
        assert!(refused.is_empty(), "{name}: {refused:?}");
        let mut pipe = Pipeline::load(&runtime, profile).unwrap();
        let req = case_request(case);
        let bare = pipe.generate(&req, &mut |_| {}).unwrap();
        let (mut r, mut f) = (Vec::new(), Vec::new());
        compare(&bare, refs, case, name, 2e-3, &mut r, &mut f);
        if f.is_empty() {
            failures.push(format!("{name}: matches without the embeddings"));
        }
        pipe.set_embeddings(&embeddings).unwrap();
        let out = pipe.generate(&req, &mut |_| {}).unwrap();
        compare(&out, refs, case, name, 2e-3, &mut report, &mut failures);
        if let Some(chunks) = case["chunks"].as_array() {
            let e = pipe
                .encode_prompt(&req.prompt, None, req.guidance, &req.text, &mut Vec::new())
                .unwrap();
            assert_eq!(
                e.cond.shape()[1],
                chunks[0].as_u64().unwrap() as usize * 77,
                "{name}"
            );
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
