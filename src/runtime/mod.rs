//! ONNX Runtime: loading the shared library (`library.rs`), choosing execution providers (`providers.rs`),
//! caching optimised graphs (`cache.rs`), and creating sessions ([`Runtime::open`]). This module and its
//! children are the only code that names execution providers.

mod cache;
mod library;
mod providers;

pub use cache::MAX_REPLACED_ENTRIES;
pub(crate) use cache::source_stamp as cache_stamp;
pub use cache::{default_cache_dir, graph_cache_path, prune_graph_cache};
pub use library::{
    LibraryChoice, MIN_ORT_MINOR, available_memory, physical_cores, resolve_library,
};
pub use providers::{
    COMPONENTS, Provider, ProviderChoice, ProviderSettings, ShapeProfile, capture_refusal,
    providers_for,
};

use crate::error::{Error, Result};
use crate::profile::Component;
use library::environment;
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::DynValue;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How sessions are created: providers (one default, per-component overrides), TensorRT settings, caches.
/// The default is the CLI's: CPU, physical cores, the optimised-graph cache on in [`default_cache_dir`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The provider every component uses unless `per_component` says otherwise.
    pub providers: ProviderChoice,
    /// Component name (`unet`, `vae_decoder`, ...) -> provider, overriding `providers`.
    pub per_component: HashMap<String, ProviderChoice>,
    /// TensorRT: build fp16 engines.
    pub trt_fp16: bool,
    /// Where TensorRT engines, timing caches and optimised CPU graphs are kept.
    pub cache_dir: Option<PathBuf>,
    /// Component name -> TensorRT profile shapes derived from the requested size and batch.
    pub trt_profiles: HashMap<String, ShapeProfile>,
    /// Write each optimised graph once and load it afterwards (`--no-graph-cache` turns this off).
    pub graph_cache: bool,
    /// Intra-op threads; `None`: physical cores.
    pub threads: Option<usize>,
    /// `--low-memory`: no memory-pattern planning on GPU providers either (the CPU never plans: ONNX Runtime
    /// allocates per tensor instead of one planned block per run).
    pub low_memory: bool,
    /// `--cuda-graph`: capture the UNet's run once and replay it (CUDA: `enable_cuda_graph`, TensorRT:
    /// `trt_cuda_graph_enable`). Only the UNet gets it: the other graphs run once per image.
    pub cuda_graph: bool,
    /// Refuse a CPU run whose UNet attention would need more memory than the machine has available
    /// ([`crate::pipeline::limits::attention_bytes`]); the CLI turns it off with `SD_ONNX_NO_MEMORY_CHECK=1`.
    pub memory_check: bool,
    /// On the CPU, rewrite each exported attention as ONNX Runtime's tiled `MultiHeadAttention` before the
    /// graph is optimised ([`crate::onnx_edit::attention`]): memory linear in the tokens instead of quadratic.
    /// `--no-fused-attention` turns it off.
    pub fuse_attention: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            providers: ProviderChoice::default(),
            per_component: HashMap::new(),
            trt_fp16: false,
            cache_dir: default_cache_dir(),
            trt_profiles: HashMap::new(),
            graph_cache: true,
            threads: None,
            low_memory: false,
            cuda_graph: false,
            memory_check: true,
            fuse_attention: true,
        }
    }
}

/// One session to create: a component's graph, with named initializers replaced by other values (LoRA-merged
/// weights, edited embeddings), and what identifies those values for the optimised-graph cache.
///
/// Replacements are made before ONNX Runtime optimises the graph (external-data initializers through
/// `AddExternalInitializers`, inline ones by editing the graph in memory): after optimisation a weight may be
/// folded, cast or re-laid out, and a late override (`AddInitializer`) would be silently dropped.
#[derive(Clone)]
pub struct SessionSpec {
    /// The graph.
    pub component: Component,
    /// (initializer name, value of the graph's shape and element type), applied at session creation.
    pub overrides: Vec<(String, Arc<DynValue>)>,
    /// Replacements computed only when the graph has to be built (not when a cached one is loaded): LoRA merges.
    pub computed: Option<Computed>,
    /// The graph edited in memory ([`crate::onnx_edit`]), loaded instead of the component's file; its
    /// external data is read from the file's folder. `identity` says what the edit was.
    pub edited: Option<Arc<[u8]>>,
    /// A stable description of the overrides and the edit (e.g. `test:bias=5`), complete enough that equal
    /// identities mean equal graphs: part of the cache key ([`graph_cache_path`]). Overrides or an edit without
    /// one are never cached.
    pub identity: String,
}

