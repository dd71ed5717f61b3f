//! The CLIP text encoder graph, and the edit that exposes an earlier layer for clip skip.

use super::{Graph, dtype_name};
use crate::error::{Error, Result};
use crate::onnx_edit::Model;
use crate::profile::Component;
use crate::runtime::{Computed, Runtime, SessionSpec};
use ndarray::{Array2, Array3};
use ort::value::{DynValue, Tensor, TensorElementType};
use std::sync::Arc;

/// Which hidden states a session must be able to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// SD 1.x/2.x: `last_hidden_state` for 1; for N > 1 the N-th layer from the end through the final layer
    /// norm (A1111's clip skip N, diffusers' `clip_skip = N - 1`).
    Sd(usize),
    /// SDXL: the output of the (N + 1)-th layer from the end, without the final norm (`hidden_states[-(N + 1)]`;
    /// N = 1 is the penultimate layer SDXL is conditioned on).
    Xl(usize),
}

/// CLIP text encoder: 77 ids per chunk -> hidden states.
pub struct TextEncoder {
    /// The session.
    pub graph: Graph,
    /// The layer this session was opened for.
    pub layer: Layer,
    /// With textual-inversion rows appended to its token table: the first of their ids.
    pub embedding_ids_from: Option<i64>,
}

/// The graph input an edited encoder's token-embedding lookup reads (ids that may index appended rows), while
/// `input_ids` keeps feeding everything else (CLIP's pooled output takes the position of the largest id).
const TI_IDS: &str = "sd_onnx.ti.ids";

/// The output an edited graph gives for clip skip `n` on SD.
fn skip_output(n: usize) -> String {
    format!("sd_onnx.clip_skip.{n}")
}

impl TextEncoder {
    /// Open the component's graph as exported.
    pub fn load(runtime: &Runtime, c: &Component) -> Result<Self> {
        Self::load_spec(runtime, &SessionSpec::plain(c))
    }

    /// Open it with the spec's initializer overrides (LoRA-merged weights).
    pub fn load_spec(runtime: &Runtime, spec: &SessionSpec) -> Result<Self> {
        let graph = Graph::load_spec(runtime, spec)?;
        graph.input("input_ids")?;
        Ok(TextEncoder {
            graph,
            layer: Layer::Sd(1),
            embedding_ids_from: None,
        })
    }

    /// Open the graph so that it gives `layer`: as exported when it already does (`last_hidden_state`, or the
    /// `hidden_states.N` outputs optimum adds for SDXL), else edited in memory to expose it.
    ///
    /// With `rows` (textual-inversion vectors, (n, width)), the graph is edited to append them to its token
    /// table; their ids start at the table's row count ([`TextEncoder::embedding_ids_from`]).
    pub fn load_layer(
        runtime: &Runtime,
        c: &Component,
        layer: Layer,
        rows: Option<&Array2<f32>>,
        weights: Option<&Computed>,
    ) -> Result<Self> {
        // Clip skip 0 means the same as 1 (the last layer; diffusers' None).
        let layer = match layer {
            Layer::Sd(0) => Layer::Sd(1),
            Layer::Xl(0) => Layer::Xl(1),
            l => l,
        };
        let mut spec = SessionSpec::plain(c);
        spec.computed = weights.cloned();
        if rows.is_none() && layer != Layer::Sd(1) {
            let plain = Self::load_spec(runtime, &spec)?;
            if plain.has_layer(layer) {
                return Ok(TextEncoder { layer, ..plain });
            }
        }
        let mut from = None;
        if rows.is_some() || layer != Layer::Sd(1) {
            let mut model = Model::read(&c.graph)?;
            if let Some(rows) = rows {
                from = Some(append_token_rows(&mut model, rows)?);
            }
            if layer != Layer::Sd(1) && !has_output_for(&model, layer) {
                expose_layer(&mut model, layer)?;
            }
            spec.edited = Some(Arc::from(model.encode()));
            // Complete: the layer and the rows' values (FNV-1a of their bits), so the edited graph can be cached.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for v in rows.iter().flat_map(|r| r.iter()) {
                for b in v.to_bits().to_le_bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            spec.identity = format!("{layer:?}+{}:{h:016x}", rows.map_or(0, |r| r.nrows()));
        }
        let mut enc = Self::load_spec(runtime, &spec)?;
        enc.layer = layer;
        enc.embedding_ids_from = from;
        Ok(enc)
    }

    fn hidden_count(&self) -> Option<usize> {
        self.graph
            .outputs
            .iter()
            .filter_map(|p| p.name.strip_prefix("hidden_states.")?.parse::<usize>().ok())
            .max()
    }

