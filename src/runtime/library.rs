//! The ONNX Runtime shared library: where it is found (`--ort-lib`, `ORT_DYLIB_PATH`, next to the executable),
//! its version (checked before `ort` sees it), and the one environment per process that every [`super::Runtime`]
//! shares.

use crate::error::{Error, Result};
use ort::environment::Environment;
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

pub(crate) const HOW_TO_GET: &str = "install it with `pip install onnxruntime==1.31.1` and point at its \
onnxruntime/capi/libonnxruntime.so.1.31.1 (the CLI's --ort-lib, the library's Runtime::load(Some(path)), or \
ORT_DYLIB_PATH), or put the library next to the executable (in a checkout, scripts/setup does all this); for \
GPUs use the library of onnxruntime-gpu / onnxruntime-directml the same way";

/// Where the library was found, and why there.
#[derive(Clone, Debug)]
pub struct LibraryChoice {
    /// The library file.
    pub path: PathBuf,
    /// How it was found (`--ort-lib`, `ORT_DYLIB_PATH`, next to the executable).
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

/// The process's ONNX Runtime: one library and one environment per process (`ort` loads the library once and
/// allows one environment), shared by every `Runtime` created in it.
static LOADED: std::sync::Mutex<Option<(PathBuf, Environment, String)>> =
    std::sync::Mutex::new(None);

/// The environment for `path`: created on first use, the same one afterwards; a different library in the same
/// process is an error (it would silently be the first one).
pub(crate) fn environment(path: &Path) -> Result<(Environment, String)> {
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

/// Memory the process could still get (Linux: `MemAvailable` + `SwapFree` of /proc/meminfo), if known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kb.checked_mul(1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
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
