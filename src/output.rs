//! Writing results: PNG with an A1111-style `parameters` text chunk (what A1111's "PNG Info" tab reads), JPEG
//! with the same text as an EXIF UserComment (where A1111 puts it), or lossless WebP with that EXIF too; written
//! to a temporary file beside the target and renamed into place, so that no partial file is left.

use crate::error::{Error, Result};
use crate::pipeline::{Request, RgbImage};
use crate::rng::RngKind;
use crate::schedulers::SchedulerKind;
use std::io::Write;
use std::path::Path;

/// The sampler names A1111 uses, so that its UI recognises ours.
fn a1111_sampler(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::Pndm => "PLMS",
        SchedulerKind::Ddim => "DDIM",
        SchedulerKind::Euler => "Euler",
        SchedulerKind::EulerAncestral => "Euler a",
        SchedulerKind::DpmPp2m => "DPM++ 2M",
        SchedulerKind::Lms => "LMS",
        SchedulerKind::Ddpm => "DDPM",
        SchedulerKind::Heun => "Heun",
        SchedulerKind::DpmPp2mSde => "DPM++ 2M SDE",
        SchedulerKind::UniPc => "UniPC",
        SchedulerKind::Kdpm2 => "DPM2",
        SchedulerKind::Kdpm2Ancestral => "DPM2 a",
        SchedulerKind::Deis => "DEIS",
        SchedulerKind::Lcm => "LCM",
    }
}

/// The `parameters` text: prompt, negative prompt, then one line of `Key: value` pairs.
pub fn a1111_parameters(req: &Request, seed: u64, model: &str) -> String {
    let mut s = req.prompt.clone();
    if let Some(neg) = req.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
        s.push_str(&format!("\nNegative prompt: {neg}"));
    }
    let denoise = req
        .init
        .as_ref()
        .map(|i| format!(", Denoising strength: {}", i.strength))
        .unwrap_or_default();
    let rescale = if req.guidance_rescale > 0.0 {
        format!(", CFG Rescale: {}", req.guidance_rescale)
    } else {
        String::new()
    };
    s.push_str(&format!(
        "\nSteps: {}, Sampler: {}, Schedule type: {}, CFG scale: {}, Seed: {seed}, Size: {}x{}, Model: {model}{denoise}{rescale}, RNG: {}",
        req.steps,
        a1111_sampler(req.scheduler),
        if req.karras { "Karras" } else { "Automatic" },
        req.guidance,
        req.width,
        req.height,
        match req.rng {
            RngKind::Torch => "CPU",
            RngKind::Numpy => "numpy",
            RngKind::Philox => "NV",
        },
    ));
    s
}

/// The image format an output path asks for, by its extension (none: PNG).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// PNG (lossless).
    Png,
    /// JPEG, quality 95.
    Jpeg,
    /// Lossless WebP.
    WebP,
}

impl OutputFormat {
    /// By the extension of `path`: `.png` (or none), `.jpg`/`.jpeg`, `.webp`.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            None | Some("png") => Ok(OutputFormat::Png),
            Some("jpg") | Some("jpeg") => Ok(OutputFormat::Jpeg),
            Some("webp") => Ok(OutputFormat::WebP),
            Some(other) => Err(Error::Usage(format!(
                "--output {}: .{other} is not a format sd-onnx writes (use .png, .jpg or .webp)",
                path.display()
            ))),
        }
    }
}

/// `image` encoded in `format`, with the A1111 `parameters` text where the format holds it (PNG: a
/// `parameters` text chunk; JPEG and WebP: an EXIF UserComment). For files use [`write_image`]; a server
/// returns these bytes (base64 in A1111's API).
pub fn encode(image: &RgbImage, format: OutputFormat, parameters: &str) -> Result<Vec<u8>> {
    let err = |e: &dyn std::fmt::Display| Error::Encode(format!("{format:?}: {e}"));
    let (w, h) = (image.width as u32, image.height as u32);
    if image.pixels.len() != image.width * image.height * 3 {
        return Err(err(&"pixel buffer does not match the image size"));
    }
    match format {
        OutputFormat::Png => png_bytes(image, parameters),
        OutputFormat::Jpeg => {
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
                .encode(&image.pixels, w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| err(&e))?;
            Ok(jpeg_with_exif(
                &jpeg,
                &exif_user_comment(parameters, 65533 - 6),
            ))
        }
        OutputFormat::WebP => {
            let mut webp = Vec::new();
            image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
                .encode(&image.pixels, w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| err(&e))?;
            Ok(webp_with_exif(
                &webp,
                w,
                h,
                &exif_user_comment(parameters, 1 << 20),
            ))
        }
    }
}

