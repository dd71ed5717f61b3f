//! Stage 4: latents to 8-bit RGB, one image at a time (as diffusers' ONNX pipelines decode), with diffusers'
//! rounding, and the fp16 VAE's classic overflow caught and decoded again in fp32 where the folder has one.

use crate::error::{Error, Result};
use crate::graphs::VaeDecoder;
use crate::pipeline::sessions::Sessions;
use crate::profile::ModelProfile;
use crate::schedulers::Latents;
use ndarray::{Array4, s};

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes, R G B, rows top to bottom.
    pub pixels: Vec<u8>,
}

impl From<RgbImage> for image::RgbImage {
    fn from(img: RgbImage) -> Self {
        let (w, h) = (img.width as u32, img.height as u32);
        if img.pixels.len() == img.width * img.height * 3 {
            if let Some(buf) = image::RgbImage::from_raw(w, h, img.pixels) {
                return buf;
            }
            return image::RgbImage::new(w, h);
        }
        // Only a hand-made RgbImage can disagree with its own size: read what is there, black elsewhere.
        image::RgbImage::from_fn(w, h, |x, y| {
            let i = (y as usize * img.width + x as usize) * 3;
            match img.pixels.get(i..i + 3) {
                Some(p) => image::Rgb([p[0], p[1], p[2]]),
                None => image::Rgb([0, 0, 0]),
            }
        })
    }
}

/// Decode every image of the batch.
pub(crate) fn decode(
    sessions: &mut Sessions,
    profile: &ModelProfile,
    latents: &Latents,
    warnings: &mut Vec<String>,
) -> Result<Vec<RgbImage>> {
    let scale = profile.vae_scaling_factor.value;
    let batch = latents.shape()[0];
    let mut images = Vec::with_capacity(batch);
    for b in 0..batch {
        let mut one = latents.slice(s![b..b + 1, .., .., ..]).to_owned();
        one.mapv_inplace(|v| v / scale);
        let decoder = sessions.vae_decoder(profile)?;
        let mut decoded = decoder.decode(&one)?;
        if decoded.iter().any(|v| !v.is_finite()) {
            let fp16 = decoder.is_fp16();
            decoded = fp32_fallback(sessions, profile, fp16, &one, b, warnings)?;
        }
        images.push(to_rgb(&decoded));
    }
    Ok(images)
}

/// NaN/inf out of the VAE decoder: the classic fp16 overflow of SD's VAE. Decode again with an fp32
/// decoder kept in `vae_decoder_fp32/` when the folder has one; otherwise fail, saying how to fix it.
fn fp32_fallback(
    sessions: &Sessions,
    profile: &ModelProfile,
    fp16: bool,
    latent: &Latents,
    index: usize,
    warnings: &mut Vec<String>,
) -> Result<Array4<f32>> {
    let graph = &profile.vae_decoder.graph;
    match (&profile.vae_decoder_fp32, fp16) {
        (Some(c), true) => {
            let mut fallback = VaeDecoder::load(sessions.runtime(), c)?;
            let decoded = fallback.decode(latent)?;
            if decoded.iter().any(|v| !v.is_finite()) {
                return Err(Error::model(
                    &c.graph,
                    "produced NaN/inf too: the latents themselves are not finite",
                ));
            }
            warnings.push(format!(
                "image {index}: the float16 VAE decoder overflowed (NaN/inf); decoded again with {}",
                c.graph.display()
            ));
            Ok(decoded)
        }
        (None, true) => Err(Error::model(
            graph,
            "produced NaN/inf: SD's VAE overflows in float16. Put an fp32 VAE decoder in vae_decoder_fp32/ \
             (scripts/optimize_onnx.py keeps one), or export an fp16-safe VAE (e.g. madebyollin/sdxl-vae-fp16-fix)",
        )),
        (_, false) => Err(Error::model(graph, "produced NaN/inf from finite latents")),
    }
}

/// diffusers' `(image / 2 + 0.5).clamp(0, 1)`, then `(x * 255).round()` (half to even) to u8.
fn to_rgb(decoded: &Array4<f32>) -> RgbImage {
    let (h, w) = (decoded.shape()[2], decoded.shape()[3]);
    let mut pixels = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = (decoded[[0, c, y, x]] / 2.0 + 0.5).clamp(0.0, 1.0);
                pixels.push((v * 255.0).round_ties_even() as u8);
            }
        }
    }
    RgbImage {
        width: w,
        height: h,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::RgbImage;

    /// Into the `image` crate's buffer, pixel for pixel; a hand-made image whose buffer is short reads what is
    /// there and is black elsewhere, never panics.
    #[test]
    fn converts_into_image_rgb() {
        let img = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![1, 2, 3, 4, 5, 6],
        };
        let buf: image::RgbImage = img.clone().into();
        assert_eq!((buf.width(), buf.height()), (2, 1));
        assert_eq!(buf.as_raw(), &img.pixels);
        let short = RgbImage {
            pixels: vec![1, 2, 3],
            ..img
        };
        let buf: image::RgbImage = short.into();
        assert_eq!(buf.as_raw(), &vec![1, 2, 3, 0, 0, 0]);
    }
}
