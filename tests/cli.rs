//! The real binary: exit codes (0 ok, 2 bad input/usage, 1 other), one-line errors naming the culprit,
//! PNG output with A1111 metadata, and no partial files. Needs ORT_DYLIB_PATH (scripts/test sets it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MODEL: &str = "onnx/sd-tiny-optimum";

mod common;
use common::copy_dir;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sd-onnx"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sdonnx-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn expect_usage(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The `parameters` text chunk of a PNG the binary wrote (checked to be the first text chunk).
fn png_parameters(path: &Path) -> String {
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()))
        .read_info()
        .unwrap();
    let chunk = &reader.info().uncompressed_latin1_text[0];
    assert_eq!(chunk.keyword, "parameters");
    chunk.text.clone()
}

fn t2i<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "txt2img", "--model", model, "--prompt", "a cat", "--steps", "2", "--quiet",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn bad_inputs_exit_2_with_one_line() {
    expect_usage(&run(&t2i("no/such/folder", &[])), "no/such/folder");
    expect_usage(&run(&t2i(MODEL, &["--width", "65"])), "--width 65");
    // A multiple of 8 that the exported UNet cannot run (it halves the latent once): said up front, not an
    // ONNX Runtime Concat error midway.
    expect_usage(
        &run(&t2i(MODEL, &["--width", "72"])),
        "--width 72 is not a positive multiple of 16",
    );
    expect_usage(
        &run(&[
            "txt2img", "--model", MODEL, "--prompt", "a cat", "--steps", "0",
        ]),
        "--steps",
    );
    expect_usage(
        &run(&t2i(MODEL, &["--scheduler", "heunx"])),
        "unknown scheduler `heunx`",
    );
    expect_usage(&run(&t2i(MODEL, &["--rng", "cuda"])), "--rng cuda");
    expect_usage(
        &run(&t2i(MODEL, &["--guidance-rescale", "1.5"])),
        "--guidance-rescale 1.5 is outside [0, 1]",
    );
    expect_usage(
        &run(&t2i(MODEL, &["--output", "out.bmp"])),
        "use .png, .jpg or .webp",
    );
    // A value clap's parser rejects: exit 2 with clap's own (multi-line) usage message.
    let o = run(&t2i(MODEL, &["--seed", "-2"]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("-1 for a random one"), "{}", stderr(&o));
    // clap's own usage errors are exit 2 as well.
    assert_eq!(run(&["txt2img", "--prompt", "x"]).status.code(), Some(2));
}

#[test]
fn broken_folders_are_named() {
    let d = tmpdir("broken");
    let no_vae = d.join("no-vae");
    copy_dir(Path::new(MODEL), &no_vae);
    std::fs::remove_dir_all(no_vae.join("vae_decoder")).unwrap();
    expect_usage(&run(&t2i(no_vae.to_str().unwrap(), &[])), "vae_decoder");

    // A UNet graph that lacks `sample`: put the text encoder where the UNet should be.
    let wrong = d.join("wrong-unet");
    copy_dir(Path::new(MODEL), &wrong);
    std::fs::copy(
        wrong.join("text_encoder/model.onnx"),
        wrong.join("unet/model.onnx"),
    )
    .unwrap();
    expect_usage(
        &run(&t2i(wrong.to_str().unwrap(), &[])),
        "no input `sample`",
    );

    let bad_tok = d.join("bad-tok");
    copy_dir(Path::new(MODEL), &bad_tok);
    std::fs::write(bad_tok.join("tokenizer/vocab.json"), "not json").unwrap();
    expect_usage(&run(&t2i(bad_tok.to_str().unwrap(), &[])), "vocab.json");

    // A guidance-distilled (LCM) UNet with a config that does not say so: named, with the fix.
    let lcm = d.join("lcm-no-config");
    copy_dir(Path::new("onnx/sd-tiny-lcm-optimum"), &lcm);
    let cfg = lcm.join("unet/config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"time_cond_proj_dim\": 8", "\"time_cond_proj_dim\": null");
    std::fs::write(&cfg, text).unwrap();
    expect_usage(
        &run(&t2i(lcm.to_str().unwrap(), &[])),
        "takes `timestep_cond` (a guidance-distilled UNet)",
    );

    // SDXL folders: one without its second tokenizer, a refiner, and a UNet that does not match the folder
    // are each named, not failed on a missing input later.
    let xl = d.join("xl");
    copy_dir(Path::new(MODEL), &xl);
    std::fs::create_dir_all(xl.join("text_encoder_2")).unwrap();
    expect_usage(
        &run(&t2i(xl.to_str().unwrap(), &[])),
        "an SDXL folder needs its second tokenizer",
    );
    let refiner = d.join("refiner");
    copy_dir(Path::new("onnx/sdxl-tiny-optimum"), &refiner);
    let index = refiner.join("model_index.json");
    let text = std::fs::read_to_string(&index).unwrap().replacen(
        "{",
        "{\"requires_aesthetics_score\": true,",
        1,
    );
    std::fs::write(&index, text).unwrap();
    expect_usage(
        &run(&t2i(refiner.to_str().unwrap(), &[])),
        "an SDXL refiner",
    );
    let mixed = d.join("xl-with-sd-unet");
    copy_dir(Path::new("onnx/sdxl-tiny-optimum"), &mixed);
    let _ = std::fs::remove_dir_all(mixed.join("unet"));
    copy_dir(&Path::new(MODEL).join("unet"), &mixed.join("unet"));
    expect_usage(
        &run(&t2i(mixed.to_str().unwrap(), &[])),
        "lacks SDXL's `text_embeds`/`time_ids` inputs",
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn missing_runtime_library_says_what_to_do() {
    let o = bin()
        .args(t2i(MODEL, &[]))
        .env("ORT_DYLIB_PATH", "/no/such/libonnxruntime.so")
        .output()
        .unwrap();
    expect_usage(&o, "scripts/setup");
    let o = run(&t2i(MODEL, &["--ort-lib", "/no/such/lib.so"]));
    expect_usage(&o, "/no/such/lib.so");
}

#[test]
fn writes_pngs_with_parameters_and_batch_suffixes() {
    let d = tmpdir("out");
    let out = d.join("cat.png");
    let o = run(&t2i(
        MODEL,
        &[
            "--seed",
            "5",
            "--batch",
            "2",
            "--scheduler",
            "euler-a",
            "--output",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for name in ["cat-0.png", "cat-1.png"] {
        let text = png_parameters(&d.join(name));
        assert!(
            text.starts_with("a cat\nSteps: 2, Sampler: Euler a,"),
            "{}",
            text
        );
        assert!(text.contains("Seed: 5, Size: 64x64"), "{text}");
    }
    // An output folder that does not exist: refused before the run (exit 2), nothing (no temp file) left.
    let o = run(&t2i(
        MODEL,
        &[
            "--seed",
            "5",
            "--output",
            d.join("missing/x.png").to_str().unwrap(),
        ],
    ));
    expect_usage(&o, "does not exist");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn tokenize_and_inspect() {
    let o = run(&["tokenize", "--model", MODEL, "--json", "a cat"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ids"][0], 49406);
    assert_eq!(v["ids"][3], 49407);
    assert_eq!(v["ids"].as_array().unwrap().len(), 77);

    let o = run(&["inspect", "--model", "onnx/sd-tiny-convert", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["layout"].as_str().unwrap().contains("convert"));
    assert_eq!(v["tokenizer"]["pad_id"], 49407);
    let unet = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "unet")
        .unwrap();
    assert!(
        unet["external_data"][0]
            .as_str()
            .unwrap()
            .ends_with("weights.pb")
    );
    assert_eq!(unet["inputs"][1]["name"], "timestep");
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("latent_sample"))
    );
    // The fp16 fixture is what it claims: fp16 ports, int64 timestep, weights in model.onnx_data.
    let o = run(&["inspect", "--model", "onnx/sd-tiny-fp16", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let unet = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "unet")
        .unwrap();
    let dtype = |name: &str| {
        unet["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["dtype"]
            .clone()
    };
    assert_eq!(dtype("sample"), "float16");
    assert_eq!(dtype("timestep"), "int64");
    assert!(
        unet["external_data"][0]
            .as_str()
            .unwrap()
            .ends_with("model.onnx_data")
    );

    let o = run(&["schedulers"]);
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        [
            "pndm",
            "ddim",
            "ddpm",
            "lms",
            "euler",
            "euler-a",
            "heun",
            "dpm++2m",
            "dpm++2m-sde",
            "unipc",
            "kdpm2",
            "kdpm2-a",
            "deis",
            "lcm"
        ]
    );
}

/// A guidance-distilled (LCM) folder from the CLI: `inspect` says how guidance enters, a run works with the
/// folder's LCMScheduler, and a negative prompt is reported as unused rather than silently dropped.
#[test]
fn guidance_distilled_models_from_the_cli() {
    let lcm = "onnx/sd-tiny-lcm-optimum";
    let o = run(&["inspect", "--model", lcm, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["guidance_embedding"]["width"], 8);
    let d = tmpdir("lcm");
    let out = d.join("lcm.png");
    let o = run(&[
        "txt2img",
        "--model",
        lcm,
        "--prompt",
        "a cat",
        "--negative-prompt",
        "blurry",
        "--seed",
        "1",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
        "--timings-json",
        d.join("t.json").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the negative prompt is not used"),
        "{}",
        stderr(&o)
    );
    // Without --steps/--guidance: LatentConsistencyModelPipeline's defaults, 4 steps at 8.5.
    let text = png_parameters(&out);
    assert!(text.contains("Steps: 4,"), "{text}");
    assert!(text.contains("CFG scale: 8.5,"), "{text}");
    // --timings-json: one bound UNet call per step, no capture on the CPU.
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("t.json")).unwrap()).unwrap();
    assert_eq!(t["unet_calls"], 4);
    assert_eq!(t["unet_calls_io_bound"], 4);
    assert_eq!(t["unet_graph_capture"], "off");
    assert!(t["wall_ms"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(&d);
}

/// The binary is built at ort's api-17 baseline: an older ONNX Runtime (1.22, the level lagging provider
/// builds sit at) must run, and one below 1.17 must be refused with one clear line.
/// scripts/fetch-compat-libs (run by scripts/test) puts both libraries in target/ort-compat.
#[test]
fn older_runtimes_work_down_to_the_minimum() {
    let dir = Path::new("target/ort-compat");
    let lib = |v: &str| {
        let p = dir.join(format!("libonnxruntime.so.{v}"));
        assert!(
            p.is_file(),
            "{} missing: run scripts/fetch-compat-libs",
            p.display()
        );
        p
    };
    let d = tmpdir("compat");
    let out = d.join("old.png");
    let new = lib("1.22.0");
    let o = run(&t2i(
        MODEL,
        &[
            "--seed",
            "3",
            "--ort-lib",
            new.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.is_file());
    let old = lib("1.16.3");
    expect_usage(
        &run(&t2i(MODEL, &["--ort-lib", old.to_str().unwrap()])),
        "is ONNX Runtime 1.16.3; sd-onnx needs 1.17",
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Defaults: random seed printed, output `sd-onnx-<seed>.png`, 25 steps, the folder's scheduler (PNDM),
/// size from unet sample_size x VAE factor (64x64 here).
#[test]
fn defaults_follow_the_folder_and_print_the_seed() {
    let d = tmpdir("defaults");
    let model = std::fs::canonicalize(MODEL).unwrap();
    let o = bin()
        .current_dir(&d)
        .args([
            "txt2img",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a cat",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    let seed: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("seed: "))
        .expect(&err)
        .trim()
        .parse()
        .unwrap();
    let file = d.join(format!("sd-onnx-{seed}.png"));
    let text = png_parameters(&file);
    assert!(text.contains("Steps: 25, Sampler: PLMS,"), "{text}");
    assert!(
        text.contains(&format!("Seed: {seed}, Size: 64x64")),
        "{text}"
    );
    // A1111's `--seed -1` is a random seed too, printed.
    let out = d.join("minus-one.png");
    let o = run(&[
        "txt2img",
        "--model",
        MODEL,
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--seed",
        "-1",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("seed: "), "{}", stderr(&o));
    assert!(out.is_file());
    let _ = std::fs::remove_dir_all(&d);
}

/// A progress bar on a terminal (run under `script` for a pty), none with --quiet or when stderr is a pipe.
#[test]
fn progress_bar_only_on_a_terminal() {
    let exe = env!("CARGO_BIN_EXE_sd-onnx");
    let d = tmpdir("pty");
    let cmd = |extra: &str| {
        format!(
            "{exe} txt2img --model {MODEL} --prompt x --steps 4 --seed 1 --output {}/p.png {extra}",
            d.display()
        )
    };
    let under_pty = |c: String| {
        let o = Command::new("script")
            .args(["-qec", &c, "/dev/null"])
            .output()
            .expect("`script` (util-linux)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(
        // PLMS makes 5 UNet calls for 4 steps; the bar counts steps, as diffusers' does.
        under_pty(cmd("")).contains("step 4/4"),
        "no progress bar on a terminal"
    );
    assert!(
        !under_pty(cmd("--quiet")).contains("step "),
        "--quiet must silence the bar"
    );
    let piped = run(&[
        "txt2img",
        "--model",
        MODEL,
        "--prompt",
        "x",
        "--steps",
        "4",
        "--seed",
        "1",
        "--output",
        d.join("q.png").to_str().unwrap(),
    ]);
    assert!(
        !stderr(&piped).contains("step "),
        "no bar when stderr is not a terminal"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// With no --ort-lib and no ORT_DYLIB_PATH, the library next to the executable is used
/// (scripts/setup places it there); every subcommand has --help.
#[test]
fn library_next_to_the_executable_and_help_everywhere() {
    let exe_dir = Path::new(env!("CARGO_BIN_EXE_sd-onnx"))
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(
        exe_dir.join("libonnxruntime.so").is_file(),
        "run scripts/setup first"
    );
    let o = bin()
        .env_remove("ORT_DYLIB_PATH")
        .args(["inspect", "--model", MODEL, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["onnx_runtime"]["found_by"], "next to the executable");
    for sub in [
        &[][..],
        &["txt2img"],
        &["inspect"],
        &["tokenize"],
        &["schedulers"],
    ] {
        let mut args: Vec<&str> = sub.to_vec();
        args.push("--help");
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
}

/// `bench` reports every figure the issue lists, including the scheduler micro-benchmark on 1x4x128x128.
#[test]
fn bench_reports_all_figures() {
    let o = run(&[
        "bench", "--model", MODEL, "--steps", "3", "--runs", "1", "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in [
        "session_creation_ms",
        "text_encoding_ms",
        "vae_decode_ms",
        "peak_rss_mib",
    ] {
        assert!(v[key].as_f64().is_some(), "{key}: {v}");
    }
    assert!(v["unet_step_ms"]["p90"].as_f64().is_some());
    assert!(
        v["scheduler_step_ms"]["share_of_unet_pct"]
            .as_f64()
            .is_some()
    );
    assert!(v["end_to_end_ms"]["median"].as_f64().is_some());
    assert_eq!(v["unet_graph_capture"], "off");
    assert!(v["unet_host_io_ms"]["median"].as_f64().unwrap() > 0.0);
    assert_eq!(v["unet_calls_io_bound"], v["unet_calls"]);
    let micro = v["scheduler_micro"]["per_scheduler_ms"].as_array().unwrap();
    assert_eq!(micro.len(), 14);
    assert!(micro.iter().all(|m| m["1x4x128x128"].as_f64().is_some()));
}

fn i2i<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "img2img", "--model", MODEL, "--prompt", "a cat", "--steps", "4", "--quiet", "--seed", "1",
    ];
    v.extend_from_slice(extra);
    v
}

/// img2img / inpaint bad input: unreadable image, strength outside [0, 1], no VAE encoder (exit 2);
/// a mask of another size is resized, and said so.
#[test]
fn img2img_and_inpaint_inputs() {
    let d = tmpdir("i2i");
    let out = d.join("o.png");
    let out_s = out.to_str().unwrap();
    let img = "tests/fixtures/images/init-64.png";
    std::fs::write(d.join("broken.png"), b"not a png").unwrap();
    expect_usage(
        &run(&i2i(&[
            "--init-image",
            d.join("broken.png").to_str().unwrap(),
            "--output",
            out_s,
        ])),
        "broken.png",
    );
    expect_usage(
        &run(&i2i(&["--init-image", "no/such.png", "--output", out_s])),
        "no/such.png",
    );
    expect_usage(
        &run(&i2i(&[
            "--init-image",
            img,
            "--strength",
            "1.5",
            "--output",
            out_s,
        ])),
        "--strength 1.5",
    );
    let no_enc = d.join("no-encoder");
    copy_dir(Path::new(MODEL), &no_enc);
    std::fs::remove_dir_all(no_enc.join("vae_encoder")).unwrap();
    let mut args = i2i(&["--init-image", img, "--output", out_s]);
    args[2] = no_enc.to_str().unwrap();
    expect_usage(&run(&args), "vae_encoder");
    assert!(!out.exists(), "no output on failure");

    // strength 0: no denoising step, the input re-encoded; the A1111 text records the strength.
    let o = run(&i2i(&[
        "--init-image",
        img,
        "--strength",
        "0",
        "--output",
        out_s,
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(png_parameters(&out).contains("Denoising strength: 0,"));

    // Without --strength, each pipeline's diffusers default: SD img2img 0.8, SDXL img2img 0.3, SDXL
    // inpainting 0.9999; and without --guidance, 7.5, or StableDiffusionXLPipeline's 5 for SDXL.
    for (command, model, want) in [
        ("img2img", MODEL, "Denoising strength: 0.8,"),
        (
            "img2img",
            "onnx/sdxl-tiny-optimum",
            "Denoising strength: 0.3,",
        ),
        (
            "inpaint",
            "onnx/sdxl-tiny-optimum",
            "Denoising strength: 0.9999,",
        ),
    ] {
        let mut args = vec![
            command,
            "--model",
            model,
            "--prompt",
            "a cat",
            "--steps",
            "4",
            "--quiet",
            "--init-image",
            img,
            "--output",
            out_s,
        ];
        if command == "inpaint" {
            args.extend(["--mask", "tests/fixtures/images/mask-64.png"]);
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let text = png_parameters(&out);
        assert!(text.contains(want), "{command} {model}: {text}");
        let cfg = if model == MODEL {
            "CFG scale: 7.5,"
        } else {
            "CFG scale: 5,"
        };
        assert!(text.contains(cfg), "{command} {model}: {text}");
    }

    // A 200x37 input: diffusers would take 200x32, which this UNet cannot run (multiples of 16): it is
    // used at 192x32, with a note saying why.
    let o = run(&[
        "img2img",
        "--model",
        MODEL,
        "--prompt",
        "a cat",
        "--steps",
        "3",
        "--seed",
        "1",
        "--init-image",
        "tests/fixtures/resize/src-200x37.png",
        "--output",
        out_s,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("used at 192x32 (diffusers would take 200x32"),
        "{}",
        stderr(&o)
    );
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()))
        .read_info()
        .unwrap();
    assert_eq!((reader.info().width, reader.info().height), (192, 32));

    // Inpainting with a 32x32 RGB mask on a 64x64 image: resized, with a note; 9-channel model too.
    for model in [MODEL, "onnx/sd-tiny-inpaint-optimum"] {
        let o = run(&[
            "inpaint",
            "--model",
            model,
            "--prompt",
            "a cat",
            "--steps",
            "3",
            "--seed",
            "1",
            "--init-image",
            img,
            "--mask",
            "tests/fixtures/images/mask-32-rgb.png",
            "--output",
            out_s,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("mask-32-rgb.png: resized to 64x64"),
            "{}",
            stderr(&o)
        );
    }
    // A 9-channel UNet refuses txt2img, naming the right command.
    expect_usage(
        &run(&t2i("onnx/sd-tiny-inpaint-optimum", &["--output", out_s])),
        "sd-onnx inpaint",
    );
    // Inpainting at a strength that leaves no step is refused (diffusers refuses it too).
    let o = run(&[
        "inpaint",
        "--model",
        MODEL,
        "--prompt",
        "x",
        "--steps",
        "4",
        "--init-image",
        img,
        "--mask",
        "tests/fixtures/images/mask-64.png",
        "--strength",
        "0.1",
        "--output",
        out_s,
    ]);
    expect_usage(&o, "no denoising step");
    let _ = std::fs::remove_dir_all(&d);
}

/// An fp16 VAE decoder that overflows (tests/fixtures/nan-vae, made by scripts/make_fp16_fixture.py) fails
/// with a message naming the fix, and succeeds once the folder keeps an fp32 decoder in vae_decoder_fp32/.
#[test]
fn fp16_vae_overflow_is_caught_and_retried_in_fp32() {
    let d = tmpdir("nanvae");
    let model = d.join("m");
    copy_dir(Path::new("onnx/sd-tiny-fp16"), &model);
    std::fs::copy(
        "tests/fixtures/nan-vae/vae_decoder/model.onnx",
        model.join("vae_decoder/model.onnx"),
    )
    .unwrap();
    let out = d.join("o.png");
    let args = t2i(
        model.to_str().unwrap(),
        &["--seed", "1", "--output", out.to_str().unwrap()],
    );
    let o = run(&args);
    expect_usage(&o, "vae_decoder_fp32");
    assert!(!out.exists());
    copy_dir(
        Path::new("onnx/sd-tiny-optimum/vae_decoder"),
        &model.join("vae_decoder_fp32"),
    );
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("overflowed (NaN/inf); decoded again"),
        "{}",
        stderr(&o)
    );
    assert!(out.is_file());
    let _ = std::fs::remove_dir_all(&d);
}

/// Providers: what the library offers is listed; one it lacks is an error naming it (no CPU fallback);
/// bad provider flags are usage errors.
#[test]
fn execution_providers_are_explicit() {
    let o = run(&["inspect", "--providers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["providers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "CPUExecutionProvider")
    );
    expect_usage(
        &run(&t2i(MODEL, &["--ep", "cuda"])),
        "has no CUDAExecutionProvider",
    );
    expect_usage(
        &run(&t2i(MODEL, &["--component-ep", "unet=tensorrt"])),
        "has no TensorrtExecutionProvider",
    );
    expect_usage(&run(&t2i(MODEL, &["--ep", "gpu"])), "--ep gpu");
    // CUDA graphs need the UNet on a CUDA device; on the CPU that is a usage error, not a silent no-op.
    expect_usage(
        &run(&t2i(MODEL, &["--cuda-graph"])),
        "--cuda-graph: the unet runs on cpu",
    );
    expect_usage(
        &run(&t2i(
            MODEL,
            &["--cuda-graph", "--component-ep", "unet=cuda"],
        )),
        "has no CUDAExecutionProvider",
    );
    expect_usage(
        &run(&t2i(MODEL, &["--ep-option", "enable_cuda_graph=1"])),
        "use --cuda-graph instead",
    );
    expect_usage(
        &run(&t2i(MODEL, &["--component-ep", "vae=cpu"])),
        "component is one of",
    );
    expect_usage(
        &run(&t2i(MODEL, &["--ep-option", "novalue"])),
        "expected KEY=VALUE",
    );
}

/// --low-memory and the optimised-graph cache give the same image as the default path.
#[test]
fn low_memory_and_graph_cache_give_the_same_image() {
    let d = tmpdir("lowmem");
    let cache = d.join("cache");
    let mut outputs = Vec::new();
    for (i, extra) in [
        vec!["--no-graph-cache"],
        vec!["--low-memory", "--no-graph-cache"],
        vec![],
        vec![],
    ]
    .iter()
    .enumerate()
    {
        let out = d.join(format!("{i}.png"));
        let mut args = t2i(
            MODEL,
            &[
                "--seed",
                "4",
                "--output",
                out.to_str().unwrap(),
                "--cache-dir",
                cache.to_str().unwrap(),
            ],
        );
        args.extend(extra.iter().copied());
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert!(
        outputs.windows(2).all(|w| w[0] == w[1]),
        "all four runs must write the same PNG"
    );
    let cached: Vec<_> = std::fs::read_dir(cache.join("graphs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert!(
        cached
            .iter()
            .any(|e| e.file_name().to_string_lossy().starts_with("unet-")),
        "optimised UNet cached"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A1111's sampler names (and its combined "NAME Karras") give the image our names give (issue 12).
#[test]
fn a1111_sampler_names_are_accepted() {
    let d = tmpdir("names");
    let (a, b) = (d.join("a.png"), d.join("b.png"));
    let o = run(&t2i(
        MODEL,
        &[
            "--seed",
            "3",
            "--scheduler",
            "DPM++ 2M Karras",
            "--output",
            a.to_str().unwrap(),
        ],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&t2i(
        MODEL,
        &[
            "--seed",
            "3",
            "--scheduler",
            "dpm++2m",
            "--karras",
            "--output",
            b.to_str().unwrap(),
        ],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    assert!(
        png_parameters(&a).contains("Sampler: DPM++ 2M, Schedule type: Karras"),
        "{}",
        png_parameters(&a)
    );
    let _ = std::fs::remove_dir_all(&d);
}
