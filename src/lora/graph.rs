//! Where LoRA modules land in an exported graph, and the merged weights.
//!
//! torch's exporter names every node after the module that made it (`/down_blocks.1/attentions.0/
//! transformer_blocks.0/attn1/to_q/MatMul`), for optimum's exports and diffusers' convert script alike. A
//! module's weight is the second input of its `MatMul` (a Linear's weight stored transposed, (in, out), often as
//! an anonymous `onnx::MatMul_NNNN`), `Gemm` (transposed unless `transB`) or `Conv` (out, in, kh, kw). Those
//! initializers are replaced by `W + Σ multiplier * scale * ΔW` before ONNX Runtime optimises the graph
//! ([`crate::runtime::SessionSpec::computed`]): after optimisation the weights may be folded, cast or re-laid out
//! (NCHWc convolutions), and a late override would be silently dropped.

use super::{Active, LoraFile, Module, Target, merge};
use crate::error::{Error, Result};
use crate::onnx_edit::{Model, pb};
use ndarray::Array2;
use ort::value::{DynValue, Tensor};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One weight a module can land on.
#[derive(Clone, Debug)]
pub struct Site {
    /// The initializer.
    pub initializer: String,
    /// Its dimensions as stored.
    pub dims: Vec<usize>,
    /// ONNX element type (1 float, 10 float16).
    pub dtype: i32,
    /// Stored as the transpose of (out, in): a `MatMul`'s, or a `Gemm`'s without `transB`.
    pub transposed: bool,
    /// The node that reads it (for messages).
    pub node: String,
}

impl Site {
    /// (out, in * kh * kw): the shape ΔW must have.
    pub fn logical(&self) -> (usize, usize) {
        let rest: usize = self.dims.iter().skip(1).product();
        match (self.transposed, self.dims.as_slice()) {
            (true, [a, b]) => (*b, *a),
            _ => (self.dims.first().copied().unwrap_or(0), rest),
        }
    }
}

/// The weights of one graph that modules can land on, by module path (`.` as `_`).
#[derive(Clone, Debug, Default)]
pub struct Sites {
    /// The graph file.
    pub graph: PathBuf,
    /// Module path -> its weight.
    pub by_path: HashMap<String, Site>,
    /// The graph runs fused attention (ORT's `Attention`/`MultiHeadAttention`): Q/K/V packed, unmatchable.
    pub fused_attention: bool,
    /// The UNet's resnets per down block (SGM names need it).
    pub layers_per_block: Option<usize>,
}

fn attr_i(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

/// The module path a node name gives: `/a.0/b/c/MatMul` -> `a_0_b_c`.
fn module_path(node: &str) -> Option<String> {
    let parts: Vec<&str> = node.split('/').filter(|s| !s.is_empty()).collect();
    let (_, module) = parts.split_last()?;
    if module.is_empty() {
        return None;
    }
    Some(module.join("_").replace('.', "_"))
}

impl Sites {
    /// Every `MatMul`/`Gemm`/`Conv` of `model` whose weight is an initializer read by that node only.
    pub fn of(model: &Model) -> Self {
        let g = model.graph();
        let inits: HashMap<&str, &pb::TensorProto> = g
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref().map(|n| (n, t)))
            .collect();
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for n in &g.node {
            for i in &n.input {
                *readers.entry(i.as_str()).or_default() += 1;
            }
        }
        let mut by_path = HashMap::new();
        let mut fused = false;
        let mut lpb = 0usize;
        for n in &g.node {
            let op = n.op_type.as_deref().unwrap_or_default();
            if matches!(op, "Attention" | "MultiHeadAttention" | "PackedAttention") {
                fused = true;
            }
            let Some(name) = n.name.as_deref() else {
                continue;
            };
            let transposed = match op {
                "MatMul" => true,
                "Gemm" => attr_i(n, "transB").unwrap_or(0) == 0,
                "Conv" => false,
                _ => continue,
            };
            let Some(path) = module_path(name) else {
                continue;
            };
            if let Some(rest) = path.strip_prefix("down_blocks_0_resnets_")
                && let Some(i) = rest.split('_').next().and_then(|s| s.parse::<usize>().ok())
            {
                lpb = lpb.max(i + 1);
            }
            let Some(w) = n.input.get(1) else {
                continue;
            };
            let Some(t) = inits.get(w.as_str()) else {
                continue;
            };
            let dtype = t.data_type.unwrap_or(0);
            if !matches!(dtype, 1 | 10) || readers.get(w.as_str()).copied() != Some(1) {
                continue;
            }
            let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
            if transposed && dims.len() != 2 {
                continue;
            }
            by_path.entry(path).or_insert(Site {
                initializer: w.clone(),
                dims,
                dtype,
                transposed,
                node: name.to_string(),
            });
        }
        Sites {
            graph: model.path.clone(),
            by_path,
            fused_attention: fused,
            layers_per_block: (lpb > 0).then_some(lpb),
        }
    }

    /// Where `m` lands, if anywhere.
    pub fn find(&self, m: &Module) -> Option<&Site> {
        if m.sgm {
            let p = super::sgm_to_diffusers(&m.path, self.layers_per_block);
            return self.by_path.get(&p);
        }
        self.by_path.get(&m.path)
    }
}

