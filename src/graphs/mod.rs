//! The graphs a pipeline runs, each wrapped so that callers pass ndarrays and never care how the export
//! spelled its inputs: names are looked up in the session metadata (never by position), and dtypes are
//! converted to what the graph declares (int32/int64 ids, float/float16/int64 timesteps, fp16 tensors).
//! [`Graph`] is the session wrapper; [`TextEncoder`], [`Unet`] (with its IO binding) and the VAE's
//! [`VaeDecoder`] / [`VaeEncoder`] live in their own files.

mod text_encoder;
mod unet;
mod vae;

pub use text_encoder::{Layer, TextEncoder, text_widths};
pub use unet::{TimestepInput, Unet};
pub use vae::{EncoderOutput, VaeDecoder, VaeEncoder};

use crate::error::{Error, Result};
use crate::profile::Component;
use crate::runtime::{GraphCapture, Runtime, SessionSpec};
use half::f16;
use ndarray::Array4;
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::PathBuf;

/// One declared input or output, for `inspect` and for choosing conversions.
#[derive(Clone, Debug)]
pub struct Port {
    /// The input or output name.
    pub name: String,
    /// Its element type, when a tensor.
    pub dtype: Option<TensorElementType>,
    /// Dimensions; symbolic ones as their names.
    pub dims: Vec<String>,
}

impl Port {
    fn from_outlet(name: &str, ty: &ValueType) -> Self {
        match ty {
            ValueType::Tensor {
                ty,
                shape,
                dimension_symbols,
            } => Port {
                name: name.to_string(),
                dtype: Some(*ty),
                dims: shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        if d >= 0 {
                            d.to_string()
                        } else {
                            dimension_symbols
                                .get(i)
                                .filter(|s| !s.is_empty())
                                .cloned()
                                .unwrap_or_else(|| "?".into())
                        }
                    })
                    .collect(),
            },
            other => Port {
                name: name.to_string(),
                dtype: None,
                dims: vec![format!("{other:?}")],
            },
        }
    }

    /// `name dtype[dims]`, for messages.
    pub fn describe(&self) -> String {
        let t = self.dtype.map(dtype_name).unwrap_or("non-tensor");
        format!("{} {t}[{}]", self.name, self.dims.join(", "))
    }

    fn fixed_dim(&self, i: usize) -> Option<usize> {
        self.dims.get(i).and_then(|d| d.parse().ok())
    }
}

