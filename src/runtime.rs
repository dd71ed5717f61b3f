//! ONNX Runtime: finding and loading the shared library, and creating sessions. This is the only module
//! that names execution providers (today: the CPU provider, which needs no registration).

use crate::error::{Error, Result};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use std::path::{Path, PathBuf};

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
    threads: usize,
}

impl Runtime {
    pub fn load(flag: Option<&Path>) -> Result<Self> {
        let library = resolve_library(flag)?;
        let version = library_version(&library.path)?;
        let builder = ort::init_from(&library.path).map_err(|e| {
            Error::Runtime(format!(
                "{}: cannot load ONNX Runtime ({e}); {HOW_TO_GET}",
                library.path.display()
            ))
        })?;
        let env = builder
            .with_name("sd-onnx")
            .build()
            .map_err(|e| Error::Runtime(format!("{}: {e}", library.path.display())))?;
        // ONNX Runtime's intra-op pool runs best on physical cores; std gives logical ones, so take it as
        // an upper bound (ORT's own default does the same).
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(Runtime {
            env,
            library,
            version,
            threads,
        })
    }

    /// A CPU session for one graph. External data files are found by ORT next to the graph.
    pub fn session(&self, graph: &Path) -> Result<Session> {
        let context = graph.display().to_string();
        Session::builder(&self.env)
            .map_err(Error::ort(&context))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(Error::ort(&context))?
            .with_intra_threads(self.threads)
            .map_err(Error::ort(&context))?
            .commit_from_file(graph)
            .map_err(Error::ort(&context))
    }
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
