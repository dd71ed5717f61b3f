//! Writing results: PNG with an A1111-style `parameters` text chunk (what A1111's "PNG Info" tab reads), JPEG
//! with the same text as an EXIF UserComment (where A1111 puts it), or lossless WebP with that EXIF too; written
//! to a temporary file beside the target and renamed into place, so that no partial file is left.

use crate::error::{Error, Result};
use crate::pipeline::RgbImage;
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// One image of a run, for naming its file.
#[derive(Clone, Copy, Debug)]
pub struct ImageSlot {
    /// Its seed.
    pub seed: u64,
    /// Its batch (0-based).
    pub batch: usize,
    /// Its position in the batch.
    pub pos: usize,
}

/// `pattern` with `{seed}`, `{i}`, `{batch}`, `{pos}` and printf's `%d` / `%0Nd` (= `{i}`) filled in; `None`
/// when it has no placeholder.
fn fill(pattern: &str, i: usize, slot: ImageSlot) -> Option<String> {
    let mut out = pattern
        .replace("{seed}", &slot.seed.to_string())
        .replace("{i}", &i.to_string())
        .replace("{batch}", &slot.batch.to_string())
        .replace("{pos}", &slot.pos.to_string());
    if let Some(at) = out.find('%') {
        let rest = &out[at + 1..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if rest[digits.len()..].starts_with('d') {
            let width: usize = digits.parse().unwrap_or(0).min(20);
            let n = format!("{i:0width$}");
            out = format!("{}{n}{}", &out[..at], &rest[digits.len() + 1..]);
        }
    }
    (out != pattern).then_some(out)
}

/// `base` with `-<suffix>` before its extension.
fn suffixed(base: &Path, suffix: &str) -> PathBuf {
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match base.extension() {
        Some(ext) => base.with_file_name(format!("{stem}-{suffix}.{}", ext.to_string_lossy())),
        None => base.with_file_name(format!("{stem}-{suffix}")),
    }
}

/// A regular file is there (devices, FIFOs and dangling symlinks are written through, not clobbered).
fn taken(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Where each image of a run is written, decided before the run, never clobbering silently:
/// * `output` given: its placeholders filled (`{seed}`, `{i}` = index in the run, `{batch}`, `{pos}`, `%d`,
///   `%03d`); without any, several images get `-<i>` before the extension. A name that exists as a file is
///   refused unless `overwrite`, and so is a pattern that gives two images one name.
/// * none: `sd-onnx-{seed}.png` (with `-<i>` when the images share a seed), numbered past existing files
///   (`sd-onnx-5-2.png`, `-3`, ...).
pub fn output_paths(
    output: Option<&Path>,
    images: &[ImageSlot],
    overwrite: bool,
) -> Result<Vec<PathBuf>> {
    let n = images.len();
    let shared_seeds = {
        let mut seeds: Vec<u64> = images.iter().map(|s| s.seed).collect();
        seeds.sort_unstable();
        seeds.dedup();
        seeds.len() < n
    };
    let mut out: Vec<PathBuf> = Vec::with_capacity(n);
    for (i, &slot) in images.iter().enumerate() {
        let path = match output {
            Some(pattern) => {
                let filled = pattern.to_str().and_then(|p| fill(p, i, slot));
                let path = match filled {
                    Some(p) => PathBuf::from(p),
                    None if n > 1 => suffixed(pattern, &i.to_string()),
                    None => pattern.to_path_buf(),
                };
                if let Some(j) = out.iter().position(|o| *o == path) {
                    return Err(Error::Usage(format!(
                        "--output {}: images {j} and {i} would both be written to {} (add {{i}} or {{seed}})",
                        pattern.display(),
                        path.display()
                    )));
                }
                if !overwrite && taken(&path) {
                    return Err(Error::Usage(format!(
                        "--output {}: exists; pass --overwrite to replace it, or name the files with a pattern \
                         such as out-{{seed}}.png",
                        path.display()
                    )));
                }
                path
            }
            None => {
                let base = PathBuf::from(format!("sd-onnx-{}.png", slot.seed));
                let base = if shared_seeds {
                    suffixed(&base, &i.to_string())
                } else {
                    base
                };
                let mut path = base.clone();
                let mut k = 2;
                while (taken(&path) && !overwrite) || out.contains(&path) {
                    path = suffixed(&base, &k.to_string());
                    k += 1;
                }
                path
            }
        };
        out.push(path);
    }
    Ok(out)
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
    #[test]
    fn output_names_fill_patterns_and_never_clobber() {
        let dir = std::env::temp_dir().join(format!("sd-onnx-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let slots: Vec<ImageSlot> = (0..4)
            .map(|i| ImageSlot {
                seed: 10 + i as u64,
                batch: i / 2,
                pos: i % 2,
            })
            .collect();
        let names = |pattern: &str, overwrite: bool| {
            output_paths(Some(&dir.join(pattern)), &slots, overwrite).map(|v| {
                v.iter()
                    .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            names("a.png", false).unwrap(),
            ["a-0.png", "a-1.png", "a-2.png", "a-3.png"]
        );
        assert_eq!(names("s{seed}.jpg", false).unwrap()[3], "s13.jpg");
        assert_eq!(names("b{batch}-{pos}.png", false).unwrap()[2], "b1-0.png");
        assert_eq!(names("out-%03d.png", false).unwrap()[1], "out-001.png");
        assert_eq!(names("out-%d.png", false).unwrap()[3], "out-3.png");
        let e = names("same{batch}.png", false).unwrap_err().to_string();
        assert!(e.contains("images 0 and 1 would both be written"), "{e}");
        // An existing file is refused, unless --overwrite.
        std::fs::write(dir.join("a-2.png"), b"x").unwrap();
        let e = names("a.png", false).unwrap_err().to_string();
        assert!(e.contains("a-2.png: exists; pass --overwrite"), "{e}");
        assert!(names("a.png", true).is_ok());
        // A device is written through, not refused.
        let one = [slots[0]];
        assert!(output_paths(Some(Path::new("/dev/null")), &one, false).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn default_names_number_past_existing_files() {
        let dir = std::env::temp_dir().join(format!("sd-onnx-default-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let slot = |seed| ImageSlot {
            seed,
            batch: 0,
            pos: 0,
        };
        let names = output_paths(None, &[slot(5), slot(6)], false).unwrap();
        assert_eq!(
            names,
            [
                PathBuf::from("sd-onnx-5.png"),
                PathBuf::from("sd-onnx-6.png")
            ]
        );
        // Shared seeds get their index; names are relative, so check numbering against a file in cwd.
        let shared = output_paths(None, &[slot(5), slot(5)], false).unwrap();
        assert_eq!(
            shared,
            [
                PathBuf::from("sd-onnx-5-0.png"),
                PathBuf::from("sd-onnx-5-1.png")
            ]
        );
        let probe = cwd.join(format!("sd-onnx-{}.png", u64::MAX - 7));
        if !probe.exists() {
            std::fs::write(&probe, b"x").unwrap();
            let names = output_paths(None, &[slot(u64::MAX - 7)], false).unwrap();
            let _ = std::fs::remove_file(&probe);
            assert_eq!(
                names[0],
                PathBuf::from(format!("sd-onnx-{}-2.png", u64::MAX - 7))
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

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
