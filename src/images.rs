//! Input images for img2img and inpainting, prepared like diffusers' `VaeImageProcessor`: RGB, size rounded
//! down to a multiple of the VAE factor (or the requested size), values mapped to [-1, 1]; masks converted
//! to L with PIL's integer luma, resized to the image, and binarised at 0.5 (white = repaint).
//!
//! Resizing uses the `image` crate's Lanczos3; PIL's LANCZOS filter is the same kernel but not the same
//! integer arithmetic, so a resized input is close to, not identical with, diffusers'. Inputs already at the
//! target size are used as they are (bit-identical path).

use crate::error::{Error, Result};
use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView, ImageReader};
use ndarray::{Array2, Array4};
use std::path::Path;

fn open(path: &Path) -> Result<DynamicImage> {
    let reader = ImageReader::open(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = reader.with_guessed_format().map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    reader
        .decode()
        .map_err(|e| Error::Usage(format!("{}: cannot decode image ({e})", path.display())))
}

/// The size diffusers uses for an input: the requested one, else the image's rounded down to `factor`.
pub fn target_size(
    path: &Path,
    width: Option<usize>,
    height: Option<usize>,
    factor: usize,
) -> Result<(usize, usize)> {
    let (w, h) = open(path)?.dimensions();
    let (w, h) = (
        width.unwrap_or(w as usize - w as usize % factor),
        height.unwrap_or(h as usize - h as usize % factor),
    );
    if w == 0 || h == 0 {
        return Err(Error::Usage(format!(
            "{}: image smaller than {factor} pixels",
            path.display()
        )));
    }
    Ok((w, h))
}

/// An RGB image as a (1, 3, H, W) tensor in [-1, 1], resized to (width, height) when needed.
pub fn load_image(path: &Path, width: usize, height: usize) -> Result<Array4<f32>> {
    let img = open(path)?;
    let img = if img.dimensions() == (width as u32, height as u32) {
        img
    } else {
        img.resize_exact(width as u32, height as u32, FilterType::Lanczos3)
    };
    let rgb = img.to_rgb8();
    Ok(Array4::from_shape_fn(
        (1, 3, height, width),
        |(_, c, y, x)| {
            let v = rgb.get_pixel(x as u32, y as u32)[c] as f32 / 255.0;
            2.0 * v - 1.0
        },
    ))
}

/// A mask at (width, height): 1 where the image is repainted (white), 0 where it is kept.
/// Returns the mask and whether it had to be resized (a different size than the image).
pub fn load_mask(path: &Path, width: usize, height: usize) -> Result<(Array2<f32>, bool)> {
    let img = open(path)?;
    let resized = img.dimensions() != (width as u32, height as u32);
    // PIL's convert("L"): L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, on the full-size image.
    let rgb = img.to_rgb8();
    let luma = image::GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let p = rgb.get_pixel(x, y);
        let l = (p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16;
        image::Luma([l as u8])
    });
    let luma = if resized {
        image::imageops::resize(&luma, width as u32, height as u32, FilterType::Lanczos3)
    } else {
        luma
    };
    Ok((
        Array2::from_shape_fn((height, width), |(y, x)| {
            let v = luma.get_pixel(x as u32, y as u32)[0] as f32 / 255.0;
            if v < 0.5 { 0.0 } else { 1.0 }
        }),
        resized,
    ))
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
        assert_eq!(target_size(&p, None, None, 1).unwrap(), (2, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn jpeg_and_webp_inputs_load_and_sizes_round_down() {
        let dir = std::env::temp_dir().join(format!("sdonnx-fmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = image::RgbImage::from_fn(21, 13, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 15) as u8, 90])
        });
        for ext in ["jpg", "webp"] {
            let p = dir.join(format!("a.{ext}"));
            img.save(&p).unwrap();
            // 21x13 rounds down to 16x8 with the VAE factor 8, and is resized to it.
            assert_eq!(target_size(&p, None, None, 8).unwrap(), (16, 8), "{ext}");
            let t = load_image(&p, 16, 8).unwrap();
            assert_eq!(t.shape(), &[1, 3, 8, 16]);
            assert!(t.iter().all(|v| (-1.0..=1.0).contains(v)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
