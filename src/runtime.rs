//! ONNX Runtime: finding and loading the shared library, choosing execution providers, and creating sessions.
//! This is the only module that names execution providers.

use crate::error::{Error, Result};
use crate::profile::Component;
use ort::environment::Environment;
use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProviderDispatch};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// An execution provider, by the name `--ep` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
    TensorRt,
    DirectMl,
    CoreMl,
}

impl Provider {
    pub const NAMES: &'static str = "cpu, cuda, tensorrt, directml, coreml";

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

    pub fn cli_name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
            Provider::DirectMl => "directml",
            Provider::CoreMl => "coreml",
        }
    }

    fn package_hint(self) -> &'static str {
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
    pub provider: Provider,
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
    pub min: String,
    pub opt: String,
    pub max: String,
}

/// How sessions are created: providers (one default, per-component overrides), TensorRT settings, caches.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConfig {
    pub providers: ProviderChoice,
    /// Component name (`unet`, `vae_decoder`, ...) -> provider, overriding `providers`.
    pub per_component: HashMap<String, ProviderChoice>,
    pub trt_fp16: bool,
    /// Where TensorRT engines, timing caches and optimised CPU graphs are kept.
    pub cache_dir: Option<PathBuf>,
    /// Component name -> TensorRT profile shapes derived from the requested size and batch.
    pub trt_profiles: HashMap<String, ShapeProfile>,
    /// Write each optimised graph once and load it afterwards (`--no-graph-cache` turns this off).
    pub graph_cache: bool,
    /// Intra-op threads; `None`: physical cores.
    pub threads: Option<usize>,
    /// `--low-memory`: no memory-pattern planning (ONNX Runtime then allocates per tensor instead of one
    /// planned block per run).
    pub low_memory: bool,
    /// `--cuda-graph`: capture the UNet's run once and replay it (CUDA: `enable_cuda_graph`, TensorRT:
    /// `trt_cuda_graph_enable`). Only the UNet gets it: the other graphs run once per image.
    pub cuda_graph: bool,
}

/// The component that `--cuda-graph` applies to.
pub const CAPTURED_COMPONENT: &str = "unet";

/// Whether a session captures its run as a device graph and replays it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GraphCapture {
    /// Not asked for (or not applicable to this component).
    #[default]
    Off,
    /// Asked for and accepted by ONNX Runtime: bind inputs and outputs at fixed device addresses.
    On,
    /// Asked for, refused by ONNX Runtime at session creation; the session was created without it.
    Refused(String),
}

impl std::fmt::Display for GraphCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphCapture::Off => f.write_str("off"),
            GraphCapture::On => f.write_str("on"),
            GraphCapture::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// A created session and what became of `--cuda-graph` for it.
pub struct OpenedSession {
    pub session: Session,
    pub capture: GraphCapture,
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

impl RuntimeConfig {
    /// The provider for one component: its override, else the default.
    pub fn choice_for(&self, component: &str) -> &ProviderChoice {
        self.per_component.get(component).unwrap_or(&self.providers)
    }

    /// Whether `--cuda-graph` applies to this component: asked for, the UNet, on a CUDA device.
    pub fn captures(&self, component: &str) -> bool {
        self.cuda_graph
            && component == CAPTURED_COMPONENT
            && matches!(
                self.choice_for(component).provider,
                Provider::Cuda | Provider::TensorRt
            )
    }
}

/// The cache folder: `$SD_ONNX_CACHE`, else `$XDG_CACHE_HOME/sd-onnx`, else `~/.cache/sd-onnx`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SD_ONNX_CACHE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d).join("sd-onnx"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("sd-onnx"))
}

/// Physical cores (Linux: distinct (package, core) pairs), else what std reports.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut seen = std::collections::HashSet::new();
    for cpu in 0..logical.max(1) * 2 {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let read = |f: &str| {
            std::fs::read_to_string(format!("{base}/{f}"))
                .ok()
                .map(|s| s.trim().to_string())
        };
        if let (Some(pkg), Some(core)) = (read("physical_package_id"), read("core_id")) {
            seen.insert((pkg, core));
        }
    }
    if seen.is_empty() {
        logical
    } else {
        seen.len().min(logical)
    }
}

