//! LoRA files, read as the people who train them write them, and merged into an untouched export's weights when
//! its sessions are created (no re-export). Formats (`.safetensors` only):
//! * kohya-ss: `lora_unet_*`, `lora_te_*` (SDXL `lora_te1_`/`lora_te2_`), `.lora_down.weight`/`.lora_up.weight`,
//!   `.alpha` (scale alpha / rank; no alpha: rank), LoCon convolutions (1x1 and 3x3) and LyCORIS' `.lora_mid`
//!   Tucker core; SDXL's UNet in SGM (LDM) block names, mapped as diffusers' `_maybe_map_sgm_blocks_to_diffusers`
//!   and `_convert_unet_lora_key` do;
//! * diffusers/PEFT: `unet.<module>.lora_A.weight`/`lora_B.weight`, `text_encoder.`/`text_encoder_2.`, and the
//!   older `.lora.down.weight`/`.lora.up.weight`;
//! * LyCORIS LoHa (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`) and LoKr (`lokr_w1` or `lokr_w1_a/b`,
//!   `lokr_w2` or `lokr_w2_a/b`), merged with the published formulas (A1111's `network_hada.py` /
//!   `network_lokr.py`, LyCORIS' `functional`).
//!
//! Reading is file I/O and lives here ([`LoraFile::read`]); [`graph`] maps modules to a graph's initializers
//! and computes the merged values; the pipeline receives [`Active`] sets ([`crate::pipeline::Pipeline::set_loras`]).

pub mod graph;
pub mod merge;

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest LoRA file read (an SDXL LoRA of rank 256 is under 2 GB).
const MAX_FILE: u64 = 4 << 30;

/// Which graph a module belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// The UNet.
    Unet,
    /// The (first) text encoder.
    TextEncoder,
    /// SDXL's second text encoder.
    TextEncoder2,
}

impl Target {
    /// The component's folder name.
    pub fn component(self) -> &'static str {
        match self {
            Target::Unet => "unet",
            Target::TextEncoder => "text_encoder",
            Target::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// A tensor of the file, as f32.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

impl Tensor {
    /// Rows (the first dimension) and the product of the rest.
    pub fn rows_cols(&self) -> (usize, usize) {
        let rows = self.shape.first().copied().unwrap_or(1);
        (rows, self.data.len().checked_div(rows).unwrap_or(0))
    }
}

/// One factor of a LoKr product: stored whole or as a low-rank pair.
#[derive(Clone, Debug)]
pub enum Factor {
    /// `lokr_wN`.
    Full(Tensor),
    /// `lokr_wN_a @ lokr_wN_b`.
    Low(Tensor, Tensor),
}

/// How a module's weight difference is stored.
#[derive(Clone, Debug)]
pub enum Kind {
    /// LoRA / LoCon: up (out, r[, 1, 1]) @ down (r, in[, kh, kw]); with a Tucker core `mid` (r, r, kh, kw), down
    /// and up are 1x1.
    Lora {
        /// `lora_down` / `lora_A`.
        down: Tensor,
        /// `lora_up` / `lora_B`.
        up: Tensor,
        /// `lora_mid`.
        mid: Option<Tensor>,
    },
    /// LoHa: (w1a @ w1b) * (w2a @ w2b).
    Loha {
        /// `hada_w1_a` (out, r).
        w1a: Tensor,
        /// `hada_w1_b` (r, in...).
        w1b: Tensor,
        /// `hada_w2_a`.
        w2a: Tensor,
        /// `hada_w2_b`.
        w2b: Tensor,
    },
    /// LoKr: kron(w1, w2).
    Lokr {
        /// The first (small) factor.
        w1: Factor,
        /// The second factor.
        w2: Factor,
    },
}

impl Kind {
    /// The format's name, for `lora inspect`.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Lora { mid: Some(_), .. } => "LoCon (Tucker)",
            Kind::Lora { down, .. } if down.shape.len() == 4 && down.shape[2..] != [1, 1] => {
                "LoCon"
            }
            Kind::Lora { .. } => "LoRA",
            Kind::Loha { .. } => "LoHa",
            Kind::Lokr { .. } => "LoKr",
        }
    }

