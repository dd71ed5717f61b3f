//! Input images for img2img and inpainting, prepared like diffusers' `VaeImageProcessor`: RGB, size rounded
//! down to a multiple of the VAE factor (or the requested size), values mapped to [-1, 1]; masks converted
//! to L with PIL's integer luma, resized to the image, and binarised at 0.5 (white = repaint).
//!
//! Resizing is PIL's `Image.resize(..., LANCZOS)` (what the processor calls) ported bit for bit, so a resized
//! input gives diffusers' tensor exactly; inputs already at the target size are used as they are.

use crate::error::{Error, Result};
use image::{DynamicImage, GenericImageView, ImageReader};
use ndarray::{Array2, Array4};
use std::borrow::Cow;
use std::path::Path;

/// Read and decode an image file (PNG, JPEG or WebP, by its content).
pub fn read(path: &Path) -> Result<DynamicImage> {
    let reader = ImageReader::open(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = reader.with_guessed_format().map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    reader.limits(input_limits());
    reader
        .decode()
        .map_err(|e| Error::Usage(format!("{}: cannot decode image ({e})", path.display())))
}

/// A small file can declare a huge image: it is refused from its header, before decoding allocates.
fn input_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(crate::pipeline::limits::MAX_INPUT_SIDE);
    limits.max_image_height = Some(crate::pipeline::limits::MAX_INPUT_SIDE);
    limits.max_alloc = Some(crate::pipeline::limits::MAX_INPUT_ALLOC);
    limits
}

/// [`read`] of an image held in memory (a server's upload: PNG, JPEG or WebP, by its content), with the same
/// limits; errors name it `field`.
pub fn decode(bytes: &[u8], field: &'static str) -> Result<DynamicImage> {
    let bad = |e: String| Error::Invalid {
        field,
        msg: format!("cannot be decoded as an image ({e})"),
    };
    let mut reader = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    reader.limits(input_limits());
    reader.decode().map_err(|e| bad(e.to_string()))
}

/// An RGB image as a (1, 3, H, W) tensor in [-1, 1], read from `path` and resized to (width, height) when
/// needed.
pub fn load_image(path: &Path, width: usize, height: usize) -> Result<Array4<f32>> {
    Ok(prepare_image(&read(path)?, width, height))
}

/// [`load_image`] of an image already decoded.
pub fn prepare_image(image: &DynamicImage, width: usize, height: usize) -> Array4<f32> {
    let rgb = image.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let pixels = pil_lanczos(rgb.as_raw(), w, h, 3, width, height);
    Array4::from_shape_fn((1, 3, height, width), |(_, c, y, x)| {
        let v = pixels[(y * width + x) * 3 + c] as f32 / 255.0;
        2.0 * v - 1.0
    })
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in libImaging/Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's LANCZOS kernel: sinc(x) * sinc(x / 3) on [-3, 3).
fn lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// One axis's resampling taps: for each output position the first input index, the tap count, and the
/// weights in Pillow's 22-bit fixed point (`precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 3.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) conversion truncates toward zero; negatives are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            *kx = lanczos(((x + xmin) as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for (x, kx) in k.iter().enumerate().take(n) {
            let v = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if v < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Taps {
        ksize,
        bounds,
        weights,
    }
}

