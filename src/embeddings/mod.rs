//! Textual-inversion embeddings from a folder (A1111's `--embeddings-dir`): each file's stem is the word that
//! triggers it in a prompt. Formats, as A1111's `textual_inversion.py` and diffusers' `load_textual_inversion`
//! read them:
//! * A1111 `.pt` (a `torch.save` zip): `string_to_param["*"]`, (vectors, width);
//! * A1111 `.safetensors`: `emb_params`;
//! * SDXL `.safetensors`: `clip_l` and `clip_g`, one set per text encoder;
//! * diffusers' `learned_embeds.bin` / `.safetensors`: `{token: vectors}`; its token triggers it too.
//!
//! Loading is file I/O and lives here; the pipeline receives [`Embedding`]s
//! ([`crate::pipeline::Pipeline::set_embeddings`]).

pub mod torch;

use crate::error::{Error, Result};
use ndarray::Array2;
use std::path::{Path, PathBuf};

/// One embedding, loaded and checked against the model's text encoders.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// The file's stem: the word that triggers it.
    pub name: String,
    /// Other words that trigger it (a diffusers file's own token, such as `<cat-toy>`).
    pub aliases: Vec<String>,
    /// Where it came from.
    pub file: PathBuf,
    /// Its vectors for each text encoder, (vectors, width): one set, or SDXL's two (`clip_l`, `clip_g`).
    pub vectors: Vec<Array2<f32>>,
}

impl Embedding {
    /// How many token positions it takes.
    pub fn len(&self) -> usize {
        self.vectors.first().map_or(0, |v| v.nrows())
    }