    /// The rank the alpha divides by (None: LoKr with both factors whole, whose scale is 1).
    pub fn rank(&self) -> Option<usize> {
        match self {
            Kind::Lora { down, .. } => down.shape.first().copied(),
            Kind::Loha { w1b, .. } => w1b.shape.first().copied(),
            Kind::Lokr { w1, w2 } => match (w1, w2) {
                (Factor::Low(_, b), _) | (_, Factor::Low(_, b)) => b.shape.first().copied(),
                _ => None,
            },
        }
    }
}

/// One module of the file: where it goes and what it adds.
#[derive(Clone, Debug)]
pub struct Module {
    /// The graph it belongs to.
    pub target: Target,
    /// The module's path with `_` for `.`, e.g. `down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`:
    /// what graph node names are compared with (SGM names after [`sgm_to_diffusers`]).
    pub path: String,
    /// Whether `path` is in SGM (LDM) block names (`input_blocks_4_1_…`), as kohya writes SDXL UNets.
    pub sgm: bool,
    /// The key prefix in the file (for messages).
    pub key: String,
    /// Its factors.
    pub kind: Kind,
    /// `.alpha`, when stored.
    pub alpha: Option<f32>,
}

impl Module {
    /// alpha / rank (1 without alpha, as kohya's and diffusers' loaders do).
    pub fn scale(&self) -> f32 {
        match (self.alpha, self.kind.rank()) {
            (Some(a), Some(r)) if r > 0 => a / r as f32,
            _ => 1.0,
        }
    }
}

/// A LoRA file, read and parsed.
#[derive(Clone, Debug)]
pub struct LoraFile {
    /// Where it came from.
    pub path: PathBuf,
    /// Its stem: what `<lora:NAME:...>` calls it.
    pub name: String,
    /// The key convention: `kohya`, `diffusers/PEFT` or `LyCORIS`.
    pub convention: &'static str,
    /// `ss_base_model_version` (`sd_v1`, `sd_v2`, `sdxl_base_v1-0`...), when the trainer wrote it.
    pub base_model: Option<String>,
    /// The safetensors metadata.
    pub metadata: BTreeMap<String, String>,
    /// Its modules.
    pub modules: Vec<Module>,
    /// A1111's `Lora hashes` value: the first 12 hex digits of the SHA-256 of the file after its header
    /// (sd-scripts' "addnet" hash, which A1111 uses for `.safetensors`).
    pub short_hash: String,
    /// Path, size and modification time: what identifies this file's content in cache keys.
    pub stamp: String,
}

/// One LoRA in use and its weights (A1111's `<lora:NAME:TE:UNET>`).
#[derive(Clone, Debug)]
pub struct Active {
    /// The file.
    pub file: std::sync::Arc<LoraFile>,
    /// Multiplier for the text encoder(s).
    pub te: f32,
    /// Multiplier for the UNet.
    pub unet: f32,
}

