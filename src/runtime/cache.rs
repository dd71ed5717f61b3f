//! The optimised-graph cache: ONNX Runtime's optimised CPU graphs written once and loaded afterwards (14.5 s ->
//! 1.9 s session creation on SD 1.5), keyed by the source graph, the runtime and the machine, and pruned of
//! entries whose source is gone.

use crate::runtime::{Runtime, SessionSpec};
use std::path::{Path, PathBuf};

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

/// Where the optimised graph for `component` is cached: keyed by the graph's path, size and mtime, its
/// external data sizes, the ONNX Runtime version, the thread count and the CPU model, under
/// `cache_dir/graphs`. Delete that folder (or pass --no-graph-cache) to clear or bypass it.
pub fn graph_cache_path(rt: &Runtime, spec: &SessionSpec) -> Option<PathBuf> {
    let component = &spec.component;
    let dir = rt.config.cache_dir.as_ref()?.join("graphs");
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
    let mut key = format!(
        "{}|{}|{}|{}|{cpu}",
        source.replace('\n', "|"),
        external_sizes,
        rt.version,
        rt.threads
    );
    // The attention rewrite changes the graph ONNX Runtime optimises: entries with and without it differ,
    // and a new version of the pass must not load an older one's entries.
    if rt.fuses_attention(component.name) {
        key.push_str("|passes:");
        key.push_str(crate::onnx_edit::attention::PASS_VERSION);
    }
    // Replaced initializers are baked into the optimised graph: they are part of its identity.
    let identity = spec.cache_identity();
    if !identity.is_empty() || !spec.overrides.is_empty() {
        key.push_str("|overrides:");
        key.push_str(&identity);
        for (name, _) in &spec.overrides {
            key.push('|');
            key.push_str(name);
        }
    }
    // FNV-1a: a stable name, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    Some(dir.join(format!("{}-{h:016x}.onnx", component.name)))
}

/// What identifies a cached graph's source: its canonical path, size and modification time, one per line.
pub(crate) fn source_stamp(graph: &Path) -> Option<String> {
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

/// What an entry records about its sources: the graph's stamp, then (after a `+` line each) `replaced` when the
/// graph or its weights were replaced, and the stamp of every file the replaced weights came from (LoRA files).
pub(crate) fn entry_stamp(spec: &SessionSpec) -> Option<String> {
    let mut s = source_stamp(&spec.component.graph)?;
    if !spec.is_plain() {
        s.push_str(REPLACED);
    }
    if let Some(c) = &spec.computed {
        for f in &c.sources {
            s.push_str("\n+\n");
            s.push_str(&source_stamp(f)?);
        }
    }
    Some(s)
}

/// The mark of an entry whose graph or weights were replaced (clip skip, embeddings, LoRA).
const REPLACED: &str = "\n+\nreplaced";

/// Entries with replaced graphs or weights (LoRA sets, embeddings, clip skip) kept per folder; the least recently used beyond this are removed
/// (each is as large as the graph).
pub const MAX_REPLACED_ENTRIES: usize = 6;

/// Remove one entry's files (`.onnx`, `.data`, `.source`).
pub(crate) fn remove_entry(graph: &Path) {
    for ext in ["onnx", "data", "source"] {
        let _ = std::fs::remove_file(graph.with_extension(ext));
    }
}

/// Remove the cache entries (`.onnx`, `.data`, `.source`) whose source graph (or a LoRA file its weights came
/// from) no longer exists or has changed since it was optimised, and the least recently used entries with
/// replaced weights beyond [`MAX_REPLACED_ENTRIES`]. Entries without a `.source` record are left alone.
pub fn prune_graph_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut replaced = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("source") {
            continue;
        }
        let Ok(recorded) = std::fs::read_to_string(&p) else {
            continue;
        };
        let parts: Vec<&str> = recorded.split("\n+\n").collect();
        let current = |part: &str| {
            if part == "replaced" {
                return true;
            }
            let source = part.lines().next().map(PathBuf::from);
            source.as_deref().and_then(source_stamp).as_deref() == Some(part)
        };
        if !parts.iter().all(|part| current(part)) {
            remove_entry(&p);
        } else if parts.len() > 1 {
            let used = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            replaced.push((used, p));
        }
    }
    replaced.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in replaced.into_iter().skip(MAX_REPLACED_ENTRIES) {
        remove_entry(&p);
    }
}