/// What one file does to one model.
#[derive(Clone, Debug, Default)]
pub struct Match {
    /// The file's name.
    pub name: String,
    /// Modules that land, per target.
    pub matched: Vec<(Target, usize)>,
    /// Keys of modules that match nothing in the model.
    pub unmatched: Vec<String>,
    /// Modules in all.
    pub total: usize,
}

/// One (file, module index, multiplier * scale) merged into a weight.
pub type Use = (Arc<LoraFile>, usize, f32);
/// A weight and what is merged into it.
pub type Entry = (Site, Vec<Use>);
/// A merged initializer: its name and value.
pub type Merged = (String, Arc<DynValue>);

/// The merge for one graph: which initializers get which modules, with their weights.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The graph.
    pub target: Target,
    /// Initializer -> (its site, [(file, module index, multiplier * scale)]).
    pub entries: Vec<Entry>,
    /// What identifies the merged weights (file stamps and multipliers): part of the graph-cache key.
    pub identity: String,
    /// The LoRA files (their stamps keep the cache entry valid).
    pub sources: Vec<PathBuf>,
}

fn describe_base(f: &LoraFile) -> String {
    match &f.base_model {
        Some(b) => format!("trained on {b}"),
        None => "its base model is not recorded".into(),
    }
}

/// Match `active` against the graphs (`sites` per target present in the model): the per-graph plans, and
/// warnings (a few unmatched modules). Refused, naming the file: a file that matches nothing or whose weights
/// have another shape (a LoRA for another base model), and a fused export.
pub fn plan(
    active: &[Active],
    sites: &[(Target, &Sites)],
    model: &Path,
) -> Result<(Vec<Plan>, Vec<String>, Vec<Match>)> {
    let mut entries: HashMap<Target, HashMap<String, Entry>> = HashMap::new();
    let mut warnings = Vec::new();
    let mut matches = Vec::new();
    for a in active {
        let f = &a.file;
        let mut m = Match {
            name: f.name.clone(),
            total: f.modules.len(),
            ..Match::default()
        };
        let mut counts: HashMap<Target, usize> = HashMap::new();
        for (i, module) in f.modules.iter().enumerate() {
            let found = sites
                .iter()
                .find(|(t, _)| *t == module.target)
                .and_then(|(_, s)| s.find(module).map(|site| (s, site)));
            let Some((s, site)) = found else {
                m.unmatched.push(module.key.clone());
                continue;
            };
            let want = merge::delta_shape(&module.kind);
            if site.logical() != want {
                return Err(Error::model(
                    &f.path,
                    format!(
                        "is a LoRA for another model ({}): `{}` is {}x{} but {}'s weight there ({}) is {}x{}",
                        describe_base(f),
                        module.key,
                        want.0,
                        want.1,
                        s.graph.display(),
                        site.node,
                        site.logical().0,
                        site.logical().1
                    ),
                ));
            }
            *counts.entry(module.target).or_default() += 1;
            let w = a.weight(module.target) * module.scale();
            entries
                .entry(module.target)
                .or_default()
                .entry(site.initializer.clone())
                .or_insert_with(|| (site.clone(), Vec::new()))
                .1
                .push((f.clone(), i, w));
        }
        let matched: usize = counts.values().sum();
        let mut per: Vec<(Target, usize)> = counts.into_iter().collect();
        per.sort();
        m.matched = per;
        let fused = sites.iter().any(|(_, s)| s.fused_attention);
        if fused
            && m.unmatched.iter().any(|k| {
                ["to_q", "to_k", "to_v", "q_proj", "k_proj", "v_proj"]
                    .iter()
                    .any(|q| k.ends_with(q))
            })
        {
            return Err(Error::model(
                model,
                format!(
                    "fuses attention (ONNX Runtime's Attention/MultiHeadAttention packs Q, K and V), so LoRA `{}` \
                     cannot be merged into it; use an export without transformer fusion (`optimum-cli export onnx` \
                     without -O2..-O4, or diffusers' convert script)",
                    f.name
                ),
            ));
        }
        if matched == 0 {
            let present: Vec<&str> = sites.iter().map(|(t, _)| t.component()).collect();
            let wants: Vec<&str> = f.targets().iter().map(|t| t.component()).collect();
            return Err(Error::model(
                &f.path,
                format!(
                    "is a LoRA for another model ({}): none of its {} modules (for {}) matches {} ({}), e.g. `{}`",
                    describe_base(f),
                    f.modules.len(),
                    wants.join(", "),
                    model.display(),
                    present.join(", "),
                    m.unmatched.first().map(String::as_str).unwrap_or("")
                ),
            ));
        }
        if !m.unmatched.is_empty() {
            let some: Vec<&str> = m.unmatched.iter().take(3).map(String::as_str).collect();
            warnings.push(format!(
                "LoRA {}: {} of its {} modules match nothing in {} and were left out (e.g. {})",
                f.name,
                m.unmatched.len(),
                m.total,
                model.display(),
                some.join(", ")
            ));
        }
        matches.push(m);
    }
    let mut plans = Vec::new();
    for (target, e) in entries {
        let mut list: Vec<Entry> = e.into_values().collect();
        list.retain(|(_, mods)| mods.iter().any(|(_, _, w)| *w != 0.0));
        if list.is_empty() {
            continue;
        }
        list.sort_by(|a, b| a.0.initializer.cmp(&b.0.initializer));
        let mut identity = String::from("lora");
        let mut sources = Vec::new();
        for a in active {
            let w = a.weight(target);
            if w != 0.0 && a.file.targets().contains(&target) {
                identity.push_str(&format!("|{}*{w}", a.file.stamp.replace('\n', ";")));
                sources.push(a.file.path.clone());
            }
        }
        plans.push(Plan {
            target,
            entries: list,
            identity,
            sources,
        });
    }
    plans.sort_by_key(|p| p.target);
    Ok((plans, warnings, matches))
}