impl Active {
    /// The multiplier for a target.
    pub fn weight(&self, t: Target) -> f32 {
        match t {
            Target::Unet => self.unet,
            _ => self.te,
        }
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::model(path, msg)
}

/// Every tensor of a safetensors file as f32, and its metadata.
fn read_safetensors(
    path: &Path,
    bytes: &[u8],
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(path, format!("is not a readable safetensors file: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(path, format!("is not a readable safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        let data = crate::embeddings::float_values(&t).ok_or_else(|| {
            bad(
                path,
                format!("tensor `{name}` is {:?}; LoRA weights are float", t.dtype()),
            )
        })?;
        out.insert(
            name,
            Tensor {
                shape: t.shape().to_vec(),
                data,
            },
        );
    }
    let metadata = meta
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    Ok((out, metadata))
}

/// The suffixes that name a module's factors, longest first, and the factor each is.
const SUFFIXES: &[(&str, &str)] = &[
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".hada_w1_a", "hada_w1_a"),
    (".hada_w1_b", "hada_w1_b"),
    (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"),
    (".lokr_w1_a", "lokr_w1_a"),
    (".lokr_w1_b", "lokr_w1_b"),
    (".lokr_w2_a", "lokr_w2_a"),
    (".lokr_w2_b", "lokr_w2_b"),
    (".lokr_w1", "lokr_w1"),
    (".lokr_w2", "lokr_w2"),
    (".alpha", "alpha"),
];

/// Parts the merge does not implement; a file that has them is refused rather than half applied.
const UNSUPPORTED: &[(&str, &str)] = &[
    (".dora_scale", "DoRA (weight-decomposed LoRA)"),
    (".hada_t1", "LoHa with Tucker cores (hada_t1/hada_t2)"),
    (".hada_t2", "LoHa with Tucker cores (hada_t1/hada_t2)"),
    (".lokr_t2", "LoKr with a Tucker core (lokr_t2)"),
    (".lora_magnitude_vector", "DoRA (weight-decomposed LoRA)"),
];

impl LoraFile {
    /// Read and parse `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(path, "has no name"))?;
        if !path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
        {
            return Err(bad(
                path,
                "is not a .safetensors file (LoRA files are read from .safetensors only; convert a .pt/.ckpt \
                 one with sd-scripts or `safetensors.torch.save_file`)",
            ));
        }
        let read_err = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_FILE {
            return Err(bad(
                path,
                format!("is {len} bytes; larger than any LoRA ({MAX_FILE} read at most)"),
            ));
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        let (tensors, metadata) = read_safetensors(path, &bytes)?;
        let header = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .unwrap_or(0);
        let body = usize::try_from(header)
            .ok()
            .and_then(|h| h.checked_add(8))
            .and_then(|start| bytes.get(start..))
            .unwrap_or_default();
        let short_hash = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(body);
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()[..12].to_string()
        };
        let stamp = stamp_of(path);
        let (modules, convention) = parse_modules(path, tensors)?;
        Ok(LoraFile {
            path: path.to_path_buf(),
            name,
            convention,
            base_model: metadata.get("ss_base_model_version").cloned(),
            metadata,
            modules,
            short_hash,
            stamp,
        })
    }

    /// The targets it has modules for.
    pub fn targets(&self) -> Vec<Target> {
        let mut t: Vec<Target> = self.modules.iter().map(|m| m.target).collect();
        t.sort();
        t.dedup();
        t
    }
}

/// Group the tensors by module and say where each module goes.
fn parse_modules(
    path: &Path,
    tensors: BTreeMap<String, Tensor>,
) -> Result<(Vec<Module>, &'static str)> {
    let mut groups: BTreeMap<String, BTreeMap<&'static str, Tensor>> = BTreeMap::new();
    let mut ignored = Vec::new();
    for (key, t) in tensors {
        if let Some((_, what)) = UNSUPPORTED.iter().find(|(s, _)| key.ends_with(s)) {
            return Err(bad(
                path,
                format!("has {what} (`{key}`), which sd-onnx does not merge yet"),
            ));
        }
        match SUFFIXES.iter().find(|(s, _)| key.ends_with(s)) {
            Some((s, what)) => {
                let prefix = key[..key.len() - s.len()].to_string();
                groups.entry(prefix).or_default().insert(what, t);
            }
            None => ignored.push(key),
        }
    }
    if groups.is_empty() {
        let some: Vec<&str> = ignored.iter().take(3).map(String::as_str).collect();
        return Err(bad(
            path,
            format!(
                "holds no LoRA weights (no lora_down/lora_up, lora_A/lora_B, hada_* or lokr_* keys{})",
                if some.is_empty() {
                    String::new()
                } else {
                    format!("; it has e.g. {}", some.join(", "))
                }
            ),
        ));
    }
    let sgm = groups
        .keys()
        .any(|k| k.contains("input_blocks") || k.contains("output_blocks"));
    let (mut kohya, mut peft, mut lyco) = (false, false, false);
    let mut modules = Vec::new();
    for (prefix, mut parts) in groups {
        let (target, raw) = locate(&prefix).ok_or_else(|| {
            bad(
                path,
                format!(
                    "key `{prefix}` names no UNet or text-encoder module (kohya lora_unet_/lora_te_, \
                     diffusers unet./text_encoder.)"
                ),
            )
        })?;
        let dotted = prefix.starts_with("unet.") || prefix.starts_with("text_encoder");
        let path_us = raw.replace('.', "_");
        let alpha = parts.remove("alpha").and_then(|a| a.data.first().copied());
        let need = |parts: &mut BTreeMap<&'static str, Tensor>, k: &str| {
            parts
                .remove(k)
                .ok_or_else(|| bad(path, format!("module `{prefix}` has no `{k}` tensor")))
        };
        let kind = if parts.contains_key("down") || parts.contains_key("up") {
            if dotted {
                peft = true;
            } else {
                kohya = true;
            }
            let down = need(&mut parts, "down")?;
            let up = need(&mut parts, "up")?;
            Kind::Lora {
                down,
                up,
                mid: parts.remove("mid"),
            }
        } else if parts.contains_key("hada_w1_a") {
            lyco = true;
            Kind::Loha {
                w1a: need(&mut parts, "hada_w1_a")?,
                w1b: need(&mut parts, "hada_w1_b")?,
                w2a: need(&mut parts, "hada_w2_a")?,
                w2b: need(&mut parts, "hada_w2_b")?,
            }
        } else if parts.keys().any(|k| k.starts_with("lokr_")) {
            lyco = true;
            let mut factor = |n: &str| -> Result<Factor> {
                if let Some(t) = parts.remove(format!("lokr_{n}").as_str()) {
                    return Ok(Factor::Full(t));
                }
                let a = need(&mut parts, &format!("lokr_{n}_a"))?;
                let b = need(&mut parts, &format!("lokr_{n}_b"))?;
                Ok(Factor::Low(a, b))
            };
            let w1 = factor("w1")?;
            let w2 = factor("w2")?;
            Kind::Lokr { w1, w2 }
        } else {
            return Err(bad(
                path,
                format!("module `{prefix}` has an alpha but no weights"),
            ));
        };
        merge::check_shapes(&kind).map_err(|m| bad(path, format!("module `{prefix}`: {m}")))?;
        modules.push(Module {
            target,
            sgm: target == Target::Unet && sgm && !dotted,
            path: path_us,
            key: prefix,
            kind,
            alpha,
        });
    }
    let convention = match (kohya, peft, lyco) {
        (false, true, false) => "diffusers/PEFT",
        (true, false, false) => "kohya",
        (false, false, true) => "LyCORIS",
        (true, false, true) => "kohya + LyCORIS",
        _ => "mixed (diffusers/PEFT and kohya/LyCORIS keys)",
    };
    Ok((modules, convention))
}

