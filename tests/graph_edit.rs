//! The in-memory graph edits (clip skip, textual inversion) keep external data external: a text encoder whose
//! weights live in `model.onnx_data` (as exports over 2 GB have them, SDXL's second encoder) gives, edited,
//! exactly what the same encoder with its weights inside `model.onnx` gives; and the convert script's export of the
//! same weights (int32 ids, LayerNorm decomposed) is edited to the same values.

use sd_onnx::embeddings::load_dir;
use sd_onnx::graphs::text_widths;
use sd_onnx::onnx_edit::{Model, pb};
use sd_onnx::pipeline::Pipeline;
use sd_onnx::profile::ModelProfile;
use sd_onnx::prompt::TextOptions;
use std::path::Path;

mod common;
use common::{copy_dir, runtime};

/// `dir/text_encoder/model.onnx` rewritten with every initializer over 256 bytes in `model.onnx_data`.
fn externalise(dir: &Path) -> usize {
    let path = dir.join("text_encoder/model.onnx");
    let mut model = Model::read(&path).unwrap();
    let mut data: Vec<u8> = Vec::new();
    let mut moved = 0;
    for t in &mut model.graph_mut().initializer {
        let Some(raw) = t.raw_data.take() else {
            continue;
        };
        if raw.len() <= 256 {
            t.raw_data = Some(raw);
            continue;
        }
        let entry = |k: &str, v: String| pb::StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            entry("location", "model.onnx_data".into()),
            entry("offset", data.len().to_string()),
            entry("length", raw.len().to_string()),
        ];
        t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
        data.extend_from_slice(&raw);
        moved += 1;
    }
    std::fs::write(dir.join("text_encoder/model.onnx_data"), data).unwrap();
    std::fs::write(&path, model.encode()).unwrap();
    moved
}

#[test]
fn edited_graphs_read_external_weights() {
    let tmp = std::env::temp_dir().join(format!("sd-onnx-edit-{}", std::process::id()));
    let external = tmp.join("external");
    copy_dir(Path::new("onnx/sd-tiny-optimum"), &external);
    assert!(externalise(&external) > 3);
    assert!(
        std::fs::metadata(external.join("text_encoder/model.onnx"))
            .unwrap()
            .len()
            < 100_000
    );
    let runtime = runtime();
    let skip2 = TextOptions {
        clip_skip: 2,
        ..TextOptions::default()
    };
    let mut outputs = Vec::new();
    // The same weights exported by diffusers' convert script (int32 ids, a decomposed LayerNorm) and by optimum
    // with its text encoder's weights moved out.
    for dir in [
        Path::new("onnx/sd-tiny-optimum"),
        external.as_path(),
        Path::new("onnx/sd-tiny-convert"),
    ] {
        let profile = ModelProfile::load(dir).unwrap();
        let (embeddings, _) = load_dir(
            Path::new("tests/fixtures/embeddings"),
            &text_widths(&profile).unwrap(),
        )
        .unwrap();
        let mut pipe = Pipeline::load(&runtime, profile).unwrap();
        let plain = pipe
            .encode_prompt("a (red:1.2) cube", None, 7.5, &skip2, &mut Vec::new())
            .unwrap();
        pipe.set_embeddings(&embeddings).unwrap();
        let ti = pipe
            .encode_prompt("a tiny-style cube", None, 7.5, &skip2, &mut Vec::new())
            .unwrap();
        outputs.push((plain.cond, ti.cond));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let ((a1, a2), (b1, b2)) = (&outputs[0], &outputs[1]);
    assert_eq!(a1, b1, "clip skip 2: inline and external weights differ");
    assert_eq!(
        a2, b2,
        "clip skip 2 + embeddings: inline and external weights differ"
    );
}