    /// Whether this session gives `layer` (an edited one still gives the last layer too).
    pub fn has_layer(&self, layer: Layer) -> bool {
        match layer {
            Layer::Sd(1) => true,
            Layer::Sd(n) => self.graph.outputs.iter().any(|p| p.name == skip_output(n)),
            Layer::Xl(n) => self
                .hidden_count()
                .and_then(|last| last.checked_sub(n))
                .is_some_and(|i| {
                    self.graph
                        .outputs
                        .iter()
                        .any(|p| p.name == format!("hidden_states.{i}"))
                }),
        }
    }

    /// The graph's inputs for one chunk: `input_ids`, and for an encoder with appended embedding rows the
    /// lookup's own ids, `input_ids` then holding 0 where an embedding's vectors go (as A1111 feeds it).
    fn inputs(&self, ids: &[i64]) -> Result<Vec<(std::borrow::Cow<'static, str>, DynValue)>> {
        match self.embedding_ids_from {
            None => Ok(vec![(
                "input_ids".into(),
                self.ids_input("input_ids", ids)?,
            )]),
            Some(from) => {
                let plain: Vec<i64> = ids.iter().map(|&i| if i >= from { 0 } else { i }).collect();
                Ok(vec![
                    ("input_ids".into(), self.ids_input("input_ids", &plain)?),
                    (TI_IDS.into(), self.ids_input(TI_IDS, ids)?),
                ])
            }
        }
    }

    fn ids_input(&self, name: &str, ids: &[i64]) -> Result<DynValue> {
        let shape = vec![1i64, ids.len() as i64];
        let port = self.graph.input(name)?;
        let ctx = format!("{}: input `{name}`", self.graph.path.display());
        match port.dtype {
            Some(TensorElementType::Int32) => {
                let v: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
                Ok(Tensor::from_array((shape, v))
                    .map_err(Error::ort(&ctx))?
                    .into_dyn())
            }
            Some(TensorElementType::Int64) => Ok(Tensor::from_array((shape, ids.to_vec()))
                .map_err(Error::ort(&ctx))?
                .into_dyn()),
            other => Err(Error::model(
                &self.graph.path,
                format!(
                    "input `{name}` is {}, expected int32 or int64",
                    other.map(dtype_name).unwrap_or("?")
                ),
            )),
        }
    }

    fn array3(&self, name: &str, (shape, data): (Vec<usize>, Vec<f32>)) -> Result<Array3<f32>> {
        if shape.len() != 3 {
            return Err(Error::model(
                &self.graph.path,
                format!("output `{name}` has shape {shape:?}, expected 3 dims"),
            ));
        }
        Array3::from_shape_vec((shape[0], shape[1], shape[2]), data)
            .map_err(|e| Error::model(&self.graph.path, format!("output `{name}`: {e}")))
    }

    /// SD 1.x/2.x conditioning: `last_hidden_state` (1, 77, width).
    pub fn encode(&mut self, ids: &[i64]) -> Result<Array3<f32>> {
        self.encode_skip(ids, 1)
    }

    /// SD 1.x/2.x conditioning with A1111's clip skip `n` (the session must have been opened for it with
    /// [`TextEncoder::load_layer`]).
    pub fn encode_skip(&mut self, ids: &[i64], n: usize) -> Result<Array3<f32>> {
        let inputs = self.inputs(ids)?;
        let out = if n <= 1 {
            self.graph.output_name("last_hidden_state")?
        } else if self.has_layer(Layer::Sd(n)) {
            skip_output(n)
        } else {
            return Err(Error::Usage(format!(
                "{}: the text encoder was not opened for clip skip {n}",
                self.graph.path.display()
            )));
        };
        let result = self.graph.run(inputs, &out)?;
        self.array3(&out, result)
    }

    /// SDXL conditioning from one of its encoders: the penultimate layer's hidden states for clip skip 1
    /// (diffusers' `hidden_states[-2]`, optimum's `hidden_states.{N-1}` of `hidden_states.0..N`), one layer
    /// further back per step of clip skip, and, when the encoder has a projection (`text_encoder_2`), its
    /// pooled `text_embeds`.
    pub fn encode_penultimate(
        &mut self,
        ids: &[i64],
        clip_skip: usize,
    ) -> Result<(Array3<f32>, Option<Array2<f32>>)> {
        let n = clip_skip.max(1);
        let index = self
            .hidden_count()
            .and_then(|last| last.checked_sub(n))
            .filter(|_| self.has_layer(Layer::Xl(n)))
            .ok_or_else(|| {
                Error::model(
                    &self.graph.path,
                    format!(
                        "has no hidden states {n} layer(s) before the last (SDXL uses `hidden_states.N` \
                         outputs; the session was not opened for clip skip {n})"
                    ),
                )
            })?;
        let hidden = format!("hidden_states.{index}");
        let pooled = self.graph.outputs.iter().any(|p| p.name == "text_embeds");
        let mut names = vec![hidden.as_str()];
        if pooled {
            names.push("text_embeds");
        }
        let inputs = self.inputs(ids)?;
        let mut outs = self.graph.run_outputs(inputs, &names)?.into_iter();
        let states = outs
            .next()
            .ok_or_else(|| Error::model(&self.graph.path, format!("no output `{hidden}`")))?;
        let states = self.array3(&hidden, states)?;
        let pooled = match outs.next() {
            Some((shape, data)) if shape.len() == 2 => Some(
                Array2::from_shape_vec((shape[0], shape[1]), data)
                    .map_err(|e| Error::model(&self.graph.path, format!("`text_embeds`: {e}")))?,
            ),
            Some((shape, _)) => {
                return Err(Error::model(
                    &self.graph.path,
                    format!("output `text_embeds` has shape {shape:?}, expected 2 dims"),
                ));
            }
            None => None,
        };
        Ok((states, pooled))
    }
}

