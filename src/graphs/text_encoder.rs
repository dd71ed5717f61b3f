//! The CLIP text encoder graph, and the edit that exposes an earlier layer for clip skip.

use super::{Graph, dtype_name};
use crate::error::{Error, Result};
use crate::onnx_edit::Model;
use crate::profile::Component;
use crate::runtime::{Runtime, SessionSpec};
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
}

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
        })
    }

    /// Open the graph so that it gives `layer`: as exported when it already does (`last_hidden_state`, or the
    /// `hidden_states.N` outputs optimum adds for SDXL), else edited in memory to expose it.
    pub fn load_layer(runtime: &Runtime, c: &Component, layer: Layer) -> Result<Self> {
        let mut spec = SessionSpec::plain(c);
        if layer != Layer::Sd(1) {
            let plain = Self::load_spec(runtime, &spec)?;
            if plain.has_layer(layer) {
                return Ok(TextEncoder { layer, ..plain });
            }
            drop(plain);
            let model = expose_layer(&c.graph, layer)?;
            spec.edited = Some(Arc::from(model.encode()));
            spec.identity = format!("{layer:?}");
        }
        let mut enc = Self::load_spec(runtime, &spec)?;
        enc.layer = layer;
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

    fn ids_input(&self, ids: &[i64]) -> Result<DynValue> {
        let shape = vec![1i64, ids.len() as i64];
        let port = self.graph.input("input_ids")?;
        let ctx = format!("{}: input `input_ids`", self.graph.path.display());
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
                    "input `input_ids` is {}, expected int32 or int64",
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
        let value = self.ids_input(ids)?;
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
        let result = self.graph.run(vec![("input_ids".into(), value)], &out)?;
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
        let value = self.ids_input(ids)?;
        let mut outs = self
            .graph
            .run_outputs(vec![("input_ids".into(), value)], &names)?
            .into_iter();
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

/// `path` edited to give `layer`: SD's clip skip N as the output [`skip_output`] (layer L - N's output through
/// a copy of the final layer norm, which is replayed from the last layer's output); SDXL's as `hidden_states.K`.
fn expose_layer(path: &std::path::Path, layer: Layer) -> Result<Model> {
    let mut model = Model::read(path)?;
    let layers = layer_outputs(&model)?;
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
    Ok(model)
}