/// The oldest ONNX Runtime the binary can load (ort's `api-17` baseline).
pub const MIN_ORT_MINOR: u32 = 17;

#[cfg(target_os = "windows")]
const LIB_NAMES: &[&str] = &["onnxruntime.dll"];
#[cfg(target_os = "macos")]
const LIB_NAMES: &[&str] = &["libonnxruntime.dylib", "libonnxruntime.1.31.1.dylib"];
#[cfg(not(any(target_os = "windows", target_os = "macos")))]
const LIB_NAMES: &[&str] = &[
    "libonnxruntime.so",
    "libonnxruntime.so.1",
    "libonnxruntime.so.1.31.1",
];

const HOW_TO_GET: &str = "get it with `scripts/setup` (it installs onnxruntime==1.31.1 into .venv and places the \
library next to the binary), or `pip install onnxruntime==1.31.1` and pass --ort-lib \
<site-packages>/onnxruntime/capi/libonnxruntime.so.1.31.1 (or set ORT_DYLIB_PATH); for GPUs use the library \
from onnxruntime-gpu / onnxruntime-directml the same way";

/// Where the library was found, and why there.
#[derive(Clone, Debug)]
pub struct LibraryChoice {
    pub path: PathBuf,
    pub source: &'static str,
}

/// `--ort-lib`, then `ORT_DYLIB_PATH`, then a library next to the executable.
pub fn resolve_library(flag: Option<&Path>) -> Result<LibraryChoice> {
    if let Some(p) = flag {
        return existing(p, "--ort-lib");
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return existing(Path::new(&p), "ORT_DYLIB_PATH");
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    if let Some(dir) = &exe_dir {
        for name in LIB_NAMES {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(LibraryChoice {
                    path: candidate,
                    source: "next to the executable",
                });
            }
        }
    }
    let looked = exe_dir
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "<unknown>".into());
    Err(Error::Runtime(format!(
        "ONNX Runtime library not found (no --ort-lib, no ORT_DYLIB_PATH, no {} in {looked}); {HOW_TO_GET}",
        LIB_NAMES[0]
    )))
}

fn existing(p: &Path, source: &'static str) -> Result<LibraryChoice> {
    if p.is_file() {
        Ok(LibraryChoice {
            path: p.to_path_buf(),
            source,
        })
    } else {
        Err(Error::Runtime(format!(
            "{}: no such file (from {source}); {HOW_TO_GET}",
            p.display()
        )))
    }
}

/// A loaded ONNX Runtime and the session options we choose.
pub struct Runtime {
    env: Environment,
    pub library: LibraryChoice,
    pub version: String,
    pub threads: usize,
    pub config: RuntimeConfig,
}

impl Runtime {
    /// Load the library with the default configuration (CPU, graph cache on).
    pub fn load(flag: Option<&Path>) -> Result<Self> {
        Self::load_with(
            flag,
            RuntimeConfig {
                graph_cache: true,
                ..RuntimeConfig::default()
            },
        )
    }

    pub fn load_with(flag: Option<&Path>, config: RuntimeConfig) -> Result<Self> {
        let library = resolve_library(flag)?;
        let (env, version) = environment(&library.path)?;
        // ONNX Runtime's intra-op pool runs best on physical cores (hyper-threads share the FMA units).
        let threads = config.threads.unwrap_or_else(physical_cores);
        let rt = Runtime {
            env,
            library,
            version,
            threads,
            config,
        };
        // Every provider asked for must exist in this library: say so now, not after the text encoder ran.
        let mut wanted = vec![rt.config.providers.provider];
        wanted.extend(rt.config.per_component.values().map(|c| c.provider));
        let available = rt.available_providers()?;
        for p in wanted {
            if !available.iter().any(|a| a == p.ort_name()) {
                return Err(Error::Runtime(format!(
                    "--ep {}: the ONNX Runtime library at {} has no {} (it offers: {}); use {}",
                    p.cli_name(),
                    rt.library.path.display(),
                    p.ort_name(),
                    available.join(", "),
                    p.package_hint()
                )));
            }
        }
        if rt.config.cuda_graph {
            let unet = rt.choice_for(CAPTURED_COMPONENT).provider;
            if !matches!(unet, Provider::Cuda | Provider::TensorRt) {
                return Err(Error::Usage(format!(
                    "--cuda-graph: the unet runs on {}; graph capture needs --ep cuda or --ep tensorrt \
                     (or --component-ep unet=cuda)",
                    unet.cli_name()
                )));
            }
        }
        Ok(rt)
    }