/// Initializer values computed on demand, and what identifies them.
#[derive(Clone)]
pub struct Computed {
    /// What the values are (file stamps and multipliers): part of the cache key.
    pub identity: String,
    /// Files the values come from: a cache entry is removed when one of them changes or goes.
    pub sources: Vec<PathBuf>,
    /// The values.
    pub values: Arc<ComputeFn>,
}

/// What computes [`Computed`] values.
pub type ComputeFn = dyn Fn() -> Result<Vec<(String, Arc<DynValue>)>> + Send + Sync;

impl SessionSpec {
    /// The component's graph as exported.
    pub fn plain(component: &Component) -> Self {
        SessionSpec {
            component: component.clone(),
            overrides: Vec::new(),
            computed: None,
            edited: None,
            identity: String::new(),
        }
    }

    /// Whether anything replaces the exported graph or its weights.
    pub fn is_plain(&self) -> bool {
        self.overrides.is_empty() && self.computed.is_none() && self.edited.is_none()
    }

    /// The cache identity: the spec's own and the computed values'.
    pub fn cache_identity(&self) -> String {
        match &self.computed {
            Some(c) if self.identity.is_empty() => c.identity.clone(),
            Some(c) => format!("{}|{}", self.identity, c.identity),
            None => self.identity.clone(),
        }
    }
}

