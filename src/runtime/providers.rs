//! Execution providers: which one each component runs on, with what options, and how ONNX Runtime is asked
//! for it. With `super`, the only code that names providers.

use crate::error::{Error, Result};
use crate::runtime::RuntimeConfig;
use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProviderDispatch};

/// An execution provider, by the name `--ep` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// ONNX Runtime's default CPU provider.
    Cpu,
    /// NVIDIA CUDA.
    Cuda,
    /// NVIDIA TensorRT (engines built per shape and cached).
    TensorRt,
    /// DirectML (Windows).
    DirectMl,
    /// Core ML (macOS).
    CoreMl,
}

impl Provider {
    /// The names `--ep` takes, for messages.
    pub const NAMES: &'static str = "cpu, cuda, tensorrt, directml, coreml";

    /// By the name `--ep` takes (`trt` and `dml` too).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "cpu" => Provider::Cpu,
            "cuda" => Provider::Cuda,
            "tensorrt" | "trt" => Provider::TensorRt,
            "directml" | "dml" => Provider::DirectMl,
            "coreml" => Provider::CoreMl,
            other => {
                return Err(Error::Usage(format!(
                    "--ep {other}: choose one of {}",
                    Self::NAMES
                )));
            }
        })
    }

    /// ONNX Runtime's name for it (what `GetAvailableProviders` lists).
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::TensorRt => "TensorrtExecutionProvider",
            Provider::DirectMl => "DmlExecutionProvider",
            Provider::CoreMl => "CoreMLExecutionProvider",
        }
    }

    /// The name `--ep` takes.
    pub fn cli_name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
            Provider::DirectMl => "directml",
            Provider::CoreMl => "coreml",
        }
    }

    pub(crate) fn package_hint(self) -> &'static str {
        match self {
            Provider::Cpu => "any onnxruntime build",
            Provider::Cuda => {
                "the onnxruntime-gpu wheel's library (with CUDA and cuDNN on the library path)"
            }
            Provider::TensorRt => {
                "the onnxruntime-gpu wheel's library plus TensorRT's own libraries (libnvinfer)"
            }
            Provider::DirectMl => "the onnxruntime-directml wheel's onnxruntime.dll (Windows)",
            Provider::CoreMl => "the macOS onnxruntime wheel's library",
        }
    }
}

/// One provider with its device and options.
#[derive(Clone, Debug)]
pub struct ProviderChoice {
    /// The provider.
    pub provider: Provider,
    /// Its device (GPU index).
    pub device_id: i32,
    /// Passed to the provider as-is (`--ep-option KEY=VALUE`).
    pub options: Vec<(String, String)>,
}

impl Default for ProviderChoice {
    fn default() -> Self {
        ProviderChoice {
            provider: Provider::Cpu,
            device_id: 0,
            options: Vec::new(),
        }
    }
}

/// TensorRT shape profiles for one graph: `name:dim1xdim2,...` strings for min, opt and max.
#[derive(Clone, Debug)]
pub struct ShapeProfile {
    /// Smallest shapes.
    pub min: String,
    /// Shapes to optimise for.
    pub opt: String,
    /// Largest shapes.
    pub max: String,
}

/// ONNX Runtime refuses graph capture at session creation when a node runs outside the device provider
/// (shape arithmetic placed on the CPU, Memcpy nodes) or the graph has control flow. Its message says so;
/// this recognises it so that the session can be recreated without capture.
pub fn capture_refusal(message: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    if !m.contains("graph capture") && !m.contains("cuda graph") {
        return None;
    }
    let why = if m.contains("control flow") {
        "the graph has control-flow nodes (If/Loop/Scan)"
    } else if m.contains("partitioned") || m.contains("assigned") {
        "not every node runs on the GPU: ONNX Runtime placed some (typically shape arithmetic, or Memcpy \
         between CPU and GPU nodes) on the CPU"
    } else {
        "ONNX Runtime refused it"
    };
    let first = message.lines().next().unwrap_or(message).trim();
    Some(format!("{why} (ONNX Runtime: {first})"))
}