    /// Whether it has no vectors (never true of a loaded one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file of the folder that did not load, and why.
#[derive(Clone, Debug)]
pub struct Refused {
    /// The file.
    pub file: PathBuf,
    /// Why (one line).
    pub reason: String,
}

/// A safetensors tensor's values as f32 (F32, F16 or BF16 stored; `None` for other types).
pub(crate) fn float_values(t: &safetensors::tensor::TensorView<'_>) -> Option<Vec<f32>> {
    Some(match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::BF16 => t
            .data()
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Most vectors one embedding may have: it must fit in one 75-token chunk.
pub const MAX_VECTORS: usize = 75;
/// Largest embedding file read (real ones are kilobytes).
const MAX_FILE: u64 = 64 << 20;

/// Every embedding in `dir` (not recursive: A1111 recurses, but a folder of SD 1.x and SDXL embeddings then
/// needs sorting anyway), checked against text encoders of these `widths` (one per encoder). Files that do not
/// load are returned with the reason, as A1111 lists them; only an unreadable folder is an error.
pub fn load_dir(dir: &Path, widths: &[usize]) -> Result<(Vec<Embedding>, Vec<Refused>)> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let (mut loaded, mut refused) = (Vec::new(), Vec::new());
    for file in files {
        let ext = file
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if !matches!(ext.as_str(), "pt" | "bin" | "safetensors") {
            if !file
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                refused.push(Refused {
                    reason: format!(
                        "not an embedding file (.pt, .bin or .safetensors){}",
                        if ext == "png" || ext == "webp" {
                            "; embeddings stored in images are not read"
                        } else {
                            ""
                        }
                    ),
                    file,
                });
            }
            continue;
        }
        match load_file(&file, widths) {
            Ok(e) => loaded.push(e),
            Err(reason) => refused.push(Refused { file, reason }),
        }
    }
    // Two files with one trigger: the first (by name) wins, as one word can mean one thing.
    let mut seen: Vec<String> = Vec::new();
    let mut kept = Vec::new();
    for e in loaded {
        if seen.contains(&e.name) {
            refused.push(Refused {
                reason: format!("another file already defines `{}`", e.name),
                file: e.file,
            });
            continue;
        }
        seen.push(e.name.clone());
        seen.extend(e.aliases.iter().cloned());
        kept.push(e);
    }
    Ok((kept, refused))
}

fn tensor2(
    shape: &[usize],
    data: Vec<f32>,
    what: &str,
) -> std::result::Result<Array2<f32>, String> {
    let shape = match shape {
        [w] => (1, *w),
        [n, w] => (*n, *w),
        other => {
            return Err(format!(
                "{what} has shape {other:?}; an embedding is (vectors, width)"
            ));
        }
    };
    Array2::from_shape_vec(shape, data).map_err(|e| format!("{what}: {e}"))
}

/// One file, checked against the encoders' `widths`; the error is the reason, one line.
pub fn load_file(file: &Path, widths: &[usize]) -> std::result::Result<Embedding, String> {
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.trim().is_empty())
        .ok_or("has no name to trigger it")?;
    let size = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    if size > MAX_FILE {
        return Err(format!(
            "is {size} bytes; embeddings are small (at most {MAX_FILE} read)"
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let is_safetensors = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    // (key, shape, data) of every tensor, in file order.
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = if is_safetensors {
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| format!("is not a readable safetensors file: {e}"))?;
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            let t = st.tensor(&n).map_err(|e| format!("`{n}`: {e}"))?;
            let data = float_values(&t)
                .ok_or_else(|| format!("`{n}` is {:?}; embeddings are float", t.dtype()))?;
            out.push((n, t.shape().to_vec(), data));
        }
        out
    } else {
        let v = torch::load(&bytes)?;
        let Value::Dict(items) = &v else {
            return Err("holds no dict of tensors".into());
        };
        let mut out = Vec::new();
        if let Some(Value::Dict(params)) = v.get("string_to_param") {
            // A1111: {"*": tensor}.
            for (_, t) in params {
                if let Value::Tensor(s, d) = t {
                    out.push(("string_to_param".to_string(), s.clone(), d.clone()));
                }
            }
        } else {
            for (k, t) in items {
                if let (Value::Str(k), Value::Tensor(s, d)) = (k, t) {
                    out.push((k.clone(), s.clone(), d.clone()));
                }
            }
        }
        out
    };
    use torch::Value;
    let find = |key: &str| tensors.iter().find(|(k, _, _)| k == key);
    let mut aliases = Vec::new();
    let vectors: Vec<Array2<f32>> = match (find("clip_l"), find("clip_g")) {
        (Some(l), Some(g)) => vec![
            tensor2(&l.1, l.2.clone(), "clip_l")?,
            tensor2(&g.1, g.2.clone(), "clip_g")?,
        ],
        _ => {
            let (key, shape, data) = find("emb_params")
                .or_else(|| find("string_to_param"))
                .or_else(|| (tensors.len() == 1).then(|| &tensors[0]))
                .ok_or_else(|| {
                    // A few names say what the file is (a LoRA's hundreds would bury the message).
                    let keys: Vec<&str> =
                        tensors.iter().take(3).map(|(k, _, _)| k.as_str()).collect();
                    let more = match tensors.len().saturating_sub(keys.len()) {
                        0 => String::new(),
                        n => format!(" and {n} more"),
                    };
                    format!(
                        "is not an embedding: expected string_to_param, emb_params, clip_l + clip_g or one \
                         {{token: tensor}}, found {keys:?}{more}"
                    )
                })?;
            if !matches!(key.as_str(), "emb_params" | "string_to_param") && *key != name {
                aliases.push(key.clone());
            }
            vec![tensor2(shape, data.clone(), key)?]
        }
    };
    match (vectors.len(), widths.len()) {
        (2, 1) => {
            return Err(
                "is an SDXL embedding (clip_l, clip_g); this model has one text encoder".into(),
            );
        }
        (1, 2) => {
            return Err(format!(
                "has one set of vectors ({} wide); SDXL takes embeddings with clip_l and clip_g",
                vectors[0].ncols()
            ));
        }
        _ => {}
    }
    for (i, (v, &w)) in vectors.iter().zip(widths).enumerate() {
        if v.ncols() != w {
            let which = if widths.len() > 1 {
                format!("text encoder {}", i + 1)
            } else {
                "text encoder".into()
            };
            return Err(format!(
                "its vectors are {} wide; this model's {which} is {w} wide",
                v.ncols()
            ));
        }
    }
    let n = vectors[0].nrows();
    if n == 0 || n > MAX_VECTORS || vectors.iter().any(|v| v.nrows() != n) {
        return Err(format!(
            "has {n} vectors; an embedding has 1 to {MAX_VECTORS}, the same number per encoder"
        ));
    }
    if vectors.iter().any(|v| v.iter().any(|x| !x.is_finite())) {
        return Err("has non-finite values".into());
    }
    Ok(Embedding {
        name,
        aliases,
        file: file.to_path_buf(),
        vectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_three_formats_and_refuses_by_width() {
        let dir = Path::new("tests/fixtures/embeddings");
        let (loaded, refused) = load_dir(dir, &[16]).unwrap();
        let names: Vec<(&str, usize)> = loaded.iter().map(|e| (e.name.as_str(), e.len())).collect();
        assert_eq!(
            names,
            vec![
                ("cat-toy", 3),
                ("glow", 1),
                ("sparkle", 1),
                ("tiny-style", 2)
            ]
        );
        assert_eq!(loaded[0].aliases, vec!["<cat-toy>".to_string()]);
        assert!(refused.is_empty(), "{refused:?}");
        let (_, refused) = load_dir(&dir.join("bad"), &[16]).unwrap();
        assert!(refused[0].reason.contains("32 wide") && refused[0].reason.contains("16 wide"));
        let (loaded, _) = load_dir(&dir.join("xl"), &[8, 8]).unwrap();
        assert_eq!(loaded[0].vectors.len(), 2);
        let (_, refused) = load_dir(&dir.join("xl"), &[16]).unwrap();
        assert!(refused[0].reason.contains("SDXL"));
        let (_, refused) = load_dir(dir, &[8, 8]).unwrap();
        assert!(refused.iter().all(|r| r.reason.contains("clip_l")));
    }
}