/// Which graph a key prefix belongs to, and the module path after the prefix.
fn locate(prefix: &str) -> Option<(Target, String)> {
    const PREFIXES: &[(&str, Target)] = &[
        ("lora_unet_", Target::Unet),
        ("lora_te1_", Target::TextEncoder),
        ("lora_te2_", Target::TextEncoder2),
        ("lora_te_", Target::TextEncoder),
        ("unet.", Target::Unet),
        ("text_encoder_2.", Target::TextEncoder2),
        ("text_encoder.", Target::TextEncoder),
    ];
    PREFIXES
        .iter()
        .find_map(|(p, t)| prefix.strip_prefix(p).map(|rest| (*t, rest)))
        .map(|(t, rest)| {
            // Old diffusers attention-processor keys (before 0.20): `…attn1.processor.to_q_lora.down.weight` is
            // `…attn1.to_q`, and `to_out_lora` is `to_out.0`.
            let mut path = rest.replace(".processor.", ".");
            if let Some(head) = path.strip_suffix("to_out") {
                path = format!("{head}to_out.0");
            }
            (t, path)
        })
}

/// A kohya SGM (LDM) UNet module name, `_`-joined, in diffusers' names: what diffusers'
/// `_maybe_map_sgm_blocks_to_diffusers` + `_convert_unet_lora_key` do. `layers_per_block` is 2 for every SD
/// and SDXL UNet; [`graph`] passes the UNet's own count (its config, else its graph).
pub fn sgm_to_diffusers(name: &str, layers_per_block: Option<usize>) -> String {
    let per = layers_per_block.unwrap_or(2) + 1;
    let p: Vec<&str> = name.split('_').collect();
    let num = |i: usize| p.get(i).and_then(|s| s.parse::<usize>().ok());
    let rest = |from: usize| p.get(from..).map(|r| r.join("_")).unwrap_or_default();
    let simple = [
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
        ("label_emb_0_0", "add_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
        ("input_blocks_0_0", "conv_in"),
        ("out_2", "conv_out"),
    ];
    if let Some((_, to)) = simple.iter().find(|(from, _)| name == *from) {
        return to.to_string();
    }
    let resnet = |r: String| -> String {
        match r.as_str() {
            "in_layers_2" => "conv1".into(),
            "out_layers_3" => "conv2".into(),
            "emb_layers_1" => "time_emb_proj".into(),
            "skip_connection" => "conv_shortcut".into(),
            _ => r,
        }
    };
    match (p.first().copied(), p.get(1).copied()) {
        (Some("input"), Some("blocks")) => match (num(2), num(3)) {
            (Some(i), Some(inner)) if i >= 1 => {
                let (block, layer) = ((i - 1) / per, (i - 1) % per);
                let r = rest(4);
                if r == "op" {
                    format!("down_blocks_{block}_downsamplers_0_conv")
                } else if inner == 0 {
                    format!("down_blocks_{block}_resnets_{layer}_{}", resnet(r))
                } else {
                    format!("down_blocks_{block}_attentions_{layer}_{r}")
                }
            }
            _ => name.to_string(),
        },
        (Some("middle"), Some("block")) => match num(2) {
            Some(0) => format!("mid_block_resnets_0_{}", resnet(rest(3))),
            Some(1) => format!("mid_block_attentions_0_{}", rest(3)),
            Some(2) => format!("mid_block_resnets_1_{}", resnet(rest(3))),
            _ => name.to_string(),
        },
        (Some("output"), Some("blocks")) => match (num(2), num(3)) {
            (Some(i), Some(inner)) => {
                let (block, layer) = (i / per, i % per);
                let r = rest(4);
                if inner == 2 || (inner == 1 && r == "conv") {
                    format!("up_blocks_{block}_upsamplers_0_conv")
                } else if inner == 0 {
                    format!("up_blocks_{block}_resnets_{layer}_{}", resnet(r))
                } else {
                    format!("up_blocks_{block}_attentions_{layer}_{r}")
                }
            }
            _ => name.to_string(),
        },
        _ => name.to_string(),
    }
}

/// A file's [`LoraFile::stamp`] as it is now (path, size, modification time): a stamp that differs from a
/// loaded file's says the file changed since.
pub fn stamp_of(path: &Path) -> String {
    crate::runtime::cache_stamp(path).unwrap_or_else(|| path.display().to_string())
}

/// The `.safetensors` file called `name` under `dir` (searched to 4 levels, as A1111 lists its Lora folder),
/// or an error naming the folder and some of what it has.
pub fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    walk(dir, 0, &mut found);
    found.sort();
    if let Some(p) = found
        .iter()
        .find(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == name))
    {
        return Ok(p.clone());
    }
    if !dir.is_dir() {
        return Err(Error::Invalid {
            field: "lora_dir",
            msg: format!(
                "{}: not a folder (looking for LoRA `{name}`)",
                dir.display()
            ),
        });
    }
    let have: Vec<String> = found
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .take(8)
        .collect();
    Err(Error::Invalid {
        field: "prompt",
        msg: format!(
            "<lora:{name}>: no {name}.safetensors in {} ({})",
            dir.display(),
            if have.is_empty() {
                "it has no .safetensors files".to_string()
            } else {
                format!("it has: {}", have.join(", "))
            }
        ),
    })
}