/// Check, without creating a session, that `component`'s graph file is a readable ONNX graph: for graphs a run
/// opens only late (the VAE decoder after the whole loop, when sessions are created as needed), so that a broken
/// file is bad input before the first step rather than after the last. Files over 2 GiB (beyond what one
/// protobuf holds) are left to ONNX Runtime.
pub fn precheck(component: &Component) -> Result<()> {
    let path = &component.graph;
    let read_err = |source| Error::Read {
        path: path.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > (2u64 << 30) {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    if crate::onnx_proto::is_graph(&bytes) {
        Ok(())
    } else {
        Err(Error::model(
            path,
            format!(
                "is not a readable ONNX graph ({len} bytes: empty, truncated or not ONNX); re-export the {}",
                component.name
            ),
        ))
    }
}

/// ONNX's name for an element type (`float16`, `int64`, ...).
pub fn dtype_name(t: TensorElementType) -> &'static str {
    match t {
        TensorElementType::Float32 => "float32",
        TensorElementType::Float16 => "float16",
        TensorElementType::Float64 => "float64",
        TensorElementType::Int32 => "int32",
        TensorElementType::Int64 => "int64",
        TensorElementType::Bfloat16 => "bfloat16",
        _ => "other",
    }
}

/// A session plus its declared ports.
pub struct Graph {
    /// The graph file.
    pub path: PathBuf,
    /// Declared inputs.
    pub inputs: Vec<Port>,
    /// Declared outputs.
    pub outputs: Vec<Port>,
    /// What became of `--cuda-graph` for this session.
    pub capture: GraphCapture,
    session: Session,
}

impl Graph {
    /// Open `component`'s graph as exported.
    pub fn load(runtime: &Runtime, component: &Component) -> Result<Self> {
        Self::load_spec(runtime, &SessionSpec::plain(component))
    }

    /// Open a graph with the spec's initializer overrides.
    pub fn load_spec(runtime: &Runtime, spec: &SessionSpec) -> Result<Self> {
        let component = &spec.component;
        let opened = runtime.open_spec(spec)?;
        let (session, capture) = (opened.session, opened.capture);
        let inputs = session
            .inputs()
            .iter()
            .map(|o| Port::from_outlet(o.name(), o.dtype()))
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| Port::from_outlet(o.name(), o.dtype()))
            .collect();
        Ok(Graph {
            path: component.graph.clone(),
            inputs,
            outputs,
            capture,
            session,
        })
    }

    fn input(&self, name: &str) -> Result<&Port> {
        self.inputs.iter().find(|p| p.name == name).ok_or_else(|| {
            let have: Vec<&str> = self.inputs.iter().map(|p| p.name.as_str()).collect();
            Error::model(
                &self.path,
                format!("graph has no input `{name}` (it has: {})", have.join(", ")),
            )
        })
    }

    /// The named output if present, else the first one.
    fn output_name(&self, preferred: &str) -> Result<String> {
        self.outputs
            .iter()
            .find(|p| p.name == preferred)
            .or_else(|| self.outputs.first())
            .map(|p| p.name.clone())
            .ok_or_else(|| Error::model(&self.path, "graph has no outputs"))
    }

    fn float_input(&self, name: &str, data: Vec<f32>, shape: Vec<i64>) -> Result<DynValue> {
        let port = self.input(name)?;
        let ctx = || format!("{}: input `{name}`", self.path.display());
        match port.dtype {
            Some(TensorElementType::Float16) => {
                let v: Vec<f16> = data.into_iter().map(f16::from_f32).collect();
                Ok(Tensor::from_array((shape, v))
                    .map_err(Error::ort(ctx()))?
                    .into_dyn())
            }
            Some(TensorElementType::Float32) => Ok(Tensor::from_array((shape, data))
                .map_err(Error::ort(ctx()))?
                .into_dyn()),
            Some(other) => Err(Error::model(
                &self.path,
                format!("input `{name}` is {}, expected float", dtype_name(other)),
            )),
            None => Err(Error::model(
                &self.path,
                format!("input `{name}` is not a tensor"),
            )),
        }
    }

    fn run(
        &mut self,
        inputs: Vec<(Cow<'static, str>, DynValue)>,
        output: &str,
    ) -> Result<(Vec<usize>, Vec<f32>)> {
        let mut outs = self.run_outputs(inputs, &[output])?;
        outs.pop()
            .ok_or_else(|| Error::model(&self.path, format!("no output `{output}`")))
    }

    /// Run and return the named outputs (shape, values as f32), in the order asked.
    fn run_outputs(
        &mut self,
        inputs: Vec<(Cow<'static, str>, DynValue)>,
        names: &[&str],
    ) -> Result<Vec<(Vec<usize>, Vec<f32>)>> {
        let ctx = self.path.display().to_string();
        let inputs: Vec<(Cow<'static, str>, SessionInputValue<'_>)> = inputs
            .into_iter()
            .map(|(n, v)| (n, SessionInputValue::from(v)))
            .collect();
        // A captured graph replays fixed addresses; an unbound run allocates its own, so it must not be
        // captured or replayed (`gpu_graph_id` -1).
        let skip = if self.capture == GraphCapture::On {
            let mut o = RunOptions::new().map_err(Error::ort(&ctx))?;
            o.set("gpu_graph_id", "-1").map_err(Error::ort(&ctx))?;
            Some(o)
        } else {
            None
        };
        let outputs = if let Some(o) = &skip {
            self.session.run_with_options(inputs, o)
        } else {
            self.session.run(inputs)
        }
        .map_err(Error::ort(&ctx))?;
        let mut result = Vec::with_capacity(names.len());
        for output in names {
            let value = outputs
                .get(output)
                .ok_or_else(|| Error::model(&self.path, format!("no output `{output}`")))?;
            result.push(match value.data_type() {
                TensorElementType::Float16 => {
                    let (s, d) = value
                        .try_extract_tensor::<f16>()
                        .map_err(Error::ort(&ctx))?;
                    (
                        s.iter().map(|&x| x as usize).collect(),
                        d.iter().map(|v| v.to_f32()).collect(),
                    )
                }
                _ => {
                    let (s, d) = value
                        .try_extract_tensor::<f32>()
                        .map_err(Error::ort(&ctx))?;
                    (s.iter().map(|&x| x as usize).collect(), d.to_vec())
                }
            });
        }
        Ok(result)
    }
}

impl Graph {
    /// Run and return the named output as a 4-D array (latents, images).
    fn run4(
        &mut self,
        inputs: Vec<(Cow<'static, str>, DynValue)>,
        output: &str,
    ) -> Result<Array4<f32>> {
        let (shape, data) = self.run(inputs, output)?;
        if shape.len() != 4 {
            return Err(Error::model(
                &self.path,
                format!("output `{output}` has shape {shape:?}, expected 4 dims"),
            ));
        }
        Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data)
            .map_err(|e| Error::model(&self.path, format!("output `{output}`: {e}")))
    }
}
