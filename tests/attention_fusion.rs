//! The attention rewrite (`sd_onnx::onnx_edit::attention`) on every fixture export: how many attentions each
//! graph has, that all of them are rewritten, and that the rewritten graph computes what the export does.

use sd_onnx::onnx_edit::Model;
use sd_onnx::onnx_edit::attention::fuse_attention;
use std::path::Path;

fn fused(graph: &str) -> usize {
    let mut m = Model::read(Path::new(graph)).expect("fixture graph");
    fuse_attention(&mut m).attentions
}

#[test]
fn every_fixture_attention_is_rewritten() {
    for (graph, want) in [
        ("onnx/sd-tiny-optimum/unet/model.onnx", 8),
        ("onnx/sd-tiny-convert/unet/model.onnx", 8),
        // Float16 attention is left as exported (see the module docs); the emoji model computes in float16.
        ("onnx/sd-tiny-fp16/unet/model.onnx", 0),
        ("onnx/sd2-tiny-optimum/unet/model.onnx", 8),
        ("onnx/sdxl-tiny-optimum/unet/model.onnx", 16),
        ("onnx/sd-tiny-inpaint-optimum/unet/model.onnx", 8),
        ("onnx/sd-tiny-lcm-optimum/unet/model.onnx", 8),
        ("onnx/sd-emoji/unet/model.onnx", 0),
        ("onnx/sd-tiny-optimum/vae_decoder/model.onnx", 1),
        ("onnx/sd-tiny-optimum/vae_encoder/model.onnx", 1),
        ("onnx/sd-emoji/vae_decoder/model.onnx", 0),
        ("onnx/sd-tiny-convert/vae_decoder/model.onnx", 1),
        ("onnx/sd-tiny-optimum/text_encoder/model.onnx", 0),
    ] {
        let got = fused(graph);
        eprintln!("{graph}: {got}");
        assert_eq!(got, want, "{graph}");
    }
}

/// The fused graphs compute what the export does: a whole guided run (UNet and VAE decoder fused) against
/// the same run with the rewrite off, on both export layouts, SD and SDXL. Bar: final latents within 1e-4
/// (max |diff|; the tiled kernel sums in another order) and images within 1 level of 255. Measured when
/// written: latents 3.1e-5 to 6.5e-5, images 0 or 1 level.
#[test]
fn fused_attention_gives_the_exports_numbers() {
    use sd_onnx::pipeline::{Intent, Pipeline, resolve};
    use sd_onnx::profile::ModelProfile;
    use sd_onnx::runtime::{Runtime, RuntimeConfig};
    let runtime = |fuse: bool| {
        Runtime::load_with(
            None,
            RuntimeConfig {
                fuse_attention: fuse,
                ..RuntimeConfig::default()
            },
        )
        .expect("ONNX Runtime (run scripts/test, which sets ORT_DYLIB_PATH)")
    };
    let (fused, plain) = (runtime(true), runtime(false));
    for (dir, lat_tol, level_tol) in [
        ("onnx/sd-tiny-optimum", 1e-4f32, 1u8),
        ("onnx/sd-tiny-convert", 1e-4, 1),
        ("onnx/sdxl-tiny-optimum", 1e-4, 1),
    ] {
        let profile = ModelProfile::load(Path::new(dir)).unwrap();
        let run = |rt: &Runtime| {
            let intent = Intent {
                prompt: "a red cube".into(),
                negative_prompt: Some("blurry".into()),
                steps: Some(4),
                seed: Some(3),
                ..Intent::default()
            };
            let mut pipe = Pipeline::load(rt, profile.clone()).unwrap();
            pipe.run(resolve(&profile, intent).unwrap(), &mut |_| {})
                .unwrap()
        };
        let (a, b) = (run(&fused), run(&plain));
        let lat = a
            .latents
            .iter()
            .zip(b.latents.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let level = a
            .images
            .iter()
            .zip(&b.images)
            .flat_map(|(x, y)| x.pixels.iter().zip(&y.pixels).map(|(p, q)| p.abs_diff(*q)))
            .max()
            .unwrap_or(0);
        eprintln!("{dir}: latents max |diff| {lat:e}, images max {level} levels");
        assert!(lat <= lat_tol, "{dir}: latents differ by {lat}");
        assert!(level <= level_tol, "{dir}: images differ by {level} levels");
    }
}