/// The provider registration for one component (`None`: the CPU provider, ONNX Runtime's default).
pub(crate) fn dispatch(
    config: &RuntimeConfig,
    component: &str,
    choice: &ProviderChoice,
    capture: bool,
) -> Result<Option<ExecutionProviderDispatch>> {
    for (k, v) in &choice.options {
        if k.contains('\0') || v.contains('\0') {
            return Err(Error::Usage(format!(
                "--ep-option {k}: contains a NUL byte"
            )));
        }
    }
    let dispatch = match choice.provider {
        Provider::Cpu => None,
        Provider::Cuda => {
            let mut c = ep::CUDA::default().with_device_id(choice.device_id);
            if capture {
                c = c.with_cuda_graph(true);
            }
            for (k, v) in &choice.options {
                c = c.with_arbitrary_config(k, v);
            }
            Some(c.build())
        }
        Provider::TensorRt => {
            let mut trt = ep::TensorRT::default()
                .with_device_id(choice.device_id)
                .with_fp16(config.trt_fp16);
            if capture {
                trt = trt.with_cuda_graph(true);
            }
            if let Some(dir) = &config.cache_dir {
                let d = dir.join("tensorrt").to_string_lossy().into_owned();
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(&d)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&d);
            }
            if let Some(p) = config.trt_profiles.get(component) {
                trt = trt
                    .with_profile_min_shapes(&p.min)
                    .with_profile_opt_shapes(&p.opt)
                    .with_profile_max_shapes(&p.max);
            }
            for (k, v) in &choice.options {
                trt = trt.with_arbitrary_config(k, v);
            }
            Some(trt.build())
        }
        Provider::DirectMl => {
            if !choice.options.is_empty() {
                return Err(Error::Usage(
                    "--ep-option: DirectML takes no provider options".into(),
                ));
            }
            Some(
                ep::DirectML::default()
                    .with_device_id(choice.device_id)
                    .build(),
            )
        }
        Provider::CoreMl => {
            let mut c = ep::CoreML::default();
            for (k, v) in &choice.options {
                c = c.with_arbitrary_config(k, v);
            }
            Some(c.build())
        }
    };
    Ok(dispatch.map(|d| d.error_on_failure()))
}

/// The providers that can run a graph using these GPU-only contrib operators (`inspect`'s `runs_on`), and the
/// problem to report when there are any.
pub fn providers_for(
    gpu_only_ops: &[String],
    component: &str,
) -> (Vec<&'static str>, Option<String>) {
    if gpu_only_ops.is_empty() {
        return (vec!["cpu", "cuda", "tensorrt", "directml", "coreml"], None);
    }
    (
        vec!["cuda", "tensorrt"],
        Some(format!(
            "{component}: uses ONNX Runtime contrib ops {} that only the CUDA/TensorRT providers implement; the CPU \
             provider cannot run it",
            gpu_only_ops.join(", ")
        )),
    )
}

/// Provider settings as a user writes them (the CLI's flags, a server's configuration): names and
/// `KEY=VALUE` strings, checked by [`RuntimeConfig::from_settings`].
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// `cpu`, `cuda`, `tensorrt`, `directml` or `coreml`.
    pub ep: String,
    /// The device for GPU providers.
    pub device_id: i32,
    /// Provider options passed as-is, `KEY=VALUE`.
    pub ep_options: Vec<String>,
    /// Per-component providers, `COMPONENT=EP`.
    pub component_eps: Vec<String>,
    /// TensorRT: build fp16 engines.
    pub trt_fp16: bool,
    /// Capture the UNet's run as a CUDA graph.
    pub cuda_graph: bool,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            ep: "cpu".into(),
            device_id: 0,
            ep_options: Vec::new(),
            component_eps: Vec::new(),
            trt_fp16: false,
            cuda_graph: false,
        }
    }
}

/// The graphs a folder can hold, by the names `--component-ep` takes.
pub const COMPONENTS: [&str; 5] = [
    "text_encoder",
    "text_encoder_2",
    "unet",
    "vae_decoder",
    "vae_encoder",
];

fn split_kv<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Error::Usage(format!("{flag} {s}: expected KEY=VALUE")))
}