/// Each text encoder's width (one, or SDXL's two): `hidden_size` from its config, else its token table's
/// width read from the graph.
pub fn text_widths(profile: &crate::profile::ModelProfile) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for i in 0..2 {
        let Some(c) = profile.text_encoder_component(i) else {
            break;
        };
        let from_config = c
            .config
            .as_ref()
            .and_then(|v| v["hidden_size"].as_u64())
            .map(|w| w as usize);
        let w = match from_config {
            Some(w) => w,
            None => {
                let model = Model::read(&c.graph)?;
                model
                    .graph()
                    .initializer
                    .iter()
                    .filter(|t| t.dims.len() == 2)
                    .max_by_key(|t| t.dims[0])
                    .map(|t| t.dims[1] as usize)
                    .ok_or_else(|| {
                        Error::model(&c.graph, "has no token table to read its width from")
                    })?
            }
        };
        out.push(w);
    }
    Ok(out)
}

/// Each encoder layer's output tensor, in order, found by the module paths torch's exporter gives node names
/// (`/text_model/encoder/layers.{j}/...`; both optimum's and diffusers' convert script's exports have them): a
/// layer's output is what its last node produces.
fn layer_outputs(model: &Model) -> Result<Vec<String>> {
    let mut last: Vec<Option<String>> = Vec::new();
    for n in &model.graph().node {
        let Some(rest) = n
            .name
            .as_deref()
            .and_then(|s| s.split("/encoder/layers.").nth(1))
        else {
            continue;
        };
        let Some(j) = rest.split('/').next().and_then(|j| j.parse::<usize>().ok()) else {
            continue;
        };
        if j >= 4096 {
            continue;
        }
        if last.len() <= j {
            last.resize(j + 1, None);
        }
        last[j] = n.output.first().cloned();
    }
    if last.is_empty() || last.iter().any(Option::is_none) {
        return Err(Error::model(
            &model.path,
            "has no node names of the form `/text_model/encoder/layers.N/...` to find its layers by; clip skip \
             needs a torch export (optimum, diffusers' convert script) or one with `hidden_states.N` outputs",
        ));
    }
    Ok(last.into_iter().flatten().collect())
}

/// The model edited to give `layer`: SD's clip skip N as the output [`skip_output`] (layer L - N's output through
/// a copy of the final layer norm, which is replayed from the last layer's output); SDXL's as `hidden_states.K`.
fn expose_layer(model: &mut Model, layer: Layer) -> Result<()> {
    let path = model.path.clone();
    let layers = layer_outputs(model)?;
    let count = layers.len();
    let (Layer::Sd(n) | Layer::Xl(n)) = layer;
    // SD: hidden_states[-n] (n = 1 the last layer); SDXL: hidden_states[-(n + 1)].
    let back = match layer {
        Layer::Sd(_) => n,
        Layer::Xl(_) => n + 1,
    };
    if back > count {
        return Err(Error::Invalid {
            field: "clip_skip",
            msg: format!(
                "{n} is more than this text encoder's {count} layers allow ({})",
                path.display()
            ),
        });
    }
    let chosen = &layers[count - back];
    match layer {
        Layer::Sd(n) => {
            let normed = model.replay(
                &layers[count - 1],
                chosen,
                "last_hidden_state",
                &format!(".clip_skip{n}"),
            )?;
            model.expose(&normed, &skip_output(n), "last_hidden_state")?;
        }
        Layer::Xl(_) => {
            let index = count - back + 1;
            model.expose(
                chosen,
                &format!("hidden_states.{index}"),
                "last_hidden_state",
            )?;
        }
    }
    Ok(())
}