/// Round and clip a fixed-point accumulator to 8 bits (Pillow's `clip8`).
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `PIL.Image.resize((out_w, out_h), Image.LANCZOS)` on interleaved 8-bit pixels, bit for bit: Pillow's two
/// passes (horizontal first, over only the rows the vertical pass reads; each pass rounded to 8 bits), with
/// its coefficients. A same-size input is returned unchanged, as PIL does.
pub fn pil_lanczos(
    src: &[u8],
    w: usize,
    h: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    if (w, h) == (out_w, out_h) || w == 0 || h == 0 || out_w == 0 || out_h == 0 {
        return src.to_vec();
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let vert = taps(h, out_h);
    let (mut img, mut img_w, mut row0) = (Cow::Borrowed(src), w, 0usize);
    if out_w != w {
        let hor = taps(w, out_w);
        let first = vert.bounds[0].0;
        let last = vert.bounds[out_h - 1].0 + vert.bounds[out_h - 1].1;
        let mut tmp = vec![0u8; out_w * (last - first) * channels];
        for y in first..last {
            for xx in 0..out_w {
                let (xmin, n) = hor.bounds[xx];
                let k = &hor.weights[xx * hor.ksize..xx * hor.ksize + n];
                for c in 0..channels {
                    let mut acc = half;
                    for (x, &kx) in k.iter().enumerate() {
                        acc += src[(y * w + xmin + x) * channels + c] as i64 * kx as i64;
                    }
                    tmp[((y - first) * out_w + xx) * channels + c] = clip8(acc);
                }
            }
        }
        img = Cow::Owned(tmp);
        img_w = out_w;
        row0 = first;
    }
    if out_h == h {
        return img.into_owned();
    }
    let mut out = vec![0u8; out_w * out_h * channels];
    for yy in 0..out_h {
        let (ymin, n) = vert.bounds[yy];
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + n];
        for xx in 0..img_w {
            for c in 0..channels {
                let mut acc = half;
                for (y, &ky) in k.iter().enumerate() {
                    acc += img[((ymin - row0 + y) * img_w + xx) * channels + c] as i64 * ky as i64;
                }
                out[(yy * img_w + xx) * channels + c] = clip8(acc);
            }
        }
    }
    out
}

/// A mask at (width, height): 1 where the image is repainted (white), 0 where it is kept.
/// Returns the mask and whether it had to be resized (a different size than the image).
pub fn load_mask(path: &Path, width: usize, height: usize) -> Result<(Array2<f32>, bool)> {
    Ok(prepare_mask(&read(path)?, width, height))
}

/// [`load_mask`] of an image already decoded.
pub fn prepare_mask(img: &DynamicImage, width: usize, height: usize) -> (Array2<f32>, bool) {
    let resized = img.dimensions() != (width as u32, height as u32);
    // PIL's convert("L"): L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, on the full-size image.
    let rgb = img.to_rgb8();
    let luma = image::GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let p = rgb.get_pixel(x, y);
        let l = (p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16;
        image::Luma([l as u8])
    });
    let luma = pil_lanczos(
        luma.as_raw(),
        rgb.width() as usize,
        rgb.height() as usize,
        1,
        width,
        height,
    );
    (
        Array2::from_shape_fn((height, width), |(y, x)| {
            let v = luma[y * width + x] as f32 / 255.0;
            if v < 0.5 { 0.0 } else { 1.0 }
        }),
        resized,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_uses_pil_luma_and_binarises() {
        let dir = std::env::temp_dir().join(format!("sdonnx-mask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.png");
        // (200, 100, 50) -> L = 124 (< 128: keep); (255, 255, 0) -> 226 (repaint).
        let img = image::RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([200, 100, 50])
            } else {
                image::Rgb([255, 255, 0])
            }
        });
        img.save(&p).unwrap();
        let (m, resized) = load_mask(&p, 2, 1).unwrap();
        assert!(!resized);
        assert_eq!(m.as_slice().unwrap(), &[0.0, 1.0]);
        let t = load_image(&p, 2, 1).unwrap();
        assert!((t[[0, 0, 0, 0]] - (2.0 * 200.0 / 255.0 - 1.0)).abs() < 1e-6);
        assert_eq!(read(&p).unwrap().dimensions(), (2, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file whose header declares a huge image is refused before decoding allocates for it.
    #[test]
    fn oversized_inputs_are_refused_from_their_header() {
        let dir = std::env::temp_dir().join(format!("sdonnx-huge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("wide.png");
        image::RgbImage::new(crate::pipeline::limits::MAX_INPUT_SIDE + 1, 1)
            .save(&p)
            .unwrap();
        let e = read(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("wide.png: cannot decode image"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn jpeg_and_webp_inputs_load_and_resize() {
        let dir = std::env::temp_dir().join(format!("sdonnx-fmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = image::RgbImage::from_fn(21, 13, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 15) as u8, 90])
        });
        for ext in ["jpg", "webp"] {
            let p = dir.join(format!("a.{ext}"));
            img.save(&p).unwrap();
            // Decoded at its size (the request's resolver rounds 21x13 down to 16x8), then resized to it.
            assert_eq!(read(&p).unwrap().dimensions(), (21, 13), "{ext}");
            let t = load_image(&p, 16, 8).unwrap();
            assert_eq!(t.shape(), &[1, 3, 8, 16]);
            assert!(t.iter().all(|v| (-1.0..=1.0).contains(v)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