impl RuntimeConfig {
    /// The configuration `settings` describe (the rest as in [`RuntimeConfig::default`]); `shapes` (a
    /// request's, from [`crate::pipeline::Family::graph_shapes`]) fix TensorRT's optimisation profiles, so one
    /// engine per size is built and cached.
    pub fn from_settings(
        settings: &ProviderSettings,
        shapes: Option<&crate::pipeline::family::GraphShapes>,
    ) -> Result<RuntimeConfig> {
        let options = settings
            .ep_options
            .iter()
            .map(|o| split_kv("--ep-option", o).map(|(k, v)| (k.to_string(), v.to_string())))
            .collect::<Result<Vec<_>>>()?;
        // Graph capture needs fixed buffers and one graph id per buffer set, which only --cuda-graph arranges;
        // the raw provider option would also capture the text encoder and VAE runs, with ONNX Runtime's own
        // outputs.
        if let Some((k, _)) = options
            .iter()
            .find(|(k, _)| k == "enable_cuda_graph" || k == "trt_cuda_graph_enable")
        {
            return Err(Error::Usage(format!(
                "--ep-option {k}: use --cuda-graph instead (it binds the UNet's buffers at fixed addresses and \
                 captures the UNet only)"
            )));
        }
        let provider = Provider::parse(&settings.ep)?;
        // ONNX Runtime's CPU provider takes no provider options: one given would be dropped silently.
        if provider == Provider::Cpu
            && let Some(o) = settings.ep_options.first()
        {
            return Err(Error::Usage(format!(
                "--ep-option {o}: the cpu provider takes no options (they are for --ep cuda, tensorrt, directml \
                 or coreml; threads are --threads)"
            )));
        }
        let providers = ProviderChoice {
            provider,
            device_id: settings.device_id,
            options,
        };
        let mut per_component = std::collections::HashMap::new();
        for spec in &settings.component_eps {
            let (name, ep) = split_kv("--component-ep", spec)?;
            if !COMPONENTS.contains(&name) {
                return Err(Error::Usage(format!(
                    "--component-ep {spec}: component is one of {}",
                    COMPONENTS.join(", ")
                )));
            }
            let provider = Provider::parse(ep).map_err(|_| {
                Error::Usage(format!(
                    "--component-ep {spec}: the provider is one of {}",
                    Provider::NAMES
                ))
            })?;
            let options = if provider == providers.provider {
                providers.options.clone()
            } else {
                Vec::new()
            };
            per_component.insert(
                name.to_string(),
                ProviderChoice {
                    provider,
                    device_id: settings.device_id,
                    options,
                },
            );
        }
        let trt_profiles = shapes
            .map(|s| {
                s.per_component
                    .iter()
                    .map(|(c, shape)| {
                        let p = ShapeProfile {
                            min: shape.clone(),
                            opt: shape.clone(),
                            max: shape.clone(),
                        };
                        (c.to_string(), p)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(RuntimeConfig {
            providers,
            per_component,
            trt_fp16: settings.trt_fp16,
            trt_profiles,
            cuda_graph: settings.cuda_graph,
            ..RuntimeConfig::default()
        })
    }

    /// A note worth printing before the first run when a provider builds per-shape engines (TensorRT: minutes).
    pub fn engine_build_note(&self, what: &str) -> Option<String> {
        let trt = self.providers.provider == Provider::TensorRt
            || self
                .per_component
                .values()
                .any(|c| c.provider == Provider::TensorRt);
        trt.then(|| {
            let dir = self
                .cache_dir
                .as_ref()
                .map(|d| d.join("tensorrt").display().to_string())
                .unwrap_or_else(|| "(no cache dir)".into());
            format!(
                "TensorRT builds an engine for {what} on first use; that takes minutes; engines are cached in {dir}"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TensorRT's shape profiles are exactly the request's graph shapes (min = opt = max), so one engine per
    /// size is built and cached, and a new size is a new engine rather than a silent rebuild.
    #[test]
    fn tensorrt_profiles_are_the_request_shapes() {
        let settings = ProviderSettings {
            ep: "tensorrt".into(),
            trt_fp16: true,
            ..ProviderSettings::default()
        };
        let shapes = crate::pipeline::family::GraphShapes {
            per_component: vec![
                ("unet", "sample:2x4x8x8".into()),
                ("vae_decoder", "latent_sample:1x4x8x8".into()),
            ],
        };
        let c = RuntimeConfig::from_settings(&settings, Some(&shapes))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.trt_fp16);
        assert_eq!(c.providers.provider, Provider::TensorRt);
        let unet = &c.trt_profiles["unet"];
        let want = "sample:2x4x8x8";
        assert_eq!(
            (&unet.min[..], &unet.opt[..], &unet.max[..]),
            (want, want, want)
        );
        assert_eq!(c.trt_profiles["vae_decoder"].opt, "latent_sample:1x4x8x8");
        assert!(c.engine_build_note("64x64").is_some());
        let bad = ProviderSettings {
            ep_options: vec!["enable_cuda_graph=1".into()],
            ..ProviderSettings::default()
        };
        let e = RuntimeConfig::from_settings(&bad, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("use --cuda-graph"), "{e}");
        assert!(
            RuntimeConfig::from_settings(&ProviderSettings::default(), None)
                .is_ok_and(|c| c.engine_build_note("x").is_none())
        );
    }
}
