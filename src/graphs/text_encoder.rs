//! The CLIP text encoder graph.

use super::{Graph, dtype_name};
use crate::error::{Error, Result};
use crate::profile::Component;
use crate::runtime::{Runtime, SessionSpec};
use ndarray::{Array2, Array3};
use ort::value::{DynValue, Tensor, TensorElementType};

/// CLIP text encoder: 77 ids per prompt -> `last_hidden_state`.
pub struct TextEncoder {
    /// The session.
    pub graph: Graph,
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
        Ok(TextEncoder { graph })
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
        let value = self.ids_input(ids)?;
        let out = self.graph.output_name("last_hidden_state")?;
        let result = self.graph.run(vec![("input_ids".into(), value)], &out)?;
        self.array3(&out, result)
    }

    /// SDXL conditioning from one of its encoders: the penultimate layer's hidden states (diffusers'
    /// `hidden_states[-2]`, optimum's `hidden_states.{N-1}` of `hidden_states.0..N`) and, when the encoder has a
    /// projection (`text_encoder_2`), its pooled `text_embeds`.
    pub fn encode_penultimate(
        &mut self,
        ids: &[i64],
    ) -> Result<(Array3<f32>, Option<Array2<f32>>)> {
        let last = self
            .graph
            .outputs
            .iter()
            .filter_map(|p| p.name.strip_prefix("hidden_states.")?.parse::<usize>().ok())
            .max()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                Error::model(
                    &self.graph.path,
                    "has no `hidden_states.N` outputs: SDXL uses the encoders' penultimate layer; export \
                     the pipeline with optimum (which adds them for SDXL)",
                )
            })?;
        let hidden = format!("hidden_states.{}", last - 1);
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
