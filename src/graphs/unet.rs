//! The UNet graph and its IO binding.

use super::Graph;
use crate::error::{Error, Result};
use crate::profile::Component;
use crate::runtime::{GraphCapture, Runtime, SessionSpec};
use half::f16;
use ndarray::{Array2, Array3, Array4};
use ort::memory::{Allocator, MemoryInfo};
use ort::session::{IoBinding, RunOptions};
use ort::value::{DynValue, Tensor, TensorElementType};
use std::borrow::Cow;

/// How the UNet export wants its timestep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestepInput {
    /// rank 0 (current optimum)
    Scalar(TensorElementType),
    /// shape `[batch]` (diffusers convert script)
    PerSample(TensorElementType),
}

/// The UNet: `sample`, `timestep`, `encoder_hidden_states` and the named 2-D extras in, the noise prediction out.
pub struct Unet {
    /// The session.
    pub graph: Graph,
    /// How the export wants its timestep.
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
    /// Open the component's graph as exported.
    pub fn load(runtime: &Runtime, c: &Component) -> Result<Self> {
        Self::load_spec(runtime, &SessionSpec::plain(c))
    }

    /// Open it with the spec's initializer overrides (LoRA-merged weights).
    pub fn load_spec(runtime: &Runtime, spec: &SessionSpec) -> Result<Self> {
        let c = &spec.component;
        let graph = Graph::load_spec(runtime, spec)?;
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
    ///
    /// (Long on purpose: one ordered sequence of allocate, bind, stage, whose steps only make sense together.)
    pub fn bind(
        &mut self,
        context: &Array3<f32>,
        extras: &[(&'static str, Array2<f32>)],
        sample_shape: &[usize],
        out_channels: usize,
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
            out_channels,
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

    /// Axis `axis` of input `name`, when the graph fixes it.
    fn declared_input_dim(&self, name: &str, axis: usize) -> Option<usize> {
        self.graph
            .inputs
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.fixed_dim(axis))
    }

    /// The text width `encoder_hidden_states` declares, when fixed (768 for SD 1.x, 1024 for 2.x, 2048 for XL).
    pub fn declared_context_width(&self) -> Option<usize> {
        self.declared_input_dim("encoder_hidden_states", 2)
    }

    /// Input channels the `sample` port declares, when fixed (4, or 9 for inpainting UNets).
    pub fn declared_input_channels(&self) -> Option<usize> {
        self.declared_input_dim("sample", 1)
    }

    /// The UNet's inputs must agree with what the folder's configs say, since they decide the text encoding
    /// and the latents: a guidance embedding (`timestep_cond`, LCM), SDXL's added conditioning (`text_embeds`,
    /// `time_ids`), and the channel counts where the graph fixes them.
    pub fn check_against(&self, profile: &crate::profile::ModelProfile) -> Result<()> {
        let path = &profile.unet.graph;
        match (self.takes_guidance, &profile.guidance_embedding) {
            (true, None) => {
                return Err(Error::model(
                    path,
                    "takes `timestep_cond` (a guidance-distilled UNet) but unet/config.json gives no \
                     time_cond_proj_dim: add the config the export came with",
                ));
            }
            (false, Some(g)) => {
                return Err(Error::model(
                    path,
                    format!(
                        "has no `timestep_cond` input, but {} says the UNet takes a guidance embedding",
                        g.source
                    ),
                ));
            }
            _ => {}
        }
        if self.takes_added_cond != profile.xl.is_some() {
            return Err(Error::model(
                path,
                if self.takes_added_cond {
                    "takes SDXL's `text_embeds`/`time_ids`, but the folder has no text_encoder_2/"
                } else {
                    "lacks SDXL's `text_embeds`/`time_ids` inputs, but the folder is an SDXL pipeline"
                },
            ));
        }
        for (what, declared, fact) in [
            ("output", self.declared_channels(), &profile.latent_channels),
            (
                "`sample` input",
                self.declared_input_channels(),
                &profile.unet_in_channels,
            ),
        ] {
            if let Some(d) = declared.filter(|&d| d != fact.value) {
                return Err(Error::model(
                    path,
                    format!(
                        "its {what} has {d} channels, but {} says {} (add the unet/config.json the export came with)",
                        fact.source, fact.value
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One UNet call (through the binding when `bind` set one up for these shapes), returning `out_sample`.
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
