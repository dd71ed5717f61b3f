//! The three graphs txt2img runs, each wrapped so that callers pass ndarrays and never care how the export
//! spelled its inputs: names are looked up in the session metadata (never by position), and dtypes are
//! converted to what the graph declares (int32/int64 ids, float/float16/int64 timesteps, fp16 tensors).

use crate::error::{Error, Result};
use crate::profile::Component;
use crate::runtime::{GraphCapture, Runtime};
use half::f16;
use ndarray::{Array2, Array3, Array4};
use ort::memory::{Allocator, MemoryInfo};
use ort::session::{IoBinding, RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use std::borrow::Cow;
use std::path::PathBuf;

/// One declared input or output, for `inspect` and for choosing conversions.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: String,
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

    pub fn describe(&self) -> String {
        let t = self.dtype.map(dtype_name).unwrap_or("non-tensor");
        format!("{} {t}[{}]", self.name, self.dims.join(", "))
    }

    fn fixed_dim(&self, i: usize) -> Option<usize> {
        self.dims.get(i).and_then(|d| d.parse().ok())
    }
}

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
    pub path: PathBuf,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// What became of `--cuda-graph` for this session.
    pub capture: GraphCapture,
    session: Session,
}

impl Graph {
    pub fn load(runtime: &Runtime, component: &Component) -> Result<Self> {
        let opened = runtime.open(component)?;
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

/// CLIP text encoder: 77 ids per prompt -> `last_hidden_state`.
pub struct TextEncoder {
    pub graph: Graph,
}

impl TextEncoder {
    pub fn load(runtime: &Runtime, c: &Component) -> Result<Self> {
        let graph = Graph::load(runtime, c)?;
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

/// How the UNet export wants its timestep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepInput {
    /// rank 0 (current optimum)
    Scalar(TensorElementType),
    /// shape [batch] (diffusers convert script)
    PerSample(TensorElementType),
}

pub struct Unet {
    pub graph: Graph,
    pub timestep: TimestepInput,
    out: String,
    /// Device memory for bound buffers (CUDA/TensorRT), else host.
    device: Option<MemoryInfo<'static>>,
    bound: Option<Bound>,
    /// Whether the graph takes `timestep_cond` (a guidance-distilled UNet: the guidance scale as an embedding).
    pub takes_guidance: bool,
    /// Whether the graph takes SDXL's added conditioning (`text_embeds` and `time_ids`).
    pub takes_added_cond: bool,
    /// UNet calls served through the IO binding (for tests and `bench`).
    pub bound_runs: usize,
    /// Whether the last `bind` kept the previous binding's buffers (same shapes) instead of allocating.
    pub reused_binding: bool,
    /// The last bound call's host work around `Session::run`: writing the latents and timestep into the bound
    /// inputs and reading the output back (the host<->device copies on GPUs, the price of a host scheduler).
    pub last_host_io: std::time::Duration,
    /// With graph capture: the `gpu_graph_id` the next new set of bound buffers is captured under (ONNX
    /// Runtime reserves 0; -1 turns capture off for a run).
    next_graph_id: i32,
}

/// A typed tensor of the element type a graph port declares.
enum Buf {
    F32(Tensor<f32>),
    F16(Tensor<f16>),
    I64(Tensor<i64>),
}

impl Buf {
    fn new(allocator: &Allocator, ty: TensorElementType, shape: &[usize]) -> ort::Result<Self> {
        let shape = shape.to_vec();
        Ok(match ty {
            TensorElementType::Float16 => Buf::F16(Tensor::new(allocator, shape)?),
            TensorElementType::Int64 => Buf::I64(Tensor::new(allocator, shape)?),
            _ => Buf::F32(Tensor::new(allocator, shape)?),
        })
    }

    fn element_type(&self) -> TensorElementType {
        match self {
            Buf::F32(_) => TensorElementType::Float32,
            Buf::F16(_) => TensorElementType::Float16,
            Buf::I64(_) => TensorElementType::Int64,
        }
    }

    /// Overwrite the contents (host memory only).
    fn fill(&mut self, values: impl Iterator<Item = f64>) {
        match self {
            Buf::F32(t) => t
                .extract_tensor_mut()
                .1
                .iter_mut()
                .zip(values)
                .for_each(|(d, v)| *d = v as f32),
            Buf::F16(t) => t
                .extract_tensor_mut()
                .1
                .iter_mut()
                .zip(values)
                .for_each(|(d, v)| *d = f16::from_f64(v)),
            Buf::I64(t) => t
                .extract_tensor_mut()
                .1
                .iter_mut()
                .zip(values)
                .for_each(|(d, v)| *d = v.round() as i64),
        }
    }

    fn read(&self) -> Vec<f32> {
        match self {
            Buf::F32(t) => t.extract_tensor().1.to_vec(),
            Buf::F16(t) => t.extract_tensor().1.iter().map(|v| v.to_f32()).collect(),
            Buf::I64(t) => t.extract_tensor().1.iter().map(|&v| v as f32).collect(),
        }
    }

    fn copy_into(&self, target: &mut Buf) -> ort::Result<()> {
        match (self, target) {
            (Buf::F32(a), Buf::F32(b)) => a.copy_into(b),
            (Buf::F16(a), Buf::F16(b)) => a.copy_into(b),
            (Buf::I64(a), Buf::I64(b)) => a.copy_into(b),
            _ => Err(ort::Error::new("mismatched buffer types")),
        }
    }

    fn bind_input(&self, binding: &mut IoBinding, name: &str) -> ort::Result<()> {
        match self {
            Buf::F32(t) => binding.bind_input(name, t),
            Buf::F16(t) => binding.bind_input(name, t),
            Buf::I64(t) => binding.bind_input(name, t),
        }
    }

    fn bind_output(&mut self, binding: &mut IoBinding, name: &str) -> ort::Result<()> {
        match self {
            Buf::F32(t) => binding.bind_output(name, t),
            Buf::F16(t) => binding.bind_output(name, t),
            Buf::I64(t) => binding.bind_output(name, t),
        }
    }
}

/// One generation's IO binding: the text embeddings bound once, and the latent, timestep and output buffers
/// allocated once (on the GPU for CUDA/TensorRT, with host staging buffers for the per-step copies).
struct Bound {
    binding: IoBinding,
    sample_shape: Vec<usize>,
    /// False between `unbind` and the next `bind`: kept buffers are reused, never read stale.
    active: bool,
    /// With graph capture: `gpu_graph_id` = this binding's graph. A captured graph reads and writes these
    /// buffers' addresses, so they live as long as the session may replay it.
    run_options: Option<RunOptions>,
    sample: Buf,
    timestep: Buf,
    output: Buf,
    /// Host staging copies when the bound buffers live on the device: (sample, timestep, output).
    staging: Option<(Buf, Buf, Buf)>,
    /// The bound constant inputs (name, shape, buffer): text embeddings, guidance embedding. Kept alive for
    /// the binding's lifetime, refilled when the shapes repeat.
    constants: Vec<(String, Vec<usize>, Buf)>,
}

/// Write `data` into a bound buffer: directly in host memory, through a host copy for device memory.
fn refill(buf: &mut Buf, on_device: bool, shape: &[usize], data: &[f32]) -> ort::Result<()> {
    let values = data.iter().map(|&v| v as f64);
    if on_device {
        let mut host = Buf::new(&Allocator::default(), buf.element_type(), shape)?;
        host.fill(values);
        host.copy_into(buf)
    } else {
        buf.fill(values);
        Ok(())
    }
}

impl Unet {
    pub fn load(runtime: &Runtime, c: &Component) -> Result<Self> {
        let graph = Graph::load(runtime, c)?;
        graph.input("sample")?;
        graph.input("encoder_hidden_states")?;
        let ts = graph.input("timestep")?;
        let ty = ts
            .dtype
            .ok_or_else(|| Error::model(&graph.path, "input `timestep` is not a tensor"))?;
        let timestep = if ts.dims.is_empty() {
            TimestepInput::Scalar(ty)
        } else {
            TimestepInput::PerSample(ty)
        };
        let out = graph.output_name("out_sample")?;
        let device = runtime.device_memory(c.name)?;
        let has = |name: &str| graph.inputs.iter().any(|p| p.name == name);
        let takes_guidance = has("timestep_cond");
        let takes_added_cond = has("text_embeds") && has("time_ids");
        Ok(Unet {
            graph,
            timestep,
            out,
            device,
            bound: None,
            takes_guidance,
            takes_added_cond,
            bound_runs: 0,
            reused_binding: false,
            last_host_io: std::time::Duration::ZERO,
            next_graph_id: 1,
        })
    }

    /// What became of `--cuda-graph` for the UNet session.
    pub fn capture(&self) -> &GraphCapture {
        &self.graph.capture
    }

    /// Bind for a run of UNet calls with these constant inputs (the text embeddings, and the named 2-D extras:
    /// `timestep_cond` for guidance-distilled UNets, SDXL's `text_embeds` and `time_ids`) and this sample shape:
    /// the constants are uploaded once, the other buffers are allocated once. `run` then uses the binding while
    /// the shapes match.
    ///
    /// When the previous binding had the same shapes its buffers are kept and only the constants are refilled:
    /// nothing is reallocated between generations, and a captured device graph stays valid.
    pub fn bind(
        &mut self,
        context: &Array3<f32>,
        extras: &[(&'static str, Array2<f32>)],
        sample_shape: &[usize],
    ) -> Result<()> {
        let ctx = format!("{}: IO binding", self.graph.path.display());
        let context = context.as_standard_layout();
        let extras: Vec<_> = extras
            .iter()
            .map(|(n, a)| (*n, a.as_standard_layout()))
            .collect();
        let mut constants: Vec<(&'static str, &[usize], &[f32])> = vec![(
            "encoder_hidden_states",
            context.shape(),
            context.as_slice().unwrap_or_default(),
        )];
        for (name, a) in &extras {
            constants.push((name, a.shape(), a.as_slice().unwrap_or_default()));
        }
        let on_device = self.device.is_some();
        if let Some(b) = self.bound.as_mut()
            && b.sample_shape == sample_shape
            && b.constants.len() == constants.len()
            && b.constants
                .iter()
                .zip(&constants)
                .all(|((n, sh, _), (name, shape, _))| n == name && sh.as_slice() == *shape)
        {
            for ((_, shape, buf), (_, _, data)) in b.constants.iter_mut().zip(&constants) {
                refill(buf, on_device, shape, data).map_err(Error::ort(&ctx))?;
            }
            b.active = true;
            self.reused_binding = true;
            return Ok(());
        }
        // New shapes: new buffers under a new graph id. A graph captured for the previous buffers stays in the
        // session (ONNX Runtime keeps one per id until the session is dropped) but is never replayed again.
        self.bound = None;
        self.reused_binding = false;
        let run_options = if self.graph.capture == GraphCapture::On {
            let mut o = RunOptions::new().map_err(Error::ort(&ctx))?;
            o.set("gpu_graph_id", self.next_graph_id.to_string())
                .map_err(Error::ort(&ctx))?;
            self.next_graph_id += 1;
            Some(o)
        } else {
            None
        };
        let port_type = |name: &str| {
            self.graph
                .inputs
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.dtype)
                .unwrap_or(TensorElementType::Float32)
        };
        let sample_ty = port_type("sample");
        let out_ty = self
            .graph
            .outputs
            .iter()
            .find(|p| p.name == self.out)
            .and_then(|p| p.dtype)
            .unwrap_or(sample_ty);
        let (ts_ty, ts_shape) = match self.timestep {
            TimestepInput::Scalar(ty) => (ty, vec![]),
            TimestepInput::PerSample(ty) => (ty, vec![sample_shape[0]]),
        };
        let out_shape = [
            sample_shape[0],
            self.declared_channels().unwrap_or(4),
            sample_shape[2],
            sample_shape[3],
        ];
        let host = Allocator::default();
        let dev = match &self.device {
            Some(mem) => {
                Some(Allocator::new(&self.graph.session, mem.clone()).map_err(Error::ort(&ctx))?)
            }
            None => None,
        };
        let alloc = dev.as_ref().unwrap_or(&host);
        let mut binding = self
            .graph
            .session
            .create_binding()
            .map_err(Error::ort(&ctx))?;
        let mut bound_constants = Vec::with_capacity(constants.len());
        for (name, shape, data) in &constants {
            let mut buf = Buf::new(alloc, port_type(name), shape).map_err(Error::ort(&ctx))?;
            refill(&mut buf, on_device, shape, data).map_err(Error::ort(&ctx))?;
            buf.bind_input(&mut binding, name)
                .map_err(Error::ort(&ctx))?;
            bound_constants.push((name.to_string(), shape.to_vec(), buf));
        }
        let sample = Buf::new(alloc, sample_ty, sample_shape).map_err(Error::ort(&ctx))?;
        let timestep = Buf::new(alloc, ts_ty, &ts_shape).map_err(Error::ort(&ctx))?;
        let mut output = Buf::new(alloc, out_ty, &out_shape).map_err(Error::ort(&ctx))?;
        sample
            .bind_input(&mut binding, "sample")
            .map_err(Error::ort(&ctx))?;
        timestep
            .bind_input(&mut binding, "timestep")
            .map_err(Error::ort(&ctx))?;
        output
            .bind_output(&mut binding, &self.out)
            .map_err(Error::ort(&ctx))?;
        let staging = if on_device {
            Some((
                Buf::new(&host, sample_ty, sample_shape).map_err(Error::ort(&ctx))?,
                Buf::new(&host, ts_ty, &ts_shape).map_err(Error::ort(&ctx))?,
                Buf::new(&host, out_ty, &out_shape).map_err(Error::ort(&ctx))?,
            ))
        } else {
            None
        };
        self.bound = Some(Bound {
            binding,
            sample_shape: sample_shape.to_vec(),
            active: true,
            run_options,
            sample,
            timestep,
            output,
            staging,
            constants: bound_constants,
        });
        Ok(())
    }

    /// End this run's use of the binding. Its buffers are kept for the next `bind` with the same shapes
    /// (until then `run` does not use them).
    pub fn unbind(&mut self) {
        if let Some(b) = self.bound.as_mut() {
            b.active = false;
        }
    }

    fn run_bound(&mut self, sample: &Array4<f32>, t: f64) -> Result<Option<Array4<f32>>> {
        let Some(b) = self.bound.as_mut() else {
            return Ok(None);
        };
        if !b.active || b.sample_shape != sample.shape() {
            return Ok(None);
        }
        let ctx = format!("{}: bound run", self.graph.path.display());
        let n_ts = match self.timestep {
            TimestepInput::Scalar(_) => 1,
            TimestepInput::PerSample(_) => sample.shape()[0],
        };
        let t0 = std::time::Instant::now();
        match b.staging.as_mut() {
            None => {
                b.sample.fill(sample.iter().map(|&v| v as f64));
                b.timestep.fill(std::iter::repeat_n(t, n_ts));
            }
            Some((s, ts, _)) => {
                s.fill(sample.iter().map(|&v| v as f64));
                ts.fill(std::iter::repeat_n(t, n_ts));
                s.copy_into(&mut b.sample).map_err(Error::ort(&ctx))?;
                ts.copy_into(&mut b.timestep).map_err(Error::ort(&ctx))?;
            }
        }
        let staged_in = t0.elapsed();
        match &b.run_options {
            // A failure while capturing or replaying is reported as such: the same run without
            // `--cuda-graph` takes the ordinary path.
            Some(o) => self
                .graph
                .session
                .run_binding_with_options(&b.binding, o)
                .map_err(Error::ort(format!(
                    "{ctx} with --cuda-graph (try without it)"
                )))?,
            None => self
                .graph
                .session
                .run_binding(&b.binding)
                .map_err(Error::ort(&ctx))?,
        };
        let t2 = std::time::Instant::now();
        let data = match b.staging.as_mut() {
            None => b.output.read(),
            Some((_, _, out)) => {
                b.output.copy_into(out).map_err(Error::ort(&ctx))?;
                out.read()
            }
        };
        self.last_host_io = staged_in + t2.elapsed();
        let sh = sample.shape();
        let c = data.len() / (sh[0] * sh[2] * sh[3]).max(1);
        Array4::from_shape_vec((sh[0], c, sh[2], sh[3]), data)
            .map(Some)
            .map_err(|e| Error::model(&self.graph.path, e.to_string()))
    }

    /// Latent channels the graph's output declares, when fixed.
    pub fn declared_channels(&self) -> Option<usize> {
        self.graph.outputs.first().and_then(|p| p.fixed_dim(1))
    }

    /// Input channels (4, or 9 for inpainting UNets): the `sample` port when fixed, else `conv_in`'s
    /// weight shape read from the graph file.
    pub fn input_channels(&self) -> Option<usize> {
        self.graph
            .inputs
            .iter()
            .find(|p| p.name == "sample")
            .and_then(|p| p.fixed_dim(1))
            .or_else(|| {
                std::fs::read(&self.graph.path)
                    .ok()
                    .and_then(|bytes| crate::onnx_proto::input_conv_channels(&bytes, "sample"))
            })
    }

    pub fn run(
        &mut self,
        sample: &Array4<f32>,
        t: f64,
        context: &Array3<f32>,
        extras: &[(&'static str, Array2<f32>)],
    ) -> Result<Array4<f32>> {
        self.run_inner(sample, t, context, extras)
            .map_err(|e| self.explain_size(e, sample.shape()))
    }

    /// An exported UNet upsamples by fixed factors: a latent size it cannot halve and double back fails in a
    /// skip-connection Concat. When the profile could not know the UNet's depth, say that in words.
    fn explain_size(&self, e: Error, shape: &[usize]) -> Error {
        match &e {
            Error::Ort { msg, .. } if msg.contains("Non concat axis dimensions must match") => {
                Error::model(
                    &self.graph.path,
                    format!(
                        "this UNet cannot run a {}x{} latent: an exported UNet halves and doubles the latent a \
                         fixed number of times, so image sizes must be multiples of a higher power of two (64 \
                         for SD 1.x/2.x); pick another --width/--height (ONNX Runtime: {})",
                        shape.get(3).copied().unwrap_or(0),
                        shape.get(2).copied().unwrap_or(0),
                        msg.lines().next().unwrap_or_default()
                    ),
                )
            }
            _ => e,
        }
    }

    fn run_inner(
        &mut self,
        sample: &Array4<f32>,
        t: f64,
        context: &Array3<f32>,
        extras: &[(&'static str, Array2<f32>)],
    ) -> Result<Array4<f32>> {
        if let Some(out) = self.run_bound(sample, t)? {
            self.bound_runs += 1;
            return Ok(out);
        }
        let b = sample.shape()[0];
        let sshape: Vec<i64> = sample.shape().iter().map(|&d| d as i64).collect();
        let cshape: Vec<i64> = context.shape().iter().map(|&d| d as i64).collect();
        let sample_v =
            self.graph
                .float_input("sample", sample.iter().copied().collect(), sshape)?;
        let ctx_v = self.graph.float_input(
            "encoder_hidden_states",
            context.iter().copied().collect(),
            cshape,
        )?;
        let (ty, shape) = match self.timestep {
            TimestepInput::Scalar(ty) => (ty, vec![]),
            TimestepInput::PerSample(ty) => (ty, vec![b as i64]),
        };
        let n = shape.first().copied().unwrap_or(1) as usize;
        let ts_v = match ty {
            TensorElementType::Int64 => Tensor::from_array((shape, vec![t.round() as i64; n]))
                .map_err(Error::ort("timestep"))?
                .into_dyn(),
            _ => self
                .graph
                .float_input("timestep", vec![t as f32; n], shape)?,
        };
        let mut inputs: Vec<(Cow<'static, str>, DynValue)> = vec![
            ("sample".into(), sample_v),
            ("timestep".into(), ts_v),
            ("encoder_hidden_states".into(), ctx_v),
        ];
        for (name, a) in extras {
            let shape = a.shape().iter().map(|&d| d as i64).collect();
            let v = self
                .graph
                .float_input(name, a.iter().copied().collect(), shape)?;
            inputs.push(((*name).into(), v));
        }
        let out = self.graph.run4(inputs, &self.out.clone())?;
        if out.shape()[0] != b {
            return Err(Error::model(
                &self.graph.path,
                format!(
                    "output `{}` has batch {}, expected {b}",
                    self.out,
                    out.shape()[0]
                ),
            ));
        }
        Ok(out)
    }
}

pub struct VaeDecoder {
    pub graph: Graph,
    out: String,
}

impl VaeDecoder {
    pub fn load(runtime: &Runtime, c: &Component) -> Result<Self> {
        let graph = Graph::load(runtime, c)?;
        graph.input("latent_sample")?;
        let out = graph.output_name("sample")?;
        Ok(VaeDecoder { graph, out })
    }

    /// True when the graph takes float16 latents.
    pub fn is_fp16(&self) -> bool {
        self.graph
            .inputs
            .iter()
            .any(|p| p.name == "latent_sample" && p.dtype == Some(TensorElementType::Float16))
    }

    /// Decode one latent (1, C, h, w) to an image tensor (1, 3, H, W) in [-1, 1].
    pub fn decode(&mut self, latent: &Array4<f32>) -> Result<Array4<f32>> {
        let shape: Vec<i64> = latent.shape().iter().map(|&d| d as i64).collect();
        let v = self
            .graph
            .float_input("latent_sample", latent.iter().copied().collect(), shape)?;
        self.graph
            .run4(vec![("latent_sample".into(), v)], &self.out.clone())
    }
}

/// What the VAE encoder export returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderOutput {
    /// Mean and log-variance (optimum's `latent_parameters`): we sample with the run's generator.
    Parameters,
    /// Already sampled inside the graph (the convert script's `latent_sample`): not reproducible.
    Sample,
}

pub struct VaeEncoder {
    pub graph: Graph,
    pub output: EncoderOutput,
    out: String,
}

impl VaeEncoder {
    pub fn load(runtime: &Runtime, c: &Component) -> Result<Self> {
        let graph = Graph::load(runtime, c)?;
        graph.input("sample")?;
        let out = graph.output_name("latent_parameters")?;
        let output = if out == "latent_sample" {
            EncoderOutput::Sample
        } else {
            EncoderOutput::Parameters
        };
        Ok(VaeEncoder { graph, output, out })
    }

    /// Encode a (1, 3, H, W) image in [-1, 1]: latent parameters (2C channels) or a latent sample (C).
    pub fn encode(&mut self, image: &Array4<f32>) -> Result<Array4<f32>> {
        let shape: Vec<i64> = image.shape().iter().map(|&d| d as i64).collect();
        let v = self
            .graph
            .float_input("sample", image.iter().copied().collect(), shape)?;
        self.graph
            .run4(vec![("sample".into(), v)], &self.out.clone())
    }
}
