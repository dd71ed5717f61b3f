//! Writing results: PNG with an A1111-style `parameters` text chunk (what A1111's "PNG Info" tab reads),
//! written to a temporary file beside the target and renamed into place, so that no partial file is left.

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
    s.push_str(&format!(
        "\nSteps: {}, Sampler: {}, Schedule type: {}, CFG scale: {}, Seed: {seed}, Size: {}x{}, Model: {model}{denoise}, RNG: {}",
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

/// Encode `image` as PNG with a `parameters` tEXt chunk (iTXt when the text is not Latin-1) and write it
/// atomically to `path`.
pub fn write_png(path: &Path, image: &RgbImage, parameters: &str) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, image.width as u32, image.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let latin1 = parameters.chars().all(|c| (c as u32) < 256);
        let text_err = |e: png::EncodingError| Error::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        };
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
    write_atomic(path, &bytes)
}

/// Write to `<name>.<pid>.tmp` in the same folder, then rename; remove the temporary file on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
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
        write_png(&path, &img, "a cat\nSteps: 2, Sampler: Euler a").unwrap();
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
        assert!(write_png(&dir.join("no/such/dir/b.png"), &img, "x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
