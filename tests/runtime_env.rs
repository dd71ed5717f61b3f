//! One ONNX Runtime per process: `ort` loads a single library and allows a single environment, so every
//! `Runtime` in a process shares them. Several runtimes (one per model or per thread) must work, and a second,
//! different library must be refused by name rather than silently replaced by the first.
//! Needs ORT_DYLIB_PATH and target/ort-compat (scripts/test provides both).

use sd_onnx::runtime::Runtime;
use std::path::Path;

mod common;

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

/// The optimised-graph cache forgets graphs that are gone: entries record their source, and writing a new entry
/// removes those whose source was deleted or changed (they are as large as the models).
#[test]
fn graph_cache_prunes_entries_of_vanished_graphs() {
    use sd_onnx::pipeline::Pipeline;
    use sd_onnx::profile::ModelProfile;
    use sd_onnx::runtime::RuntimeConfig;

    let root = std::env::temp_dir().join(format!("sdonnx-cache-prune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let cache = root.join("cache");
    let runtime = Runtime::load_with(
        None,
        RuntimeConfig {
            graph_cache: true,
            cache_dir: Some(cache.clone()),
            ..RuntimeConfig::default()
        },
    )
    .unwrap();
    let sources = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(cache.join("graphs"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "source"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        v.sort();
        v
    };
    let a = root.join("a");
    common::copy_dir(Path::new("onnx/sd-tiny-optimum"), &a);
    drop(Pipeline::load(&runtime, ModelProfile::load(&a).unwrap()).unwrap());
    let first = sources();
    assert_eq!(first.len(), 4, "{first:?}");
    assert!(first.iter().all(|s| s.contains("/a/")), "{first:?}");

    std::fs::remove_dir_all(&a).unwrap();
    let b = root.join("b");
    common::copy_dir(Path::new("onnx/sd-tiny-optimum"), &b);
    drop(Pipeline::load(&runtime, ModelProfile::load(&b).unwrap()).unwrap());
    let second = sources();
    assert_eq!(second.len(), 4, "{second:?}");
    assert!(second.iter().all(|s| s.contains("/b/")), "{second:?}");
    let graphs = std::fs::read_dir(cache.join("graphs")).unwrap().count();
    assert!(graphs <= 3 * 4, "stale files left: {graphs}");
    let _ = std::fs::remove_dir_all(&root);
}