/// Whether the graph already outputs what `layer` needs (optimum's SDXL exports have every `hidden_states.N`).
fn has_output_for(model: &Model, layer: Layer) -> bool {
    let outputs: Vec<&str> = model
        .graph()
        .output
        .iter()
        .filter_map(|o| o.name.as_deref())
        .collect();
    match layer {
        Layer::Sd(1) => true,
        Layer::Sd(n) => outputs.contains(&skip_output(n).as_str()),
        Layer::Xl(n) => outputs
            .iter()
            .filter_map(|o| o.strip_prefix("hidden_states.")?.parse::<usize>().ok())
            .max()
            .and_then(|last| last.checked_sub(n))
            .is_some_and(|i| outputs.contains(&format!("hidden_states.{i}").as_str())),
    }
}

/// Append `rows` to the token-embedding table: the `Gather` whose table is a 2-D initializer and whose indices
/// come from `input_ids` now reads `Concat(table, rows)` at the ids of [`TI_IDS`], a new input of
/// `input_ids`' type (`input_ids` itself still feeds the rest: CLIP's pooled output picks the position of its
/// largest id, the end token, which an appended id would outrank). Returns the first appended id. The rows
/// take the table's element type; the table stays where it is (external data included).
fn append_token_rows(model: &mut Model, rows: &Array2<f32>) -> Result<i64> {
    use crate::onnx_edit::pb;
    let path = model.path.clone();
    let g = model.graph();
    let ids_info = g
        .input
        .iter()
        .find(|i| i.name.as_deref() == Some("input_ids"))
        .cloned()
        .ok_or_else(|| Error::model(&path, "has no `input_ids` input"))?;
    let tables: std::collections::HashMap<&str, &pb::TensorProto> = g
        .initializer
        .iter()
        .filter(|t| t.dims.len() == 2)
        .filter_map(|t| Some((t.name.as_deref()?, t)))
        .collect();
    // Whether `tensor` is `input_ids` or made from it by a short chain of one-input nodes (Cast, Reshape).
    let from_ids = |tensor: &str| {
        let mut t = tensor.to_string();
        for _ in 0..4 {
            if t == "input_ids" {
                return true;
            }
            match model.producer(&t).and_then(|n| n.input.first()) {
                Some(next) => t = next.clone(),
                None => return false,
            }
        }
        false
    };
    let (gather, table) = g
        .node
        .iter()
        .enumerate()
        .find_map(|(i, n)| {
            let table = n.input.first().and_then(|t| tables.get(t.as_str()))?;
            (n.op_type.as_deref() == Some("Gather") && n.input.get(1).is_some_and(|x| from_ids(x)))
                .then_some((i, *table))
        })
        .ok_or_else(|| {
            Error::model(
                &path,
                "has no token-embedding lookup (a Gather of a 2-D initializer by input_ids) to add embeddings to",
            )
        })?;
    let (vocab, width) = (table.dims[0], table.dims[1]);
    if width != rows.ncols() as i64 {
        return Err(Error::model(
            &path,
            format!(
                "its token table is {width} wide; the embeddings are {} wide",
                rows.ncols()
            ),
        ));
    }
    let elem = table.data_type.unwrap_or(1);
    let raw: Vec<u8> = match elem {
        1 => rows.iter().flat_map(|x| x.to_le_bytes()).collect(),
        10 => rows
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        16 => rows
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        other => {
            return Err(Error::model(
                &path,
                format!(
                    "its token table has ONNX element type {other}, not float, float16 or bfloat16"
                ),
            ));
        }
    };
    let table_name = table.name.clone().unwrap_or_default();
    let indices = g.node[gather].input[1].clone();
    let rows_name = "sd_onnx.ti.rows".to_string();
    let joined = "sd_onnx.ti.table".to_string();
    // The lookup's indices from the new input: the same chain of nodes, replayed, ahead of everything.
    let before = model.graph().node.len();
    let new_indices = if indices == "input_ids" {
        TI_IDS.to_string()
    } else {
        model.replay("input_ids", TI_IDS, &indices, ".ti")?
    };
    let g = model.graph_mut();
    let replayed: Vec<pb::NodeProto> = g.node.drain(before..).collect();
    let mut front = vec![pb::NodeProto {
        input: vec![table_name, rows_name.clone()],
        output: vec![joined.clone()],
        name: Some("sd_onnx/ti/concat".into()),
        op_type: Some("Concat".into()),
        attribute: vec![pb::AttributeProto {
            name: Some("axis".into()),
            i: Some(0),
            r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
            ..Default::default()
        }],
        ..Default::default()
    }];
    front.extend(replayed);
    let gather = gather + front.len();
    g.node.splice(0..0, front);
    g.node[gather].input[0] = joined;
    g.node[gather].input[1] = new_indices;
    g.initializer.push(pb::TensorProto {
        dims: vec![rows.nrows() as i64, width],
        data_type: Some(elem),
        name: Some(rows_name),
        raw_data: Some(raw.into()),
        ..Default::default()
    });
    let mut info = ids_info;
    info.name = Some(TI_IDS.into());
    g.input.push(info);
    Ok(vocab)
}
