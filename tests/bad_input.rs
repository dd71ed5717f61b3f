//! Bad input as a careless user or a broken disk gives it (issue 18, first part): every case exits with the
//! right code and one line naming the culprit, without a panic, an abort or an unbounded allocation; caches
//! that cannot be used are warned about and bypassed, damaged entries rebuilt. Every case runs under a 1 GiB
//! address-space limit. Needs ORT_DYLIB_PATH.

use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

const MODEL: &str = "onnx/sd-tiny-optimum";

/// Address space every case runs in (`ulimit -v`, KiB): a whole run on the tiny models fits in well under it
/// (measured: a 2-step txt2img succeeds at 1 GiB), so a case that allocated blindly would abort, not pass.
const MEMORY_LIMIT_KIB: u64 = 1 << 20;

fn run(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {MEMORY_LIMIT_KIB} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_sd-onnx"))
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

fn succeeded(o: &Output) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
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
    succeeded(&o);
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

/// Outputs are checked before the run (a missing folder, a folder as the file, the timings file's folder),
/// special files are written through and never replaced, and flags are named as given.
#[test]
fn outputs_are_checked_first_and_special_files_kept() {
    let dir = tmpdir("outputs");
    let missing = dir.join("no/such/a.png");
    refused(&t2i(&["--output", missing.to_str().unwrap()]), "the folder");
    refused(&t2i(&["--output", dir.to_str().unwrap()]), "is a folder");
    let img = dir.join("a.png");
    let timings = dir.join("nope/t.json");
    refused(
        &t2i(&[
            "--output",
            img.to_str().unwrap(),
            "--timings-json",
            timings.to_str().unwrap(),
        ]),
        "--timings-json",
    );
    assert!(
        !img.exists(),
        "the image was written although the run was refused"
    );
    refused(
        &t2i(&["--component-ep", "unet=bogus"]),
        "--component-ep unet=bogus: the provider is one of",
    );

    // /dev/null stays a device; a symlink stays a symlink and its target gets the image.
    let o = run(&t2i(&["--output", "/dev/null"]));
    succeeded(&o);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let target = dir.join("target.png");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.join("link.png");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // The link's target is a file: not clobbered silently, replaced (through the link) with --overwrite.
    let o = run(&t2i(&["--output", link.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("link.png: exists; pass --overwrite"));
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    let o = run(&t2i(&["--output", link.to_str().unwrap(), "--overwrite"]));
    succeeded(&o);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read(&target).unwrap().starts_with(b"\x89PNG"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 10,000-word prompt: plain syntax warns in one short line, not with the whole cut text; A1111 syntax
/// (the default) refuses it, naming the flag and the limit, before any denoising.
#[test]
fn long_prompts_warn_briefly() {
    let dir = tmpdir("prompt");
    let out = dir.join("p.png");
    let prompt = "word ".repeat(10_000);
    for (flag, text) in [
        ("--prompt", prompt.as_str()),
        ("--negative-prompt", prompt.as_str()),
    ] {
        let mut args = vec![
            "txt2img", "--model", MODEL, "--steps", "1", "--seed", "1", "--quiet",
        ];
        args.extend(["--output", out.to_str().unwrap()]);
        if flag == "--negative-prompt" {
            args.extend(["--prompt", "a cube"]);
        }
        args.extend([flag, text]);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.lines().count() == 1 && err.contains(flag) && err.contains("limit is 32"),
            "{err}"
        );
        assert!(!out.exists());
    }
    let o = run(&[
        "txt2img",
        "--model",
        MODEL,
        "--prompt-syntax",
        "plain",
        "--prompt",
        &prompt,
        "--steps",
        "1",
        "--seed",
        "1",
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.len() < 300 && err.contains("words were cut"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Broken graph files are bad input (exit 2), named, and found before any denoising.
#[test]
fn broken_graph_files_are_bad_input() {
    let dir = tmpdir("graphs");
    let model = dir.join("m");
    type Damage = fn(&std::path::Path);
    let cases: [(&str, &str, Damage); 4] = [
        ("onnx/sd-tiny-optimum", "unet/model.onnx", |p| {
            std::fs::write(p, b"").unwrap()
        }),
        ("onnx/sd-tiny-optimum", "text_encoder/model.onnx", |p| {
            std::fs::write(
                p,
                (0..4096u32)
                    .map(|i| (i * 7919 % 251) as u8)
                    .collect::<Vec<_>>(),
            )
            .unwrap()
        }),
        ("onnx/sd-tiny-optimum", "vae_decoder/model.onnx", |p| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() / 2]).unwrap()
        }),
        ("onnx/sd-tiny-fp16", "unet/model.onnx_data", |p| {
            let b = std::fs::read(p).unwrap();
            std::fs::write(p, &b[..b.len() / 2]).unwrap()
        }),
    ];
    for (src, file, damage) in cases {
        let _ = std::fs::remove_dir_all(&model);
        common::copy_dir(std::path::Path::new(src), &model);
        damage(&model.join(file));
        let m = model.to_str().unwrap();
        let component = file.split('/').next().unwrap();
        for extra in [&[][..], &["--no-graph-cache"][..]] {
            let mut args = vec![
                "txt2img", "--model", m, "--prompt", "a", "--steps", "2", "--quiet",
            ];
            args.extend_from_slice(extra);
            // The VAE decoder, opened only after the loop, is checked before the first step.
            let want = if component == "vae_decoder" {
                format!("{component}/model.onnx: is not a readable ONNX graph")
            } else {
                format!("{component}/model.onnx: ONNX Runtime cannot load this {component} graph")
            };
            refused(&args, &want);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tokenizers that would silently give wrong ids, and a graph in the wrong place, are refused naming the file;
/// `inspect` reports a folder nothing can run from and exits 2.
#[test]
fn wrong_tokenizers_and_misplaced_graphs_are_named() {
    let dir = tmpdir("tok");
    let model = dir.join("m");
    let fresh = || {
        let _ = std::fs::remove_dir_all(&model);
        common::copy_dir(std::path::Path::new("onnx/sd-tiny-convert"), &model);
    };
    let m = model.to_str().unwrap().to_string();
    fresh();
    std::fs::write(model.join("tokenizer/merges.txt"), "#version: 0.2\n").unwrap();
    refused(
        &[
            "txt2img", "--model", &m, "--prompt", "a", "--steps", "1", "--quiet",
        ],
        "merges.txt: has no merges",
    );
    // A text encoder whose embedding table is smaller than the tokenizer's ids.
    let opt = dir.join("o");
    common::copy_dir(std::path::Path::new(MODEL), &opt);
    let cfg = opt.join("text_encoder/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"vocab_size\": 49408", "\"vocab_size\": 1000"),
    )
    .unwrap();
    refused(
        &[
            "txt2img",
            "--model",
            opt.to_str().unwrap(),
            "--prompt",
            "a",
            "--steps",
            "1",
            "--quiet",
        ],
        "produces ids up to 49407 but text_encoder has a 1000-token embedding table",
    );
    // The VAE decoder's graph where the UNet should be: inspect says so and exits 2.
    fresh();
    std::fs::copy(
        model.join("vae_decoder/model.onnx"),
        model.join("unet/model.onnx"),
    )
    .unwrap();
    let _ = std::fs::remove_file(model.join("unet/weights.pb"));
    let o = run(&["inspect", "--model", &m]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("unet: lacks input(s) sample, timestep, encoder_hidden_states"),
        "{out}"
    );
    assert!(!out.contains("problems:   none found"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Messages blame what the user can change: the step count (not the folder's steps_offset), the missing
/// scheduler folder, a UNet from another model; negative guidance is a number, not an unknown argument.
#[test]
fn messages_blame_the_right_thing() {
    refused(
        &t2i(&["--steps", "1000"]),
        "with 1000 steps puts timesteps outside 0..1000: use fewer steps",
    );
    // A folder of models names the models inside (issue 12).
    refused(
        &["txt2img", "--model", "onnx", "--prompt", "a", "--quiet"],
        "onnx: is a folder of models, not a model; pass one of: onnx/sd-emoji, onnx/sd-emoji-dreambooth, onnx/sd-tiny-convert, ",
    );
    // A schedule the scheduler cannot do is refused, not ignored (issue 12).
    refused(
        &t2i(&["--scheduler", "ddim", "--karras"]),
        "--karras does not apply to ddim (DDIMScheduler has no sigma schedule); schedulers with it: lms, euler, heun",
    );
    let o = run(&t2i(&["--guidance", "-3", "--output", "/dev/null"]));
    succeeded(&o);
    let dir = tmpdir("blame");
    let model = dir.join("m");
    common::copy_dir(std::path::Path::new(MODEL), &model);
    std::fs::remove_dir_all(model.join("scheduler")).unwrap();
    let m = model.to_str().unwrap();
    refused(
        &[
            "txt2img", "--model", m, "--prompt", "a", "--steps", "1", "--quiet",
        ],
        "--scheduler is needed: the folder has no scheduler/scheduler_config.json",
    );
    let _ = std::fs::remove_dir_all(&model);
    common::copy_dir(std::path::Path::new(MODEL), &model);
    let cfg = model.join("unet/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"cross_attention_dim\": 16", "\"cross_attention_dim\": 32"),
    )
    .unwrap();
    refused(
        &[
            "txt2img", "--model", m, "--prompt", "a", "--steps", "1", "--quiet",
        ],
        "unet/model.onnx: attends to 32-wide text",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A batch is all or nothing: when its second file cannot be written (a dangling symlink here), the first
/// is removed again and the run fails naming the file.
#[test]
fn a_batch_is_written_all_or_nothing() {
    let dir = tmpdir("batch");
    let out = dir.join("x.png");
    std::os::unix::fs::symlink(dir.join("no/such/target.png"), dir.join("x-1.png")).unwrap();
    let o = run(&t2i(&["--batch", "2", "--output", out.to_str().unwrap()]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("x-1.png"), "{err}");
    assert!(
        !dir.join("x-0.png").exists(),
        "the first image of the batch was left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `refused`'s checks, as a message instead of a panic (for batteries that report every failure).
fn refusal_problem(args: &[&str], needle: &str) -> Option<String> {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.code() != Some(2) || !err.contains(needle) || err.trim().lines().count() != 1 {
        Some(format!(
            "{args:?}: exit {:?}, expected {needle:?} in one line: {err}",
            o.status.code()
        ))
    } else {
        None
    }
}

/// The flag battery: every case exits 2 with one line naming the flag (or file) at fault, writes nothing and
/// panics nowhere. (With the other tests of this file, over 100 bad inputs.)
#[test]
fn flag_battery() {
    let dir = tmpdir("battery");
    let out = dir.join("x.png");
    let o = out.to_str().unwrap();
    let missing_cfg = dir.join("none.toml");
    let bad_cfg = dir.join("bad.toml");
    std::fs::write(&bad_cfg, "steps = [\n").unwrap();
    let folder = dir.join("sub");
    std::fs::create_dir_all(&folder).unwrap();
    let not_image = dir.join("not-image.png");
    std::fs::write(&not_image, b"this is text").unwrap();
    let same = dir.join("s{batch}.png");
    let init = "tests/fixtures/images/init-64.png";
    let mask = "tests/fixtures/images/mask-64.png";
    let t2i_cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--steps", "0"], "--steps must be at least 1"),
        (vec!["--prompt-syntax", "bogus"], "--prompt-syntax bogus"),
        (vec!["--emphasis", "bogus"], "--emphasis bogus"),
        (vec!["--clip-skip", "0"], "--clip-skip must be at least 1"),
        (vec!["--clip-skip", "-1"], "--clip-skip"),
        (
            vec!["--clip-skip", "3"],
            "--clip-skip 3 is more than this text encoder's 2 layers allow",
        ),
        (
            vec!["--negative-prompt", "(a:1.2.3)"],
            "--negative-prompt `:1.2.3)`: the weight `1.2.3` is not a number",
        ),
        (vec!["--embeddings-dir", "/no/such/dir"], "/no/such/dir"),
        (vec!["--steps", "-3"], "--steps"),
        (vec!["--steps", "two"], "--steps"),
        (vec!["--width", "0"], "--width"),
        (vec!["--width", "63"], "--width 63"),
        (vec!["--height", "7"], "--height 7"),
        (vec!["--height", "100000"], "--height 100000"),
        (
            vec!["--batch-size", "0"],
            "--batch 0 is not between 1 and 64",
        ),
        (
            vec!["--batch-size", "65"],
            "--batch 65 is not between 1 and 64",
        ),
        (
            vec!["--batch-count", "0"],
            "--batch-count 0 is not between 1 and 10000",
        ),
        (
            vec!["-b", "10001"],
            "--batch-count 10001 is not between 1 and 10000",
        ),
        (
            vec!["--seed", "18446744073709551615", "--batch-size", "2"],
            "--seed 18446744073709551615 + 2 images",
        ),
        (vec!["--seed", "-2"], "--seed"),
        (vec!["--seed", "abc"], "--seed"),
        (vec!["--guidance", "abc"], "--guidance"),
        (
            vec!["--guidance=-inf"],
            "--guidance -inf is not a finite number",
        ),
        (
            vec!["--guidance-rescale", "1.5"],
            "--guidance-rescale 1.5 is outside [0, 1]",
        ),
        (
            vec!["--guidance-rescale", "-0.1"],
            "--guidance-rescale -0.1 is outside [0, 1]",
        ),
        (vec!["--scheduler", "bogus"], "bogus"),
        (vec!["--scheduler", "DPM++ 2S a"], "DPM++ 2S a"),
        (vec!["--scheduler", "karras"], "karras"),
        (
            vec!["--schedule", "bogus"],
            "--schedule bogus: choose uniform, karras, exponential or beta",
        ),
        (
            vec!["--schedule", "karras", "--scheduler", "pndm"],
            "--schedule karras does not apply to pndm",
        ),
        (
            vec!["--schedule", "beta", "--scheduler", "lcm"],
            "--schedule beta does not apply to lcm",
        ),
        (
            vec!["--schedule", "exponential", "--scheduler", "euler-a"],
            "does not apply to euler-a",
        ),
        (
            vec!["--karras", "--scheduler", "ddpm"],
            "--karras does not apply to ddpm",
        ),
        (
            vec!["--scheduler", "DDIM Karras"],
            "--scheduler DDIM Karras: karras does not apply to ddim",
        ),
        (
            vec!["--schedule", "beta", "--scheduler", "DPM++ 2M Karras"],
            "--schedule asks for the beta schedule and --scheduler for karras",
        ),
        (
            vec!["--rng", "mt"],
            "--rng mt: choose torch, numpy or philox",
        ),
        (vec!["--threads", "-1"], "--threads"),
        (vec!["--ep", "bogus"], "bogus"),
        (vec!["--component-ep", "unet=bogus"], "bogus"),
        (vec!["--component-ep", "nothing"], "--component-ep nothing"),
        (vec!["--ep-option", "foo=bar"], "--ep-option"),
        (
            vec!["--output", "x.gif"],
            "--output x.gif: .gif is not a format sd-onnx writes",
        ),
        (vec!["--output", folder.to_str().unwrap()], "is a folder"),
        (vec!["--output", "/no/such/dir/x.png"], "does not exist"),
        (
            vec!["--output", same.to_str().unwrap(), "--batch-size", "2"],
            "would both be written",
        ),
        (
            vec!["--timings-json", "/no/such/dir/t.json"],
            "--timings-json",
        ),
        (
            vec!["--timings-json", folder.to_str().unwrap()],
            "--timings-json",
        ),
        (vec!["--config", missing_cfg.to_str().unwrap()], "none.toml"),
        (vec!["--config", bad_cfg.to_str().unwrap()], "bad.toml"),
        (vec!["--bogus-flag"], "--bogus-flag"),
        (vec!["--model"], "--model"),
    ];
    let mut problems = Vec::new();
    for (extra, needle) in &t2i_cases {
        let mut args = t2i(extra);
        if !extra.contains(&"--output") {
            args.extend(["--output", o]);
        }
        problems.extend(refusal_problem(&args, needle));
        assert!(!out.exists(), "{extra:?} wrote a file");
    }
    let other_cases: Vec<(Vec<&str>, &str)> = vec![
        // Within the pixel limits, beyond what this machine's memory holds for the UNet's attention as
        // exported (with the attention rewrite, the default, memory is linear in the tokens and it would run).
        (
            vec![
                "txt2img",
                "--model",
                MODEL,
                "-p",
                "a",
                "-s",
                "1",
                "-W",
                "4096",
                "-H",
                "4096",
                "--no-fused-attention",
                "-o",
                o,
            ],
            "its attention needs about",
        ),
        (
            vec![
                "img2img",
                "--model",
                MODEL,
                "-p",
                "a",
                "--init-image",
                "/no/such.png",
            ],
            "/no/such.png",
        ),
        (
            vec![
                "img2img",
                "--model",
                MODEL,
                "-p",
                "a",
                "--init-image",
                not_image.to_str().unwrap(),
            ],
            "not-image.png",
        ),
        (
            vec![
                "img2img",
                "--model",
                MODEL,
                "-p",
                "a",
                "--init-image",
                init,
                "--strength",
                "1.5",
            ],
            "--strength 1.5",
        ),
        (
            vec![
                "img2img",
                "--model",
                MODEL,
                "-p",
                "a",
                "--init-image",
                init,
                "--strength",
                "-0.5",
            ],
            "--strength",
        ),
        (
            vec![
                "img2img",
                "--model",
                MODEL,
                "-p",
                "a",
                "--init-image",
                init,
                "--strength",
                "NaN",
            ],
            "--strength NaN",
        ),
        (vec!["img2img", "--model", MODEL, "-p", "a"], "--init-image"),
        (
            vec!["inpaint", "--model", MODEL, "-p", "a", "--init-image", init],
            "--mask",
        ),
        (
            vec![
                "inpaint",
                "--model",
                MODEL,
                "-p",
                "a",
                "--init-image",
                init,
                "--mask",
                "/no/mask.png",
            ],
            "/no/mask.png",
        ),
        (
            vec![
                "inpaint",
                "--model",
                MODEL,
                "-p",
                "a",
                "--init-image",
                init,
                "--mask",
                not_image.to_str().unwrap(),
            ],
            "not-image.png",
        ),
        (
            vec![
                "img2img",
                "--model",
                "onnx/sd-tiny-inpaint-optimum",
                "-p",
                "a",
                "--init-image",
                init,
            ],
            "use `sd-onnx inpaint`",
        ),
        (
            vec![
                "inpaint",
                "--model",
                MODEL,
                "-p",
                "a",
                "--init-image",
                init,
                "--mask",
                mask,
                "--strength",
                "2",
            ],
            "--strength 2",
        ),
        (
            vec!["tokenize", "--model", "/no/such/model", "a"],
            "/no/such/model",
        ),
        (vec!["tokenize", "--model", MODEL], "TEXT"),
        (
            vec!["tokenize", "--model", MODEL, "--prompt-syntax", "x", "a"],
            "--prompt-syntax x",
        ),
        (
            vec!["tokenize", "--model", MODEL, "a (b:1.2.3)"],
            "the weight `1.2.3` is not a number",
        ),
        (vec!["embeddings", "--model", MODEL], "--embeddings-dir"),
        (
            vec![
                "embeddings",
                "--model",
                MODEL,
                "--embeddings-dir",
                "/no/such/dir",
            ],
            "/no/such/dir",
        ),
        (vec!["inspect"], "--model"),
        (
            vec!["inspect", "--model", "/no/such/model"],
            "/no/such/model",
        ),
        (vec!["bench", "--model", MODEL, "--runs", "0"], "--runs"),
        (
            vec!["bench", "--model", MODEL, "--scheduler", "bogus"],
            "bogus",
        ),
        (
            vec!["bench", "--model", MODEL, "--width", "63"],
            "--width 63",
        ),
        (vec!["schedulers", "--bogus"], "--bogus"),
        (vec!["txt2image"], "txt2image"),
    ];
    for (args, needle) in &other_cases {
        problems.extend(refusal_problem(args, needle));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A UNet and a text encoder from different models, in a folder without the configs that would say so: the
/// graph's declared `encoder_hidden_states` width is compared with the embeddings before the first UNet run.
#[test]
fn text_width_is_checked_from_the_graph_without_configs() {
    let dir = tmpdir("width");
    let model = dir.join("m");
    common::copy_dir(std::path::Path::new(MODEL), &model);
    std::fs::remove_dir_all(model.join("text_encoder")).unwrap();
    common::copy_dir(
        std::path::Path::new("onnx/sd-tiny-inpaint-optimum/text_encoder"),
        &model.join("text_encoder"),
    );
    std::fs::remove_file(model.join("unet/config.json")).unwrap();
    std::fs::remove_file(model.join("text_encoder/config.json")).unwrap();
    refused(
        &t2i_at(&model, &[]),
        "unet/model.onnx: attends to 16-wide text (its encoder_hidden_states input) but the text encoder gives 8-wide",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn t2i_at<'a>(model: &'a std::path::Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "txt2img",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a cat",
        "--quiet",
        "--steps",
        "2",
        "--seed",
        "1",
    ];
    v.extend_from_slice(extra);
    v
}
