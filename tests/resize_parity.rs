//! Resized inputs against diffusers (tests/fixtures/resize, written by scripts/make_resize_fixtures.py):
//! `pil_lanczos` equals Pillow's `Image.resize(..., LANCZOS)` byte for byte, and `load_image` / `load_mask`
//! equal `VaeImageProcessor.preprocess` exactly (downscaling, upscaling, mixed, 3x, RGB and masks).

use sd_onnx::images::{load_image, load_mask, pil_lanczos};
use serde_json::Value;
use std::path::Path;

mod common;
use common::read_f32s;

#[test]
fn resizing_matches_pillow_and_diffusers_exactly() {
    let dir = Path::new("tests/fixtures/resize");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let src = Path::new(case["source"].as_str().unwrap());
        let (w, h) = (
            case["width"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
        );
        let img = image::open(src).unwrap().to_rgb8();
        let (sw, sh) = (img.width() as usize, img.height() as usize);
        let want_pil = std::fs::read(dir.join(format!("{name}.pil.bin"))).unwrap();
        let want = read_f32s(&dir.join(format!("{name}.f32.bin")));
        if case["kind"] == "image" {
            let got = pil_lanczos(img.as_raw(), sw, sh, 3, w, h);
            assert_eq!(got, want_pil, "{name}: pixels differ from Pillow's");
            let t = load_image(src, w, h).unwrap();
            assert_eq!(t.as_slice().unwrap(), &want[..], "{name}: tensor");
        } else {
            // PIL's convert("L"), then the resize.
            let luma: Vec<u8> = img
                .pixels()
                .map(|p| {
                    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000)
                        >> 16) as u8
                })
                .collect();
            assert_eq!(
                pil_lanczos(&luma, sw, sh, 1, w, h),
                want_pil,
                "{name}: pixels differ from Pillow's"
            );
            let (m, resized) = load_mask(src, w, h).unwrap();
            assert!(resized);
            assert_eq!(m.as_slice().unwrap(), &want[..], "{name}: mask");
        }
    }
}
