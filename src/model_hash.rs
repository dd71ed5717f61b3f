//! The `Model hash` of the infotext: the first 10 hex digits of the SHA-256 of the UNet's weights, as A1111's
//! short hash is of its checkpoint file. Ours hashes the UNet's `model.onnx` followed by its external data files
//! in name order (the weights that make the model what it is; the text encoder and VAE are usually shared
//! between fine-tunes). Hashing a 3.4 GB UNet takes seconds, so the result is remembered in the cache folder,
//! keyed by each file's path, size and modification time, as A1111's `cache.json` does.

use crate::error::{Error, Result};
use crate::profile::ModelProfile;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The files hashed, in order.
fn files(profile: &ModelProfile) -> Vec<PathBuf> {
    let mut external = profile.unet.external_data.clone();
    external.sort();
    let mut out = vec![profile.unet.graph.clone()];
    out.extend(external);
    out
}

fn read_err(path: &Path, source: std::io::Error) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// The full SHA-256 (hex) of `paths`, read in 1 MiB blocks.
fn sha256_files(paths: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = std::fs::File::open(p).map_err(|e| read_err(p, e))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| read_err(p, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A1111's `TI hashes` value for these embeddings, (name, file) each: `name: <first 12 hex digits of the file's
/// SHA-256>`, names without `:` and `,`, joined by `, ` (A1111's `textual_inversion_add_hashes_to_infotext`).
pub fn ti_hashes(used: &[(String, PathBuf)]) -> Result<Option<String>> {
    let mut parts = Vec::new();
    for (name, file) in used {
        let hash = sha256_files(std::slice::from_ref(file))?;
        parts.push(format!("{}: {}", name.replace([':', ','], ""), &hash[..12]));
    }
    Ok((!parts.is_empty()).then(|| parts.join(", ")))
}

/// The cache entry for these files' current state, under `cache_dir/hashes`.
fn entry(cache_dir: &Path, paths: &[PathBuf]) -> Option<PathBuf> {
    let mut key = String::new();
    for p in paths {
        key.push_str(&crate::runtime::cache_stamp(p)?);
        key.push('\n');
    }
    // FNV-1a of the stamps names the entry; the entry holds the stamps too, and is used only if they match.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    Some(cache_dir.join("hashes").join(format!("unet-{h:016x}.txt")))
}

/// The short model hash (10 hex digits) of `profile`'s UNet: the start of [`unet_sha256`].
pub fn unet_hash(profile: &ModelProfile, cache_dir: Option<&Path>) -> Result<String> {
    Ok(unet_sha256(profile, cache_dir)?[..10].to_string())
}

/// The full SHA-256 (64 hex digits) of `profile`'s UNet files (A1111's `sha256` of a checkpoint), from the
/// cache in `cache_dir` when the files are unchanged; a cache that cannot be read or written is skipped
/// silently (the hash is only recomputed).
pub fn unet_sha256(profile: &ModelProfile, cache_dir: Option<&Path>) -> Result<String> {
    let paths = files(profile);
    let cached = cache_dir.and_then(|d| entry(d, &paths));
    let stamps: String = paths
        .iter()
        .filter_map(|p| crate::runtime::cache_stamp(p))
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(entry) = &cached
        && let Ok(text) = std::fs::read_to_string(entry)
        && let Some((hash, stamp)) = text.split_once('\n')
        && stamp == stamps
        && hash.len() == 64
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok(hash.to_string());
    }
    let full = sha256_files(&paths)?;
    if let Some(entry) = cached
        && let Some(dir) = entry.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, format!("{full}\n{stamps}")).is_ok() {
            let _ = std::fs::rename(&tmp, &entry);
        }
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_of_the_unet_files_and_is_cached() {
        let profile = ModelProfile::load(Path::new("onnx/sd-tiny-optimum")).unwrap();
        let full = sha256_files(&files(&profile)).unwrap();
        let dir = std::env::temp_dir().join(format!("sd-onnx-hash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(unet_hash(&profile, None).unwrap(), full[..10]);
        assert_eq!(unet_hash(&profile, Some(&dir)).unwrap(), full[..10]);
        assert_eq!(unet_sha256(&profile, Some(&dir)).unwrap(), full);
        let entries: Vec<_> = std::fs::read_dir(dir.join("hashes")).unwrap().collect();
        assert_eq!(entries.len(), 1);
        // A cached value is used as long as the stamps match: a planted one comes back.
        let e = entries[0].as_ref().unwrap().path();
        let text = std::fs::read_to_string(&e).unwrap();
        std::fs::write(&e, text.replacen(&full[..10], "0123456789", 1)).unwrap();
        assert_eq!(unet_hash(&profile, Some(&dir)).unwrap(), "0123456789");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