/// Every `.safetensors` file under `dir` (to 4 levels, as [`find`] searches), sorted: what a server lists.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(dir, 0, &mut found);
    found.sort();
    found
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() && depth < 4 {
            walk(&p, depth + 1, out);
        } else if p
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("safetensors"))
        {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgm_names_map_to_diffusers_as_diffusers_does() {
        let m = |n| sgm_to_diffusers(n, Some(2));
        assert_eq!(
            m("input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
            "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
        );
        assert_eq!(
            m("input_blocks_8_0_in_layers_2"),
            "down_blocks_2_resnets_1_conv1"
        );
        assert_eq!(
            m("input_blocks_3_0_op"),
            "down_blocks_0_downsamplers_0_conv"
        );
        assert_eq!(
            m("middle_block_1_proj_in"),
            "mid_block_attentions_0_proj_in"
        );
        assert_eq!(
            m("middle_block_2_emb_layers_1"),
            "mid_block_resnets_1_time_emb_proj"
        );
        assert_eq!(
            m("output_blocks_5_1_transformer_blocks_1_ff_net_2"),
            "up_blocks_1_attentions_2_transformer_blocks_1_ff_net_2"
        );
        assert_eq!(m("output_blocks_2_2_conv"), "up_blocks_0_upsamplers_0_conv");
        assert_eq!(
            m("output_blocks_0_0_skip_connection"),
            "up_blocks_0_resnets_0_conv_shortcut"
        );
        assert_eq!(m("time_embed_0"), "time_embedding_linear_1");
        assert_eq!(m("input_blocks_0_0"), "conv_in");
        // The tiny SDXL fixture has one layer per block.
        assert_eq!(
            sgm_to_diffusers("input_blocks_3_1_proj_out", Some(1)),
            "down_blocks_1_attentions_0_proj_out"
        );
    }

    #[test]
    fn prefixes_say_the_graph() {
        assert_eq!(
            locate("lora_te2_text_model_encoder_layers_0_mlp_fc1"),
            Some((
                Target::TextEncoder2,
                "text_model_encoder_layers_0_mlp_fc1".into()
            ))
        );
        assert_eq!(
            locate("unet.down_blocks.0.attentions.0.proj_in"),
            Some((Target::Unet, "down_blocks.0.attentions.0.proj_in".into()))
        );
        // The old attention-processor spelling, with its factor suffix removed by SUFFIXES.
        let key = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.down.weight";
        let (suffix, _) = SUFFIXES.iter().find(|(s, _)| key.ends_with(s)).unwrap();
        assert_eq!(
            locate(&key[..key.len() - suffix.len()]),
            Some((
                Target::Unet,
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0".into()
            ))
        );
        assert_eq!(locate("model.diffusion_model.x"), None);
    }
}

/// A1111's `Lora hashes` infotext value for a set: `name: hash, name: hash` (each file once).
pub fn hashes(active: &[Active]) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for a in active {
        let item = format!("{}: {}", a.file.name, a.file.short_hash);
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    (!seen.is_empty()).then(|| seen.join(", "))
}

/// `PATH[:WEIGHT]` as `--lora` takes it: the weight (default 1, may be negative) after the last `:` when that
/// part is a number, so Windows paths (`C:\loras\x.safetensors`) keep their drive.
pub fn parse_spec(spec: &str) -> Result<(PathBuf, f32)> {
    if let Some((path, w)) = spec.rsplit_once(':')
        && !path.is_empty()
        && let Ok(w) = w.trim().parse::<f32>()
    {
        if !w.is_finite() {
            return Err(Error::Invalid {
                field: "lora",
                msg: format!("{spec}: the weight must be a finite number"),
            });
        }
        return Ok((PathBuf::from(path), w));
    }
    if spec.is_empty() {
        return Err(Error::Invalid {
            field: "lora",
            msg: "needs a file (PATH or PATH:WEIGHT)".into(),
        });
    }
    Ok((PathBuf::from(spec), 1.0))
}

/// What `sd-onnx lora inspect` shows of a file, and with a model, what of it lands there.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The file.
    pub file: String,
    /// Its name (`<lora:NAME>`).
    pub name: String,
    /// Key convention.
    pub convention: String,
    /// `ss_base_model_version`.
    pub base_model: Option<String>,
    /// A1111's short hash.
    pub hash: String,
    /// Module counts by kind (`LoRA`, `LoCon`, `LoHa`, ...).
    pub kinds: BTreeMap<String, usize>,
    /// Module counts by graph.
    pub targets: BTreeMap<String, usize>,
    /// The ranks used.
    pub ranks: Vec<usize>,
    /// The alphas used.
    pub alphas: Vec<f32>,
    /// Module families targeted (`attn1.to_q`, `ff.net.2`, `conv1`, ...) with counts.
    pub layers: BTreeMap<String, usize>,
    /// The trainer's `ss_*` metadata.
    pub metadata: BTreeMap<String, String>,
    /// With a model: modules that land, per graph.
    pub matched: Option<BTreeMap<String, usize>>,
    /// With a model: keys that match nothing there.
    pub unmatched: Option<Vec<String>>,
    /// With a model: why it would be refused.
    pub refused: Option<String>,
}