/// Write `image` in the format `path` names, with the A1111 parameters, atomically (see [`encode`]).
pub fn write_image(path: &Path, image: &RgbImage, parameters: &str) -> Result<()> {
    let bytes =
        encode(image, OutputFormat::from_path(path)?, parameters).map_err(|e| Error::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    write_atomic(path, &bytes)
}

/// A TIFF (EXIF) structure holding `text` as the Exif UserComment (tag 0x9286) in piexif's UNICODE form
/// (`UNICODE\0` + UTF-16BE): what A1111 writes into JPEG and WebP files and its PNG Info reads. At most `limit`
/// bytes: a longer text (never a real prompt) is cut.
fn exif_user_comment(text: &str, limit: usize) -> Vec<u8> {
    // Big-endian TIFF: header, IFD0 with one entry (the Exif IFD pointer), the Exif IFD with one entry (the
    // comment), then the comment bytes.
    let exif_ifd = 8 + 2 + 12 + 4;
    let data_at = exif_ifd + 2 + 12 + 4;
    let room = limit - data_at;
    let mut comment = b"UNICODE\0".to_vec();
    comment.extend(text.encode_utf16().flat_map(|u| u.to_be_bytes()));
    comment.truncate(room - room % 2);
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a");
    tiff.extend_from_slice(&8u32.to_be_bytes());
    let entry = |tiff: &mut Vec<u8>, tag: u16, ty: u16, count: u32, value: u32| {
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&tag.to_be_bytes());
        tiff.extend_from_slice(&ty.to_be_bytes());
        tiff.extend_from_slice(&count.to_be_bytes());
        tiff.extend_from_slice(&value.to_be_bytes());
        tiff.extend_from_slice(&0u32.to_be_bytes());
    };
    entry(&mut tiff, 0x8769, 4, 1, exif_ifd as u32);
    entry(&mut tiff, 0x9286, 7, comment.len() as u32, data_at as u32);
    tiff.extend_from_slice(&comment);
    tiff
}

/// Insert an EXIF APP1 segment (`Exif\0\0` + `tiff`, at most 65533 bytes) right after the JPEG's SOI marker.
fn jpeg_with_exif(jpeg: &[u8], tiff: &[u8]) -> Vec<u8> {
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(tiff);
    let mut out = Vec::with_capacity(jpeg.len() + payload.len() + 4);
    out.extend_from_slice(&jpeg[..2.min(jpeg.len())]);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2.min(jpeg.len())..]);
    out
}

/// Turn a simple-format WebP (`RIFF` + one `VP8L`/`VP8 ` chunk, what the encoder writes) into the extended
/// format with an `EXIF` chunk holding `tiff`: a `VP8X` header (EXIF flag, canvas size), the image chunk as it
/// was, then the metadata, as the WebP container specification orders them.
fn webp_with_exif(webp: &[u8], width: u32, height: u32, tiff: &[u8]) -> Vec<u8> {
    let chunk = |out: &mut Vec<u8>, fourcc: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(fourcc);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
    };
    let mut vp8x = vec![0x08, 0, 0, 0]; // flags: EXIF
    vp8x.extend_from_slice(&width.saturating_sub(1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&height.saturating_sub(1).to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    chunk(&mut body, b"VP8X", &vp8x);
    // The file's chunks after its 12-byte RIFF/WEBP header, as they are (a VP8X of its own is replaced).
    let mut rest = webp.get(12..).unwrap_or_default();
    while rest.len() >= 8 {
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + len + len % 2).min(rest.len());
        if &rest[..4] != b"VP8X" {
            body.extend_from_slice(&rest[..end]);
        }
        rest = &rest[end..];
    }
    chunk(&mut body, b"EXIF", tiff);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// PNG with a `parameters` tEXt chunk (iTXt when the text is not Latin-1).
fn png_bytes(image: &RgbImage, parameters: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, image.width as u32, image.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let latin1 = parameters.chars().all(|c| (c as u32) < 256);
        let text_err = |e: png::EncodingError| Error::Encode(format!("Png: {e}"));
        if latin1 {
            enc.add_text_chunk("parameters".into(), parameters.into())
                .map_err(text_err)?;
        } else {
            enc.add_itxt_chunk("parameters".into(), parameters.into())
                .map_err(text_err)?;
        }
        let mut w = enc.write_header().map_err(text_err)?;
        w.write_image_data(&image.pixels).map_err(text_err)?;
        w.finish().map_err(text_err)?;
    }
    Ok(bytes)
}

