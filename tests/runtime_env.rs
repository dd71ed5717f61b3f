//! One ONNX Runtime per process: `ort` loads a single library and allows a single environment, so every
//! `Runtime` in a process shares them. Several runtimes (one per model or per thread) must work, and a second,
//! different library must be refused by name rather than silently replaced by the first.
//! Needs ORT_DYLIB_PATH and target/ort-compat (scripts/test provides both).

use sd_onnx::runtime::Runtime;
use std::path::Path;

#[test]
fn runtimes_share_the_process_library_and_refuse_another() {
    let threads: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| Runtime::load(None).map(|r| r.version.clone())))
        .collect();
    let versions: Vec<String> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert!(versions.iter().all(|v| v == &versions[0]), "{versions:?}");
    let a = Runtime::load(None).unwrap();
    let b = Runtime::load(None).unwrap();
    assert_eq!(a.version, b.version);

    let other = Path::new("target/ort-compat/libonnxruntime.so.1.22.0");
    assert!(other.is_file(), "run scripts/fetch-compat-libs");
    let err = Runtime::load(Some(other))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("already runs ONNX Runtime from"), "{err}");
    assert!(err.contains("libonnxruntime.so.1.22.0"), "{err}");
}
