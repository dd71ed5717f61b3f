//! What a model folder holds and what will not work with it: the diagnosis behind `sd-onnx inspect`, as data
//! (the CLI prints it as text or JSON; a server can return it).

use crate::graphs::{Graph, Port, dtype_name};
use crate::profile::ModelProfile;
use crate::runtime::{Runtime, providers_for};
use crate::tokenizer::ClipTokenizer;
use serde_json::{Value, json};
use std::path::PathBuf;

/// One graph of the folder.
#[derive(Clone, Debug)]
pub struct ComponentReport {
    /// `text_encoder`, `unet`, ...
    pub name: &'static str,
    /// Its `model.onnx`.
    pub graph: PathBuf,
    /// External-data files beside it.
    pub external_data: Vec<PathBuf>,
    /// Whether it has a `config.json`.
    pub has_config: bool,
    /// The providers that can run it.
    pub runs_on: Vec<&'static str>,
    /// ONNX Runtime contrib operators only GPU providers implement.
    pub gpu_only_ops: Vec<String>,
    /// How the graph's weights are quantised, when they are: `int8` and the operators that say so
    /// (`scripts/optimize_onnx.py --int8` writes `DynamicQuantizeLinear` + `MatMulInteger`).
    pub quantization: Option<String>,
    /// Declared inputs and outputs, when the graph could be opened.
    pub ports: Option<(Vec<Port>, Vec<Port>)>,
}

/// The diagnosis of one folder.
pub struct Report {
    /// What was read from the folder.
    pub profile: ModelProfile,
    /// A short description of the model family.
    pub family: &'static str,
    /// The ONNX Runtime the graphs were opened with, if it loaded.
    pub runtime: Option<Runtime>,
    /// Every graph.
    pub components: Vec<ComponentReport>,
    /// The tokenizer's pad token and id, if the tokenizer loads.
    pub pad: Option<(String, i64)>,
    /// Things that will not work, said plainly.
    pub problems: Vec<String>,
    /// A graph or the tokenizer cannot be used at all: nothing can be generated from this folder.
    pub unusable: bool,
}

/// Diagnose `profile`'s folder, opening each graph with `runtime` when it loaded (its error is a problem).
pub fn inspect(profile: ModelProfile, runtime: crate::Result<Runtime>) -> Report {
    let mut problems = profile.problems.clone();
    let mut comps = vec![&profile.text_encoder];
    if let Some(xl) = &profile.xl {
        comps.push(&xl.text_encoder_2);
    }
    comps.extend([&profile.unet, &profile.vae_decoder]);
    if let Some(e) = &profile.vae_encoder {
        comps.push(e);
    }
    let mut components = Vec::new();
    let mut unusable = false;
    for c in comps {
        let graph = match &runtime {
            Ok(rt) => match Graph::load(rt, c) {
                Ok(g) => Some(g),
                Err(e) => {
                    problems.push(format!("{}: does not load: {e}", c.name));
                    unusable = true;
                    None
                }
            },
            Err(_) => None,
        };
        if let Some(g) = &graph {
            let missing: Vec<&str> = required_inputs(c.name)
                .iter()
                .copied()
                .filter(|n| !g.inputs.iter().any(|p| p.name == *n))
                .collect();
            if !missing.is_empty() {
                let have: Vec<&str> = g.inputs.iter().map(|p| p.name.as_str()).collect();
                problems.push(format!(
                    "{}: lacks input(s) {} (it has {}): not a {} graph",
                    c.name,
                    missing.join(", "),
                    have.join(", "),
                    c.name
                ));
                unusable = true;
            }
        }
        if c.name == "vae_encoder"
            && let Some(g) = &graph
            && g.outputs.iter().any(|o| o.name == "latent_sample")
        {
            problems.push(
                "vae_encoder outputs `latent_sample` (sampled inside the graph): img2img from this export cannot be \
                 bit-reproducible"
                    .into(),
            );
        }
        // Which providers can run it: graphs fused for GPUs carry contrib ops the CPU provider lacks.
        let ops = std::fs::read(&c.graph)
            .ok()
            .and_then(|b| crate::onnx_proto::operators(&b));
        let quantization = ops.as_ref().and_then(quantization);
        let gpu_only_ops: Vec<String> = ops
            .map(|ops| {
                ops.into_iter()
                    .filter(|(d, o)| {
                        d == "com.microsoft"
                            && crate::onnx_proto::GPU_ONLY_CONTRIB_OPS.contains(&o.as_str())
                    })
                    .map(|(_, o)| o)
                    .collect()
            })
            .unwrap_or_default();
        let (runs_on, problem) = providers_for(&gpu_only_ops, c.name);
        problems.extend(problem);
        components.push(ComponentReport {
            name: c.name,
            graph: c.graph.clone(),
            external_data: c.external_data.clone(),
            has_config: c.config.is_some(),
            runs_on,
            gpu_only_ops,
            quantization,
            ports: graph.map(|g| (g.inputs, g.outputs)),
        });
    }
    if let Err(e) = &runtime {
        problems.push(format!("graphs not opened: {e}"));
    }
    let pad = match ClipTokenizer::from_dir(&profile.tokenizer_dir) {
        Ok(t) => {
            let (s, id) = t.pad_token();
            Some((s.to_string(), id))
        }
        Err(e) => {
            problems.push(format!("tokenizer: {e}"));
            unusable = true;
            None
        }
    };
    let text_width = profile
        .text_encoder
        .config
        .as_ref()
        .and_then(|c| c["hidden_size"].as_u64());
    Report {
        family: profile.family().describe(text_width),
        profile,
        runtime: runtime.ok(),
        components,
        pad,
        problems,
        unusable,
    }
}