/// An initializer's values as f32 (inline or external data).
fn read_values(model: &Model, t: &pb::TensorProto) -> Result<Vec<f32>> {
    let name = t.name.as_deref().unwrap_or_default();
    let n: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
    let dtype = t.data_type.unwrap_or(0);
    let size = if dtype == 10 { 2 } else { 4 };
    let err = |m: String| Error::model(&model.path, format!("initializer `{name}`: {m}"));
    let bytes: Vec<u8> = if t.data_location == Some(1) || !t.external_data.is_empty() {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key.as_deref() == Some(k))
                .and_then(|e| e.value.clone())
        };
        let location =
            get("location").ok_or_else(|| err("external data without a location".into()))?;
        let offset: u64 = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
        let len = n * size;
        let dir = model.path.parent().unwrap_or(Path::new("."));
        let file = dir.join(&location);
        let mut f = std::fs::File::open(&file).map_err(|source| Error::Read {
            path: file.clone(),
            source,
        })?;
        let flen = f.metadata().map(|m| m.len()).unwrap_or(0);
        if offset.saturating_add(len as u64) > flen {
            return Err(err(format!(
                "{location} is too short for it ({flen} bytes)"
            )));
        }
        f.seek(SeekFrom::Start(offset))
            .map_err(|source| Error::Read {
                path: file.clone(),
                source,
            })?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).map_err(|source| Error::Read {
            path: file.clone(),
            source,
        })?;
        buf
    } else if let Some(raw) = &t.raw_data {
        raw.to_vec()
    } else if dtype == 1 && t.float_data.len() == n {
        return Ok(t.float_data.clone());
    } else if dtype == 10 && t.int32_data.len() == n {
        return Ok(t
            .int32_data
            .iter()
            .map(|&b| half::f16::from_bits(b as u16).to_f32())
            .collect());
    } else {
        return Err(err("has no data".into()));
    };
    if bytes.len() != n * size {
        return Err(err(format!("{} bytes for {n} values", bytes.len())));
    }
    Ok(if dtype == 10 {
        bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    } else {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// The merged initializers of one plan on `graph`, as values of the graph's element types.
pub fn merged(plan: &Plan, graph: &Path) -> Result<Vec<(String, Arc<DynValue>)>> {
    let model = Model::read(graph)?;
    let inits: HashMap<&str, &pb::TensorProto> = model
        .graph()
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref().map(|n| (n, t)))
        .collect();
    let work = |(site, mods): &Entry| -> Result<(String, Arc<DynValue>)> {
        let t = inits.get(site.initializer.as_str()).ok_or_else(|| {
            Error::model(graph, format!("has no initializer `{}`", site.initializer))
        })?;
        let mut values = read_values(&model, t)?;
        for (file, i, w) in mods {
            let Some(module) = file.modules.get(*i) else {
                continue;
            };
            let d: Array2<f32> = merge::delta(&module.kind)
                .map_err(|m| Error::model(&file.path, format!("`{}`: {m}", module.key)))?;
            merge::add_into(&mut values, &d, *w, site.transposed);
        }
        let shape: Vec<i64> = site.dims.iter().map(|&d| d as i64).collect();
        let ctx = format!("{}: initializer `{}`", graph.display(), site.initializer);
        let value = if site.dtype == 10 {
            let v: Vec<half::f16> = values.into_iter().map(half::f16::from_f32).collect();
            Tensor::from_array((shape, v))
                .map_err(Error::ort(ctx))?
                .into_dyn()
        } else {
            Tensor::from_array((shape, values))
                .map_err(Error::ort(ctx))?
                .into_dyn()
        };
        Ok((site.initializer.clone(), Arc::new(value)))
    };
    // The merges are independent: one thread per core.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = plan.entries.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<Merged>>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .entries
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(work).collect::<Result<Vec<_>>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Runtime("a LoRA merge thread panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(plan.entries.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_come_from_node_names_and_fusion_is_seen() {
        let init = pb::TensorProto {
            name: Some("onnx::MatMul_7".into()),
            dims: vec![4, 8],
            data_type: Some(1),
            ..Default::default()
        };
        let node = |op: &str, name: &str, inputs: &[&str]| pb::NodeProto {
            op_type: Some(op.into()),
            name: Some(name.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![format!("{name}_out")],
            ..Default::default()
        };
        let model = Model {
            proto: pb::ModelProto {
                graph: Some(pb::GraphProto {
                    node: vec![
                        node(
                            "MatMul",
                            "/mid_block/attentions.0/transformer_blocks.0/attn1/to_out.0/MatMul",
                            &["x", "onnx::MatMul_7"],
                        ),
                        node(
                            "MultiHeadAttention",
                            "/mid_block/attentions.0/transformer_blocks.0/attn1/MultiHeadAttention",
                            &["q"],
                        ),
                    ],
                    initializer: vec![init],
                    ..Default::default()
                }),
                ..Default::default()
            },
            path: "unet/model.onnx".into(),
        };
        let s = Sites::of(&model);
        assert!(s.fused_attention);
        let site = &s.by_path["mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0"];
        assert_eq!(
            (site.initializer.as_str(), site.transposed, site.logical()),
            ("onnx::MatMul_7", true, (8, 4))
        );
    }

    #[test]
    fn node_names_give_module_paths() {
        assert_eq!(
            module_path("/down_blocks.1/attentions.0/transformer_blocks.0/attn1/to_q/MatMul")
                .as_deref(),
            Some("down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q")
        );
        assert_eq!(
            module_path("/text_model/encoder/layers.0/self_attn/q_proj/MatMul").as_deref(),
            Some("text_model_encoder_layers_0_self_attn_q_proj")
        );
        assert_eq!(module_path("MatMul_12"), None);
    }
}

/// The sites of every graph of `profile` a LoRA can touch (text encoder(s), UNet), each graph read once.
pub fn model_sites(profile: &crate::profile::ModelProfile) -> Result<Vec<(Target, Arc<Sites>)>> {
    let mut list = vec![(Target::TextEncoder, &profile.text_encoder)];
    if let Some(xl) = &profile.xl {
        list.push((Target::TextEncoder2, &xl.text_encoder_2));
    }
    list.push((Target::Unet, &profile.unet));
    let mut out = Vec::new();
    for (t, c) in list {
        let model = Model::read(&c.graph)?;
        let mut s = Sites::of(&model);
        if t == Target::Unet
            && let Some(n) = c
                .config
                .as_ref()
                .and_then(|v| v.get("layers_per_block"))
                .and_then(|v| v.as_u64())
        {
            s.layers_per_block = Some(n as usize);
        }
        out.push((t, Arc::new(s)));
    }
    Ok(out)
}

/// `file`'s report with what of it lands in the model (`sites` from [`model_sites`]) and, when it would be
/// refused there, why.
pub fn report_for(
    file: &Arc<LoraFile>,
    sites: &[(Target, Arc<Sites>)],
    model: &Path,
) -> super::Report {
    let mut r = file.report();
    let refs: Vec<(Target, &Sites)> = sites.iter().map(|(t, s)| (*t, &**s)).collect();
    let active = [Active {
        file: file.clone(),
        te: 1.0,
        unet: 1.0,
    }];
    let mut matched = std::collections::BTreeMap::new();
    let mut unmatched = Vec::new();
    for m in &file.modules {
        let site = refs
            .iter()
            .find(|(t, _)| *t == m.target)
            .and_then(|(_, s)| s.find(m));
        match site {
            Some(s) if s.logical() == merge::delta_shape(&m.kind) => {
                *matched.entry(m.target.component().to_string()).or_default() += 1
            }
            _ => unmatched.push(m.key.clone()),
        }
    }
    r.matched = Some(matched);
    r.unmatched = Some(unmatched);
    r.refused = plan(&active, &refs, model).err().map(|e| e.to_string());
    r
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::lora::{Kind, Module, Tensor};

    fn file(modules: Vec<Module>) -> Arc<LoraFile> {
        Arc::new(LoraFile {
            path: "x.safetensors".into(),
            name: "x".into(),
            convention: "kohya",
            base_model: Some("flux".into()),
            metadata: Default::default(),
            modules,
            short_hash: String::new(),
            stamp: String::new(),
        })
    }

    fn module(path: &str) -> Module {
        let t = |shape: &[usize]| Tensor {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        };
        Module {
            target: Target::Unet,
            path: path.into(),
            sgm: false,
            key: format!("lora_unet_{path}"),
            kind: Kind::Lora {
                down: t(&[1, 4]),
                up: t(&[4, 1]),
                mid: None,
            },
            alpha: None,
        }
    }

    fn sites(fused: bool) -> Sites {
        let mut by_path = HashMap::new();
        by_path.insert(
            "down_blocks_0_attn1_to_out_0".to_string(),
            Site {
                initializer: "w".into(),
                dims: vec![4, 4],
                dtype: 1,
                transposed: true,
                node: "/down_blocks.0/attn1/to_out.0/MatMul".into(),
            },
        );
        Sites {
            graph: "unet/model.onnx".into(),
            by_path,
            fused_attention: fused,
            layers_per_block: None,
        }
    }

    fn run(f: &Arc<LoraFile>, s: &Sites) -> Result<(Vec<Plan>, Vec<String>, Vec<Match>)> {
        let active = [Active {
            file: f.clone(),
            te: 1.0,
            unet: 1.0,
        }];
        plan(&active, &[(Target::Unet, s)], Path::new("model"))
    }

    #[test]
    fn refusals_and_partial_matches() {
        // Keys that match nothing: refused, naming the base model.
        let f = file(vec![module("double_blocks_0_img_attn_qkv")]);
        let e = run(&f, &sites(false)).unwrap_err().to_string();
        assert!(e.contains("another model (trained on flux)"), "{e}");
        // A fused export whose Q/K/V cannot be matched: refused with what to export instead.
        let f = file(vec![
            module("down_blocks_0_attn1_to_q"),
            module("down_blocks_0_attn1_to_out_0"),
        ]);
        let e = run(&f, &sites(true)).unwrap_err().to_string();
        assert!(
            e.contains("fuses attention") && e.contains("optimum-cli"),
            "{e}"
        );
        // The same file on an unfused export: one module left out, reported as a count with an example.
        let (plans, warnings, _) = run(&f, &sites(false)).unwrap();
        assert_eq!(plans.len(), 1);
        assert!(
            warnings[0].contains("1 of its 2 modules") && warnings[0].contains("to_q"),
            "{warnings:?}"
        );
        // Weights of 0 leave the graph alone.
        let active = [Active {
            file: f.clone(),
            te: 1.0,
            unet: 0.0,
        }];
        let (plans, _, _) =
            plan(&active, &[(Target::Unet, &sites(false))], Path::new("m")).unwrap();
        assert!(plans.is_empty());
    }
}