/// Check, before any work, that `path` can be an output file: not a folder, in a folder that exists.
/// `what` names it in the error (a flag).
pub fn check_output_path(path: &Path, what: &str) -> Result<()> {
    if path.is_dir() {
        return Err(Error::Usage(format!(
            "{what} {}: is a folder; give a file name",
            path.display()
        )));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "{what} {}: the folder {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Write `bytes` to `path` so that no partial file is ever left: to `.<name>.<pid>.tmp` in the same folder,
/// then renamed over it. What is not a regular file is written through, never replaced: a symlink's target
/// gets the atomic write, a device or FIFO (`/dev/null`) is written to directly.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = std::fs::canonicalize(path).map_err(err)?;
            return write_atomic(&target, bytes);
        }
        if meta.is_dir() {
            return Err(err(std::io::Error::other("is a folder")));
        }
        if !meta.is_file() {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| f.write_all(bytes))
                .map_err(err);
        }
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("not a file name")))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_carries_parameters_and_no_temp_file_is_left() {
        let dir = std::env::temp_dir().join(format!("sdonnx-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.png");
        let img = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![1, 2, 3, 4, 5, 6],
        };
        write_image(&path, &img, "a cat\nSteps: 2, Sampler: Euler a").unwrap();
        // The bytes a server would send are the file's.
        let bytes = encode(&img, OutputFormat::Png, "a cat\nSteps: 2, Sampler: Euler a").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let text = &reader.info().uncompressed_latin1_text;
        assert_eq!(text[0].keyword, "parameters");
        assert!(text[0].text.contains("Sampler: Euler a"));
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(leftovers.len(), 1);
        // A folder that does not exist: an error, and nothing written.
        assert!(write_image(&dir.join("no/such/dir/b.png"), &img, "x").is_err());
        // A hand-made image whose buffer does not fit its size is an error, not a panic.
        let bad = RgbImage {
            width: 3,
            ..img.clone()
        };
        assert!(encode(&bad, OutputFormat::Jpeg, "x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn image() -> RgbImage {
        RgbImage {
            width: 16,
            height: 8,
            pixels: (0..16 * 8 * 3).map(|i| (i * 7 % 256) as u8).collect(),
        }
    }

    /// The UserComment text of an EXIF (TIFF) block, found by walking the structure as an EXIF reader does.
    fn user_comment(tiff: &[u8]) -> String {
        let u16_at = |o: usize| u16::from_be_bytes([tiff[o], tiff[o + 1]]) as usize;
        let u32_at = |o: usize| {
            u32::from_be_bytes([tiff[o], tiff[o + 1], tiff[o + 2], tiff[o + 3]]) as usize
        };
        assert_eq!(&tiff[..4], b"MM\0\x2a");
        let ifd0 = u32_at(4);
        assert_eq!((u16_at(ifd0), u16_at(ifd0 + 2)), (1, 0x8769));
        let exif = u32_at(ifd0 + 10);
        assert_eq!(u16_at(exif + 2), 0x9286);
        let (count, at) = (u32_at(exif + 6), u32_at(exif + 10));
        let comment = &tiff[at..at + count];
        assert_eq!(&comment[..8], b"UNICODE\0");
        let units: Vec<u16> = comment[8..]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).unwrap()
    }

    /// JPEG and WebP output decode (WebP losslessly), and carry the parameters as an Exif UserComment in
    /// piexif's UNICODE form: in an APP1 segment, and in a WebP `EXIF` chunk announced by `VP8X`.
    #[test]
    fn jpeg_and_webp_carry_parameters_in_exif() {
        let dir = std::env::temp_dir().join(format!("sdonnx-out-fmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = "a cat, ünïcode\nSteps: 4, Sampler: LCM";
        let p = dir.join("x.JPG");
        write_image(&p, &image(), text).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..4], &[0xFF, 0xD8, 0xFF, 0xE1]);
        assert_eq!(&bytes[6..12], b"Exif\0\0");
        assert_eq!(user_comment(&bytes[12..]), text);
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (16, 8));

        let p = dir.join("x.webp");
        write_image(&p, &image(), text).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((&bytes[..4], &bytes[8..12]), (&b"RIFF"[..], &b"WEBP"[..]));
        let riff_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        assert_eq!(riff_len + 8, bytes.len());
        let mut chunks = Vec::new();
        let mut rest = &bytes[12..];
        while !rest.is_empty() {
            let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            chunks.push((
                String::from_utf8_lossy(&rest[..4]).to_string(),
                &rest[8..8 + len],
            ));
            rest = &rest[8 + len + len % 2..];
        }
        let names: Vec<&str> = chunks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["VP8X", "VP8L", "EXIF"]);
        assert_eq!(chunks[0].1, &[0x08, 0, 0, 0, 15, 0, 0, 7, 0, 0]);
        assert_eq!(user_comment(chunks[2].1), text);
        let decoded = image::open(&p).unwrap().to_rgb8();
        assert_eq!(decoded.as_raw(), &image().pixels, "lossless");
        assert!(matches!(
            OutputFormat::from_path(Path::new("x.bmp")),
            Err(Error::Usage(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