/// What a session is built from once replacements are made.
enum Source {
    File,
    Memory(Arc<[u8]>),
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
    /// The session.
    pub session: Session,
    /// What became of `--cuda-graph` for it.
    pub capture: GraphCapture,
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

/// A loaded ONNX Runtime and the session options we choose. Cheap to clone: every clone shares the process's
/// one library and environment.
#[derive(Clone)]
pub struct Runtime {
    env: Environment,
    /// The library and how it was found.
    pub library: LibraryChoice,
    /// Its version (`1.31.1`).
    pub version: String,
    /// Intra-op threads per session.
    pub threads: usize,
    /// How sessions are created.
    pub config: RuntimeConfig,
    /// What went differently than configured (a cache that could not be used), shared by every clone.
    warnings: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Runtime {
    /// Load the library at `path` (else `ORT_DYLIB_PATH`, else one next to the executable) with the default
    /// configuration (CPU, graph cache on).
    pub fn load(path: Option<&Path>) -> Result<Self> {
        Self::load_with(path, RuntimeConfig::default())
    }

    /// [`Runtime::load`] with sessions configured by `config`; every provider it names must be in the library.
    pub fn load_with(flag: Option<&Path>, config: RuntimeConfig) -> Result<Self> {
        let library = resolve_library(flag)?;
        let (env, version) = environment(&library.path)?;
        // ONNX Runtime's intra-op pool runs best on physical cores (hyper-threads share the FMA units).
        let threads = config.threads.unwrap_or_else(physical_cores);
        if threads == 0 {
            return Err(Error::Usage("--threads 0: must be at least 1".into()));
        }
        let rt = Runtime {
            env,
            library,
            version,
            threads,
            config,
            warnings: Arc::default(),
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

    /// Warnings since the last call (each once): the cache is an optimisation, so a cache that cannot be
    /// written or an entry that cannot be read is reported here and the run goes on without it.
    pub fn take_warnings(&self) -> Vec<String> {
        let mut w = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *w)
    }

    fn warn(&self, msg: String) {
        let mut w = self.warnings.lock().unwrap_or_else(|p| p.into_inner());
        if !w.contains(&msg) {
            w.push(msg);
        }
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

    /// Whether `component`'s graph gets the attention rewrite: asked for, and on the CPU (the GPU providers
    /// have their own fused kernels and are not measured with it).
    pub fn fuses_attention(&self, component: &str) -> bool {
        // CLIP's attention is causal (a mask added to the scores), never the pattern: not read for nothing.
        self.config.fuse_attention
            && !component.starts_with("text_encoder")
            && self.choice_for(component).provider == Provider::Cpu
    }

    /// A session for one component, on the provider chosen for it, with graph capture when `--cuda-graph`
    /// asks for it. When ONNX Runtime refuses capture for this graph, the session is created again without it
    /// and the reason is returned (never a silent change of provider).
    pub fn open(&self, component: &Component) -> Result<OpenedSession> {
        self.open_spec(&SessionSpec::plain(component))
    }

    /// [`Runtime::open`] with the spec's replacements made before optimisation. On the CPU such a session is
    /// cached under its own key when the spec has an identity ([`SessionSpec::cache_identity`]), else built
    /// every time.
    pub fn open_spec(&self, spec: &SessionSpec) -> Result<OpenedSession> {
        let component = &spec.component;
        if !self.config.captures(component.name) {
            return Ok(OpenedSession {
                session: self.create(spec, false)?,
                capture: GraphCapture::Off,
            });
        }
        match self.create(spec, true) {
            Ok(session) => Ok(OpenedSession {
                session,
                capture: GraphCapture::On,
            }),
            Err(e) => match capture_refusal(&e.to_string()) {
                Some(reason) => Ok(OpenedSession {
                    session: self.create(spec, false)?,
                    capture: GraphCapture::Refused(reason),
                }),
                None => Err(e),
            },
        }
    }

    /// Registration failures are errors (never a silent CPU fallback). With the graph cache on, CPU sessions
    /// load a previously optimised graph.
    fn create(&self, spec: &SessionSpec, capture: bool) -> Result<Session> {
        self.create_with(spec, capture, true)
    }

    /// A session builder for the spec's component: threads, memory pattern, its provider registered.
    fn builder(
        &self,
        spec: &SessionSpec,
        capture: bool,
    ) -> Result<ort::session::builder::SessionBuilder> {
        let component = &spec.component;
        let context = component.graph.display().to_string();
        let choice = self.choice_for(component.name);
        // Memory-pattern planning (one block per run, sized from the first run) costs the CPU peak memory and
        // buys it no time: full SD 1.5 at 512x512, 10 steps, 3776 -> 3631 MiB and 95.0 -> 89.7 s without it
        // (docs/PERFORMANCE.md). The GPU providers keep it unless --low-memory.
        let memory_pattern = !self.config.low_memory && choice.provider != Provider::Cpu;
        let mut builder = Session::builder(&self.env)
            .map_err(Error::ort(&context))?
            .with_intra_threads(self.threads)
            .map_err(Error::ort(&context))?
            .with_memory_pattern(memory_pattern)
            .map_err(Error::ort(&context))?
            // ONNX Runtime's own log lines are not shown: every failure it logs also comes back as a status,
            // which our error reports once, naming the graph.
            .with_log_level(ort::logging::LogLevel::Fatal)
            .map_err(Error::ort(&context))?;
        if let Some(d) = providers::dispatch(&self.config, component.name, choice, capture)? {
            builder = builder.with_execution_providers([d]).map_err(|e| {
                Error::Runtime(format!(
                    "{}: --ep {} could not be registered for {}: {e}",
                    context,
                    choice.provider.cli_name(),
                    component.name
                ))
            })?;
        }
        Ok(builder)
    }

    /// `use_cache`: false after the cache failed once for this session (it is rebuilt without it).
    fn create_with(&self, spec: &SessionSpec, capture: bool, use_cache: bool) -> Result<Session> {
        let component = &spec.component;
        let graph = &component.graph;
        let context = graph.display().to_string();
        let choice = self.choice_for(component.name).clone();
        let builder = self.builder(spec, capture)?;
        // Replacements are baked into the optimised graph, so a replaced graph is cached only under an identity
        // that says what replaced it.
        let cached = if choice.provider == Provider::Cpu
            && self.config.graph_cache
            && use_cache
            && (spec.is_plain() || !spec.cache_identity().is_empty())
        {
            graph_cache_path(self, spec).filter(|path| {
                let dir = path.parent().unwrap_or(Path::new("."));
                let usable = std::fs::create_dir_all(dir).is_ok() && dir.is_dir();
                if !usable {
                    self.warn(format!(
                        "graph cache {}: cannot be created; running without it (--cache-dir to use another, \
                         --no-graph-cache to stop trying)",
                        dir.display()
                    ));
                }
                usable
            })
        } else {
            None
        };
        match cached {
            Some(path) if path.is_file() => match load_cached(builder, &path, &context)? {
                Ok(session) => Ok(session),
                Err(e) => {
                    // A damaged entry (truncated by a full disk, edited by hand): discard it and rebuild.
                    cache::remove_entry(&path);
                    self.warn(format!(
                        "graph cache entry {} could not be loaded ({e}); rebuilt it",
                        path.display()
                    ));
                    self.create_with(spec, capture, true)
                }
            },
            Some(path) => {
                let (builder, source) = self.prepare(builder, spec)?;
                let session = self.create_cached(builder, spec, capture, &path, source)?;
                if !path.is_file() {
                    return Ok(session);
                }
                // Run from the entry just written, as a later start would, not from the session that
                // optimised it: that one keeps what it built from (the export's weights before layout
                // transforms, and replacement values, which ONNX Runtime uses in place from
                // `AddExternalInitializers`). Measured on full SD 1.5 (docs/PERFORMANCE.md): a first start's
                // peak RSS 11.4 -> 10.1 GB, with a LoRA 12.7 -> 10.5 GB, for one load of the entry.
                drop(session);
                let builder = self.builder(spec, capture)?;
                match load_cached(builder, &path, &context)? {
                    Ok(session) => Ok(session),
                    Err(e) => {
                        cache::remove_entry(&path);
                        self.warn(format!(
                            "graph cache entry {} could not be loaded back ({e}); running without it",
                            path.display()
                        ));
                        self.create_with(spec, capture, false)
                    }
                }
            }
            None => {
                let (builder, source) = self.prepare(builder, spec)?;
                let builder = builder
                    .with_optimization_level(GraphOptimizationLevel::All)
                    .map_err(Error::ort(&context))?;
                commit(builder, spec, &source)
                    .map_err(|e| load_error(component, choice.provider, e))
            }
        }
    }

    /// Make the spec's replacements: external-data initializers through the builder, inline ones in an edited
    /// copy of the graph.
    fn prepare(
        &self,
        mut builder: ort::session::builder::SessionBuilder,
        spec: &SessionSpec,
    ) -> Result<(ort::session::builder::SessionBuilder, Source)> {
        let graph = &spec.component.graph;
        let context = graph.display().to_string();
        let mut values = spec.overrides.clone();
        if let Some(c) = &spec.computed {
            values.extend((c.values)()?);
        }
        let fuse = self.fuses_attention(spec.component.name);
        if values.is_empty() {
            let source = spec.edited.clone().map_or(Source::File, Source::Memory);
            if !fuse {
                return Ok((builder, source));
            }
            // Only the attention rewrite: a graph that does not decode is left to ONNX Runtime, whose error
            // names it as for any other broken graph.
            if let Ok(mut model) = decode(spec)
                && crate::onnx_edit::attention::fuse_attention(&mut model).attentions > 0
            {
                return Ok((builder, Source::Memory(Arc::from(model.encode()))));
            }
            return Ok((builder, source));
        }
        let mut model = decode(spec)?;
        let mut edited = false;
        for (name, value) in values {
            let init = model
                .graph_mut()
                .initializer
                .iter_mut()
                .find(|t| t.name.as_deref() == Some(name.as_str()));
            let Some(init) = init else {
                return Err(Error::model(graph, format!("has no initializer `{name}`")));
            };
            if init.data_location == Some(1) {
                builder = builder
                    .with_external_initializer(&name, value)
                    .map_err(Error::ort(format!("{context}: initializer `{name}`")))?;
            } else {
                init.raw_data = Some(value_bytes(&value, &context, &name)?.into());
                init.float_data.clear();
                init.int32_data.clear();
                edited = true;
            }
        }
        if fuse && crate::onnx_edit::attention::fuse_attention(&mut model).attentions > 0 {
            edited = true;
        }
        let source = if edited {
            Source::Memory(Arc::from(model.encode()))
        } else {
            spec.edited.clone().map_or(Source::File, Source::Memory)
        };
        Ok((builder, source))
    }

    /// Optimise the graph and write the result as the cache entry `path`; if that fails, run without the cache.
    fn create_cached(
        &self,
        builder: ort::session::builder::SessionBuilder,
        spec: &SessionSpec,
        capture: bool,
        path: &Path,
        source: Source,
    ) -> Result<Session> {
        let graph = &spec.component.graph;
        let context = graph.display().to_string();
        // The graph is written under a temporary name and renamed into place last, so a run that
        // dies midway leaves no entry that a later run would load. Large initializers go to a data
        // file with its final name (the graph refers to it by that name).
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let external = path
            .with_extension("data")
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let written = builder
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
            .map_err(Error::ort(&context))?;
        let written = commit(written, spec, &source);
        let session = match written {
            Ok(session) => session,
            Err(e) => {
                // Writing the entry may be what failed (a read-only or full cache): try once without
                // the cache; if the graph itself is at fault, that fails with the graph's own error.
                let _ = std::fs::remove_file(&tmp);
                let session = self.create_with(spec, capture, false)?;
                self.warn(format!(
                    "graph cache {}: the optimised graph could not be written ({e}); running without \
                     the cache",
                    path.parent().unwrap_or(Path::new(".")).display()
                ));
                return Ok(session);
            }
        };
        if std::fs::rename(&tmp, path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        } else if let Some(stamp) = cache::entry_stamp(spec) {
            // Remember which graph this entry optimises, so that entries of graphs since moved,
            // deleted or re-exported are removed instead of piling up (they are as large as models).
            let _ = std::fs::write(path.with_extension("source"), stamp);
            if let Some(dir) = path.parent() {
                cache::prune_graph_cache(dir);
            }
        }
        Ok(session)
    }
}

/// The spec's graph decoded for editing: its edited bytes, else its file.
fn decode(spec: &SessionSpec) -> Result<crate::onnx_edit::Model> {
    let graph = &spec.component.graph;
    match &spec.edited {
        Some(bytes) => crate::onnx_edit::Model::decode(bytes::Bytes::copy_from_slice(bytes), graph),
        None => crate::onnx_edit::Model::read(graph),
    }
}

/// Load an optimised graph from the cache. The outer error is the builder's; the inner one the entry's, for
/// the caller to discard and rebuild.
fn load_cached(
    builder: ort::session::builder::SessionBuilder,
    path: &Path,
    context: &str,
) -> Result<std::result::Result<Session, ort::Error>> {
    let loaded = builder
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(Error::ort(context))?
        .commit_from_file(path);
    if loaded.is_ok() {
        // Used: keep it among the newest when the cache is trimmed.
        let _ = std::fs::File::options()
            .append(true)
            .open(path.with_extension("source"))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    }
    Ok(loaded)
}

/// Create the session from the graph file or the edited bytes (external data from the file's folder).
fn commit(
    mut builder: ort::session::builder::SessionBuilder,
    spec: &SessionSpec,
    source: &Source,
) -> std::result::Result<Session, ort::Error> {
    let graph = &spec.component.graph;
    match source {
        Source::File => builder.commit_from_file(graph),
        Source::Memory(bytes) => {
            let dir = graph.parent().unwrap_or(Path::new("."));
            builder
                .with_config_entry(
                    "session.model_external_initializers_file_folder_path",
                    dir.to_string_lossy(),
                )
                .map_err(ort::Error::<()>::from)?
                .commit_from_memory(bytes)
        }
    }
}

/// A tensor's bytes, little-endian, for an inline initializer.
fn value_bytes(value: &DynValue, context: &str, name: &str) -> Result<Vec<u8>> {
    let ctx = || format!("{context}: initializer `{name}`");
    if let Ok((_, d)) = value.try_extract_tensor::<f32>() {
        return Ok(d.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    let (_, d) = value
        .try_extract_tensor::<half::f16>()
        .map_err(Error::ort(ctx()))?;
    Ok(d.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// ONNX Runtime could not create a session from a user's graph. On the CPU provider that is the file's fault
/// (truncated, empty or not ONNX, missing or short external data, an operator this runtime lacks): a model
/// error, exit code 2, naming the graph. On a GPU provider, device and engine failures stay runtime failures.
fn load_error(component: &Component, provider: Provider, e: ort::Error) -> Error {
    use ort::error::ErrorCode as C;
    let file_fault = matches!(
        e.code(),
        C::InvalidProtobuf
            | C::InvalidGraph
            | C::NoSuchFile
            | C::NoModel
            | C::NotImplemented
            | C::InvalidArgument
    ) || (provider == Provider::Cpu && e.code() == C::GenericFailure);
    if file_fault {
        Error::model(
            &component.graph,
            format!(
                "ONNX Runtime cannot load this {} graph: {e}",
                component.name
            ),
        )
    } else {
        Error::Ort {
            context: component.graph.display().to_string(),
            msg: e.to_string(),
        }
    }
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