/// Integer operators that mean quantised weights: ONNX's and ONNX Runtime's (what `quantize_dynamic`,
/// `quantize_static` and the weight-only quantiser write, and what ONNX Runtime fuses them into).
const INT8_OPS: &[&str] = &[
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "QuantizeLinear",
    "DequantizeLinear",
    "MatMulIntegerToFloat",
];

/// `int8 (MatMulInteger, ...)` when the graph computes with quantised weights; `MatMulNBits` says its bits
/// in an attribute we do not read here, so it is reported as `n-bit`.
fn quantization(ops: &std::collections::BTreeSet<(String, String)>) -> Option<String> {
    let found: Vec<&str> = ops
        .iter()
        .map(|(_, op)| op.as_str())
        .filter(|op| INT8_OPS.contains(op))
        .collect();
    let nbits = ops.iter().any(|(_, op)| op == "MatMulNBits");
    match (found.is_empty(), nbits) {
        (true, false) => None,
        (true, true) => Some("n-bit weights (MatMulNBits)".into()),
        (false, _) => Some(format!("int8 ({})", found.join(", "))),
    }
}

/// The inputs a component's graph must have (what the pipeline feeds it by name).
fn required_inputs(component: &str) -> &'static [&'static str] {
    match component {
        "text_encoder" | "text_encoder_2" => &["input_ids"],
        "unet" => &["sample", "timestep", "encoder_hidden_states"],
        "vae_decoder" => &["latent_sample"],
        "vae_encoder" => &["sample"],
        _ => &[],
    }
}

fn port_json(p: &Port) -> Value {
    json!({"name": p.name, "dtype": p.dtype.map(dtype_name), "shape": p.dims})
}

impl Report {
    /// The report as `inspect --json` prints it.
    pub fn to_json(&self) -> Value {
        let p = &self.profile;
        let components: Vec<Value> = self
            .components
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "runs_on": c.runs_on, "gpu_only_ops": c.gpu_only_ops, "graph": c.graph,
                    "quantization": c.quantization,
                    "external_data": c.external_data, "config_json": c.has_config,
                    "inputs": c.ports.as_ref().map(|(i, _)| i.iter().map(port_json).collect::<Vec<_>>()),
                    "outputs": c.ports.as_ref().map(|(_, o)| o.iter().map(port_json).collect::<Vec<_>>()),
                })
            })
            .collect();
        let sourced = |v: &dyn erased::Show, from: &str| json!({"value": v.show(), "from": from});
        json!({
            "model": p.dir,
            "layout": p.layout.describe(),
            "family": self.family,
            "onnx_runtime": self.runtime.as_ref().map(|r| json!({"library": r.library.path, "found_by": r.library.source, "version": r.version})),
            "components": components,
            "scheduler": {"class": p.scheduler_class, "ported_as": p.default_scheduler.map(|k| k.name()), "config": p.scheduler_config.raw()},
            "prediction_type": p.prediction_type,
            "guidance_embedding": p.guidance_embedding.as_ref().map(|g| json!({"width": g.value, "from": g.source})),
            "sdxl": p.xl.as_ref().map(|x| json!({"tokenizer_2": x.tokenizer_2_dir, "zeros_for_empty_negative": {"value": x.zeros_for_empty_negative.value, "from": x.zeros_for_empty_negative.source}})),
            "tokenizer": {"dir": p.tokenizer_dir, "tokenizer_json": p.tokenizer_dir.join("tokenizer.json").is_file(), "pad_token": self.pad.as_ref().map(|x| &x.0), "pad_id": self.pad.as_ref().map(|x| x.1)},
            "vae_scaling_factor": sourced(&p.vae_scaling_factor.value, &p.vae_scaling_factor.source),
            "vae_factor": sourced(&p.vae_factor.value, &p.vae_factor.source),
            "size_multiple": sourced(&p.size_multiple.value, &p.size_multiple.source),
            "latent_channels": sourced(&p.latent_channels.value, &p.latent_channels.source),
            "unet_in_channels": sourced(&p.unet_in_channels.value, &p.unet_in_channels.source),
            "default_size": p.default_size(),
            "problems": self.problems,
        })
    }
}

/// JSON of the sourced facts' values, whatever their type.
mod erased {
    pub trait Show {
        fn show(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Show for T {
        fn show(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}