    /// What the loaded library was built with (`onnxruntime.get_available_providers()`).
    pub fn available_providers(&self) -> Result<Vec<String>> {
        let api = ort::api();
        let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
        let mut n: std::ffi::c_int = 0;
        // SAFETY: the API fills `list` with `n` C strings that we release below with the matching call.
        let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut n) };
        if !status.0.is_null() {
            return Err(Error::Runtime("GetAvailableProviders failed".into()));
        }
        let mut out = Vec::new();
        for i in 0..n.max(0) as usize {
            // SAFETY: i < n entries, each a NUL-terminated string owned by ONNX Runtime.
            let s = unsafe { std::ffi::CStr::from_ptr(*list.add(i)) };
            out.push(s.to_string_lossy().into_owned());
        }
        // SAFETY: releasing exactly what GetAvailableProviders returned.
        unsafe {
            let _ = (api.ReleaseAvailableProviders)(list, n);
        }
        Ok(out)
    }

    /// Device memory for IO binding of `component`'s inputs and outputs: the GPU for CUDA/TensorRT,
    /// `None` for providers that run from host memory.
    pub fn device_memory(
        &self,
        component: &str,
    ) -> Result<Option<ort::memory::MemoryInfo<'static>>> {
        let choice = self.choice_for(component);
        match choice.provider {
            Provider::Cuda | Provider::TensorRt => ort::memory::MemoryInfo::new(
                ort::memory::AllocationDevice::CUDA,
                choice.device_id,
                ort::memory::AllocatorType::Device,
                ort::memory::MemoryType::Default,
            )
            .map(Some)
            .map_err(Error::ort(format!("{component}: device memory"))),
            _ => Ok(None),
        }
    }

    fn choice_for(&self, component: &str) -> &ProviderChoice {
        self.config.choice_for(component)
    }

    fn dispatch(
        &self,
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
                    .with_fp16(self.config.trt_fp16);
                if capture {
                    trt = trt.with_cuda_graph(true);
                }
                if let Some(dir) = &self.config.cache_dir {
                    let d = dir.join("tensorrt").to_string_lossy().into_owned();
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(&d)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&d);
                }
                if let Some(p) = self.config.trt_profiles.get(component) {
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

    /// A session for one component, on the provider chosen for it, with graph capture when `--cuda-graph`
    /// asks for it. When ONNX Runtime refuses capture for this graph, the session is created again without it
    /// and the reason is returned (never a silent change of provider).
    pub fn open(&self, component: &Component) -> Result<OpenedSession> {
        if !self.config.captures(component.name) {
            return Ok(OpenedSession {
                session: self.create(component, false)?,
                capture: GraphCapture::Off,
            });
        }
        match self.create(component, true) {
            Ok(session) => Ok(OpenedSession {
                session,
                capture: GraphCapture::On,
            }),
            Err(e) => match capture_refusal(&e.to_string()) {
                Some(reason) => Ok(OpenedSession {
                    session: self.create(component, false)?,
                    capture: GraphCapture::Refused(reason),
                }),
                None => Err(e),
            },
        }
    }

    /// Registration failures are errors (never a silent CPU fallback). With the graph cache on, CPU sessions
    /// load a previously optimised graph.
    fn create(&self, component: &Component, capture: bool) -> Result<Session> {
        let graph = &component.graph;
        let context = graph.display().to_string();
        let choice = self.choice_for(component.name).clone();
        let mut builder = Session::builder(&self.env)
            .map_err(Error::ort(&context))?
            .with_intra_threads(self.threads)
            .map_err(Error::ort(&context))?
            .with_memory_pattern(!self.config.low_memory)
            .map_err(Error::ort(&context))?;
        if let Some(d) = self.dispatch(component.name, &choice, capture)? {
            builder = builder.with_execution_providers([d]).map_err(|e| {
                Error::Runtime(format!(
                    "{}: --ep {} could not be registered for {}: {e}",
                    context,
                    choice.provider.cli_name(),
                    component.name
                ))
            })?;
        }
        let cached = if choice.provider == Provider::Cpu && self.config.graph_cache {
            self.graph_cache_path(component)
        } else {
            None
        };
        match cached {
            Some(path) if path.is_file() => builder
                .with_optimization_level(GraphOptimizationLevel::Disable)
                .map_err(Error::ort(&context))?
                .commit_from_file(&path)
                .map_err(Error::ort(path.display().to_string())),
            Some(path) => {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                // The graph is written under a temporary name and renamed into place last, so a run that
                // dies midway leaves no entry that a later run would load. Large initializers go to a data
                // file with its final name (the graph refers to it by that name).
                let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
                let external = path
                    .with_extension("data")
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let session = builder
                    .with_optimization_level(GraphOptimizationLevel::All)
                    .map_err(Error::ort(&context))?
                    .with_config_entry(
                        "session.optimized_model_external_initializers_file_name",
                        &external,
                    )
                    .map_err(Error::ort(&context))?
                    .with_config_entry(
                        "session.optimized_model_external_initializers_min_size_in_bytes",
                        "1024",
                    )
                    .map_err(Error::ort(&context))?
                    .with_optimized_model_path(&tmp)
                    .map_err(Error::ort(&context))?
                    .commit_from_file(graph)
                    .map_err(Error::ort(&context))?;
                if std::fs::rename(&tmp, &path).is_err() {
                    let _ = std::fs::remove_file(&tmp);
                } else if let Some(stamp) = source_stamp(graph) {
                    // Remember which graph this entry optimises, so that entries of graphs since moved,
                    // deleted or re-exported are removed instead of piling up (they are as large as models).
                    let _ = std::fs::write(path.with_extension("source"), stamp);
                    if let Some(dir) = path.parent() {
                        prune_graph_cache(dir);
                    }
                }
                Ok(session)
            }
            None => builder
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(Error::ort(&context))?
                .commit_from_file(graph)
                .map_err(Error::ort(&context)),
        }
    }

    /// Where the optimised graph for `component` is cached: keyed by the graph's path, size and mtime, its
    /// external data sizes, the ONNX Runtime version, the thread count and the CPU model, under
    /// `cache_dir/graphs`. Delete that folder (or pass --no-graph-cache) to clear or bypass it.
    pub fn graph_cache_path(&self, component: &Component) -> Option<PathBuf> {
        let dir = self.config.cache_dir.as_ref()?.join("graphs");
        let source = source_stamp(&component.graph)?;
        let mut external_sizes = 0u64;
        for f in &component.external_data {
            external_sizes =
                external_sizes.wrapping_add(std::fs::metadata(f).map(|m| m.len()).unwrap_or(0));
        }
        // Optimised CPU graphs use layouts for this processor: key on its model name too.
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let key = format!(
            "{}|{}|{}|{}|{cpu}",
            source.replace('\n', "|"),
            external_sizes,
            self.version,
            self.threads
        );
        // FNV-1a: a stable name, not a security boundary.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Some(dir.join(format!("{}-{h:016x}.onnx", component.name)))
    }
}