/// The last part of a module path that says what layer it is (`attn1_to_q`, `ff_net_0_proj`, `conv1`).
fn layer_family(path: &str) -> String {
    const TAILS: &[&str] = &[
        "attn1_to_q",
        "attn1_to_k",
        "attn1_to_v",
        "attn1_to_out_0",
        "attn2_to_q",
        "attn2_to_k",
        "attn2_to_v",
        "attn2_to_out_0",
        "ff_net_0_proj",
        "ff_net_2",
        "proj_in",
        "proj_out",
        "time_emb_proj",
        "conv_shortcut",
        "conv1",
        "conv2",
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "fc1",
        "fc2",
        "conv",
    ];
    TAILS
        .iter()
        .find(|t| path.ends_with(*t))
        .map(|t| t.to_string())
        .unwrap_or_else(|| path.rsplit('_').next().unwrap_or(path).to_string())
}

impl LoraFile {
    /// The report of this file alone.
    pub fn report(&self) -> Report {
        let mut kinds = BTreeMap::new();
        let mut targets = BTreeMap::new();
        let mut layers = BTreeMap::new();
        let (mut ranks, mut alphas) = (Vec::new(), Vec::<f32>::new());
        for m in &self.modules {
            *kinds.entry(m.kind.name().to_string()).or_default() += 1;
            *targets.entry(m.target.component().to_string()).or_default() += 1;
            *layers.entry(layer_family(&m.path)).or_default() += 1;
            if let Some(r) = m.kind.rank() {
                ranks.push(r);
            }
            if let Some(a) = m.alpha
                && !alphas.contains(&a)
            {
                alphas.push(a);
            }
        }
        ranks.sort_unstable();
        ranks.dedup();
        alphas.sort_by(f32::total_cmp);
        Report {
            file: self.path.display().to_string(),
            name: self.name.clone(),
            convention: self.convention.to_string(),
            base_model: self.base_model.clone(),
            hash: self.short_hash.clone(),
            kinds,
            targets,
            ranks,
            alphas,
            layers,
            metadata: self
                .metadata
                .iter()
                .filter(|(k, v)| k.starts_with("ss_") && v.len() <= 200)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            matched: None,
            unmatched: None,
            refused: None,
        }
    }
}
