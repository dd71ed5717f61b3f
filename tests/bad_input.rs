//! Bad input as a careless user or a broken disk gives it (issue 18, first part): every case exits with the
//! right code and one line naming the culprit, without a panic, an abort or an unbounded allocation; caches
//! that cannot be used are warned about and bypassed, damaged entries rebuilt. Needs ORT_DYLIB_PATH.

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

const MODEL: &str = "onnx/sd-tiny-optimum";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sd-onnx"))
        .args(args)
        .output()
        .unwrap()
}

/// txt2img on the bundled model, 2 steps and seed 1 unless `extra` says otherwise.
fn t2i<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["txt2img", "--model", MODEL, "--prompt", "a cat", "--quiet"];
    for (flag, value) in [("--steps", "2"), ("--seed", "1")] {
        if !extra.contains(&flag) {
            v.extend([flag, value]);
        }
    }
    v.extend_from_slice(extra);
    v
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sdonnx-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Exit 2, one line on stderr containing `needle`, nothing written to `out`.
fn refused(args: &[&str], needle: &str) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
}

/// Numbers that used to abort (allocation failure), run for ever or fail late are refused up front, by flag.
#[test]
fn absurd_numbers_are_refused_before_anything_runs() {
    let dir = tmpdir("numbers");
    let out = dir.join("x.png");
    let out = out.to_str().unwrap();
    for (extra, needle) in [
        (
            &["--steps", "1000000000"][..],
            "--steps 1000000000 is more than the scheduler's 1000 training timesteps",
        ),
        (
            &["--batch", "1000000000"],
            "--batch 1000000000 is not between 1 and 64",
        ),
        (
            &["--width", "100000"],
            "--width 100000 is more than sd-onnx's limit of 8192",
        ),
        (
            &["--width", "65536", "--height", "65536"],
            "--width 65536 is more than sd-onnx's limit",
        ),
        (
            &["--width", "8192", "--height", "4096"],
            "megapixels, more than sd-onnx's limit",
        ),
        (
            &["--guidance", "NaN"],
            "--guidance NaN is not a finite number",
        ),
        (
            &["--guidance", "inf"],
            "--guidance inf is not a finite number",
        ),
        (
            &["--guidance-rescale", "NaN"],
            "--guidance-rescale NaN is outside [0, 1]",
        ),
        (&["--threads", "0"], "--threads 0: must be at least 1"),
    ] {
        let mut args = t2i(extra);
        args.extend(["--output", out]);
        refused(&args, needle);
        assert!(
            !std::path::Path::new(out).exists(),
            "{extra:?} wrote a file"
        );
    }
    refused(
        &[
            "bench",
            "--model",
            MODEL,
            "--steps",
            "1000000000",
            "--runs",
            "1",
        ],
        "--steps 1000000000 is more than",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Config values that used to allocate without bound or be blamed on a graph are refused naming the file.
#[test]
fn absurd_configs_are_refused_naming_the_file() {
    let dir = tmpdir("configs");
    for (file, edit, needle) in [
        (
            "scheduler/scheduler_config.json",
            (
                "\"num_train_timesteps\": 1000",
                "\"num_train_timesteps\": 1000000000",
            ),
            "num_train_timesteps",
        ),
        (
            "scheduler/scheduler_config.json",
            ("\"beta_end\": 0.012", "\"beta_end\": 0.0001"),
            "need 0 < beta_start < beta_end < 1",
        ),
        (
            "vae_decoder/config.json",
            ("\"scaling_factor\": 0.18215", "\"scaling_factor\": 0"),
            "scaling_factor 0 is not a positive number",
        ),
    ] {
        let model = dir.join("m");
        let _ = std::fs::remove_dir_all(&model);
        common::copy_dir(std::path::Path::new(MODEL), &model);
        let path = model.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(edit.0), "{file} has no {:?}", edit.0);
        std::fs::write(&path, text.replace(edit.0, edit.1)).unwrap();
        let m = model.to_str().unwrap();
        refused(
            &[
                "txt2img", "--model", m, "--prompt", "a", "--steps", "2", "--quiet",
            ],
            needle,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The graph cache is an optimisation: a cache folder that cannot be created is warned about and the run goes
/// on without it; a damaged entry is discarded and rebuilt, with a warning, instead of failing every run.
#[test]
fn caches_heal_themselves() {
    let dir = tmpdir("cache");
    let out = dir.join("a.png");
    let blocker = dir.join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let o = run(&[
        &t2i(&["--cache-dir", blocker.to_str().unwrap()])[..],
        &["--output", out.to_str().unwrap()],
    ]
    .concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.is_file());
    assert!(
        err.contains("warning: graph cache") && err.contains("running without it"),
        "{err}"
    );
    assert_eq!(
        err.matches("warning: graph cache").count(),
        1,
        "warned once: {err}"
    );

    let cache = dir.join("cache");
    let args = |o: &str| {
        let mut v = t2i(&["--cache-dir", cache.to_str().unwrap()]);
        v.extend(["--output", o]);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let first = dir.join("b.png");
    let o = Command::new(env!("CARGO_BIN_EXE_sd-onnx"))
        .args(args(first.to_str().unwrap()))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Truncate every cached graph, as a full disk or a killed copy would.
    let mut damaged = 0;
    for e in std::fs::read_dir(cache.join("graphs"))
        .unwrap()
        .filter_map(|e| e.ok())
    {
        if e.path().extension().is_some_and(|x| x == "onnx") {
            let bytes = std::fs::read(e.path()).unwrap();
            std::fs::write(e.path(), &bytes[..bytes.len() / 3]).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged >= 3, "{damaged} entries");
    let second = dir.join("c.png");
    let o = Command::new(env!("CARGO_BIN_EXE_sd-onnx"))
        .args(args(second.to_str().unwrap()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("could not be loaded") && err.contains("rebuilt it"),
        "{err}"
    );
    assert!(
        std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(),
        "not the same image after the rebuild"
    );
    // Rebuilt: the third run loads them without a word.
    let third = dir.join("d.png");
    let o = Command::new(env!("CARGO_BIN_EXE_sd-onnx"))
        .args(args(third.to_str().unwrap()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
    let _ = std::fs::remove_dir_all(&dir);
}