/// What identifies a cached graph's source: its canonical path, size and modification time, one per line.
fn source_stamp(graph: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(graph).ok()?;
    let meta = std::fs::metadata(&canon).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{}\n{}\n{mtime}", canon.display(), meta.len()))
}

/// Remove the cache entries (`.onnx`, `.data`, `.source`) whose source graph no longer exists or has changed
/// since it was optimised. Entries without a `.source` record are left alone.
pub fn prune_graph_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("source") {
            continue;
        }
        let Ok(recorded) = std::fs::read_to_string(&p) else {
            continue;
        };
        let source = recorded.lines().next().map(PathBuf::from);
        let current = source.as_deref().and_then(source_stamp);
        if current.as_deref() != Some(recorded.as_str()) {
            for ext in ["onnx", "data", "source"] {
                let _ = std::fs::remove_file(p.with_extension(ext));
            }
        }
    }
}

/// The process's ONNX Runtime: one library and one environment per process (`ort` loads the library once and
/// allows one environment), shared by every `Runtime` created in it.
static LOADED: std::sync::Mutex<Option<(PathBuf, Environment, String)>> =
    std::sync::Mutex::new(None);

/// The environment for `path`: created on first use, the same one afterwards; a different library in the same
/// process is an error (it would silently be the first one).
fn environment(path: &Path) -> Result<(Environment, String)> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((first, env, version)) = loaded.as_ref() {
        if *first == canonical {
            return Ok((env.clone(), version.clone()));
        }
        return Err(Error::Runtime(format!(
            "{}: this process already runs ONNX Runtime from {}; a process can load one library (start another \
             process for the other one)",
            path.display(),
            first.display()
        )));
    }
    let version = library_version(path)?;
    let builder = ort::init_from(path).map_err(|e| {
        Error::Runtime(format!(
            "{}: cannot load ONNX Runtime ({e}); {HOW_TO_GET}",
            path.display()
        ))
    })?;
    let env = builder
        .with_name("sd-onnx")
        .build()
        .map_err(|e| Error::Runtime(format!("{}: {e}", path.display())))?;
    *loaded = Some((canonical, env.clone(), version.clone()));
    Ok((env, version))
}

/// Read the library's version before handing it to `ort`, so that a too-old build gets our message.
fn library_version(path: &Path) -> Result<String> {
    // SAFETY: loading a shared library runs its initialisers; this is the library the user chose to run.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        Error::Runtime(format!(
            "{}: cannot load ({e}); {HOW_TO_GET}",
            path.display()
        ))
    })?;
    type GetBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: OrtGetApiBase has this signature in every ONNX Runtime release.
    let get: libloading::Symbol<GetBase> = unsafe { lib.get(b"OrtGetApiBase") }.map_err(|_| {
        Error::Runtime(format!(
            "{}: not an ONNX Runtime library (no OrtGetApiBase); {HOW_TO_GET}",
            path.display()
        ))
    })?;
    // SAFETY: the returned pointer is static in the library; GetVersionString returns a static C string.
    let version = unsafe {
        let base = get();
        if base.is_null() {
            return Err(Error::Runtime(format!(
                "{}: OrtGetApiBase returned nothing",
                path.display()
            )));
        }
        std::ffi::CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned()
    };
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minor < MIN_ORT_MINOR {
        return Err(Error::Runtime(format!(
            "{} is ONNX Runtime {version}; sd-onnx needs 1.{MIN_ORT_MINOR} or newer ({HOW_TO_GET})",
            path.display()
        )));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages ONNX Runtime 1.17-1.31 gives when it refuses graph capture at session creation
    /// (inference_session.cc), and one that is not about capture.
    #[test]
    fn capture_refusals_are_recognised_with_their_reason() {
        let split = "This session cannot use the graph capture feature as requested by the user as all \
                     compute graph nodes have not been partitioned to the CUDAExecutionProvider";
        let why = capture_refusal(split).unwrap_or_default();
        assert!(why.contains("not every node runs on the GPU"), "{why}");
        assert!(
            why.contains("partitioned to the CUDAExecutionProvider"),
            "{why}"
        );
        let control = "This session cannot use the graph capture feature as requested by the user as the \
                       model has control flow nodes which can't be supported by CUDAExecutionProvider";
        let why = capture_refusal(control).unwrap_or_default();
        assert!(why.contains("control-flow"), "{why}");
        assert_eq!(
            capture_refusal("Load model from unet/model.onnx failed: Protobuf parsing failed"),
            None
        );
    }

    #[test]
    fn capture_is_for_the_unet_on_a_device_only() {
        let mut config = RuntimeConfig {
            cuda_graph: true,
            ..RuntimeConfig::default()
        };
        config.providers.provider = Provider::Cuda;
        config.per_component.insert(
            "vae_decoder".into(),
            ProviderChoice {
                provider: Provider::Cpu,
                ..ProviderChoice::default()
            },
        );
        assert!(config.captures("unet"));
        assert!(!config.captures("text_encoder"));
        assert!(!config.captures("vae_decoder"));
        config.per_component.insert(
            "unet".into(),
            ProviderChoice {
                provider: Provider::DirectMl,
                ..ProviderChoice::default()
            },
        );
        assert!(!config.captures("unet"));
        config.per_component.remove("unet");
        config.cuda_graph = false;
        assert!(!config.captures("unet"));
    }
}
