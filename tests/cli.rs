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
    // Image i has seed + i and says so, with its batch position (A1111's fields).
    for (i, name) in ["cat-0.png", "cat-1.png"].iter().enumerate() {
        let text = png_parameters(&d.join(name));
        assert!(
            text.starts_with("a cat\nSteps: 2, Sampler: Euler a,"),
            "{}",
            text
        );
        assert!(
            text.contains(&format!("Seed: {}, Size: 64x64", 5 + i)),
            "{text}"
        );
        assert!(
            text.contains(&format!("Batch size: 2, Batch pos: {i}")),
            "{text}"
        );
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
    // A header, then one scheduler a line with its schedules and the other names it takes.
    assert!(listed.contains("\"DPM++ 2M\"") && listed.contains("uniform,karras,exponential,beta"));
    let names: Vec<&str> = listed
        .lines()
        .skip(1)
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
            "{exe} txt2img --model {MODEL} --prompt x --steps 4 --seed 1 --output {}/p.png --overwrite {extra}",
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
            "--overwrite",
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
        "--overwrite",
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
            "--overwrite",
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

fn pixels(path: &Path) -> Vec<u8> {
    common::read_png(path).2
}

/// A1111's and sd.cpp's batches: image i gets seed + i with its own generator, across --batch-size and
/// --batch-count; each says its seed and position, and is the image a run of one with that seed gives (within 1
/// level: ONNX Runtime's batched kernels round differently). Names from a pattern; nothing clobbered.
#[test]
fn batches_seed_each_image_and_name_files_without_clobbering() {
    let d = tmpdir("seeds");
    let pattern = d.join("{seed}.png");
    let p = pattern.to_str().unwrap();
    let args = t2i(
        MODEL,
        &[
            "-s",
            "5",
            "--batch-size",
            "2",
            "-b",
            "2",
            "--scheduler",
            "euler_a",
            "-o",
            p,
        ],
    );
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for (i, seed) in (5..9).enumerate() {
        let text = png_parameters(&d.join(format!("{seed}.png")));
        let parsed = sd_onnx::infotext::parse(&text);
        assert_eq!(
            parsed.get("Seed"),
            Some(seed.to_string().as_str()),
            "{text}"
        );
        assert_eq!(
            parsed.get("Batch pos"),
            Some((i % 2).to_string().as_str()),
            "{text}"
        );
    }
    let alone = d.join("alone.png");
    let o = run(&t2i(
        MODEL,
        &[
            "-s",
            "7",
            "--scheduler",
            "euler_a",
            "-o",
            alone.to_str().unwrap(),
        ],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (a, b) = (pixels(&alone), pixels(&d.join("7.png")));
    let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    assert!(
        worst <= 1,
        "image 2 of the run vs seed 7 alone: {worst} levels"
    );
    // The same run again: every name exists, refused before any work (exit 2), files untouched.
    let before = std::fs::read(d.join("5.png")).unwrap();
    expect_usage(&run(&args), "5.png: exists; pass --overwrite");
    assert_eq!(std::fs::read(d.join("5.png")).unwrap(), before);
    // A pattern that gives two images one name is refused.
    let same = d.join("same{batch}.png");
    expect_usage(
        &run(&t2i(
            MODEL,
            &["--batch-size", "2", "-o", same.to_str().unwrap()],
        )),
        "would both be written to",
    );
    // diffusers' one generator per batch: every image says the batch's seed and that it was shared.
    let shared = d.join("shared.png");
    let o = run(&t2i(
        MODEL,
        &[
            "-s",
            "5",
            "--batch-size",
            "2",
            "--shared-generator",
            "-o",
            shared.to_str().unwrap(),
        ],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for name in ["shared-0.png", "shared-1.png"] {
        let text = png_parameters(&d.join(name));
        assert!(
            text.contains("Seed: 5,") && text.contains("Batch generator: shared"),
            "{text}"
        );
    }
    // Default names number past existing files.
    let o = bin()
        .current_dir(&d)
        .args(t2i(
            &std::fs::canonicalize(MODEL).unwrap().to_string_lossy(),
            &["-s", "5"],
        ))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o2 = bin()
        .current_dir(&d)
        .args(t2i(
            &std::fs::canonicalize(MODEL).unwrap().to_string_lossy(),
            &["-s", "5"],
        ))
        .output()
        .unwrap();
    assert_eq!(o2.status.code(), Some(0), "{}", stderr(&o2));
    assert!(d.join("sd-onnx-5.png").is_file() && d.join("sd-onnx-5-2.png").is_file());
    let _ = std::fs::remove_dir_all(&d);
}

/// What the binary writes reads back through A1111's parser (sd_onnx::infotext::parse, its rules ported)
/// as what ran, including a model folder whose name needs A1111's quoting; what it reads back is accepted by
/// --scheduler and --schedule again. Schedules a scheduler lacks are refused naming those that have them.
#[test]
fn infotext_reads_back_and_schedules_are_honoured_or_refused() {
    let d = tmpdir("infotext");
    let model = d.join("dream, v2: fp16");
    copy_dir(Path::new(MODEL), &model);
    let m = model.to_str().unwrap();
    let out = d.join("x.png");
    let o = run(&t2i(
        m,
        &[
            "-s",
            "1",
            "--scheduler",
            "DPM++ 2M",
            "--schedule",
            "exponential",
            "-n",
            "blurry, bad: hands",
            "-o",
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = png_parameters(&out);
    let p = sd_onnx::infotext::parse(&text);
    assert_eq!(p.prompt, "a cat");
    assert_eq!(p.negative_prompt, "blurry, bad: hands");
    assert_eq!(p.get("Model"), Some("dream, v2: fp16"), "{text}");
    assert_eq!(p.get("Sampler"), Some("DPM++ 2M"));
    assert_eq!(p.get("Schedule type"), Some("Exponential"));
    assert_eq!(p.get("RNG"), Some("CPU"));
    let hash = p.get("Model hash").unwrap();
    assert!(
        hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hash}"
    );
    // Pasted back: the same image.
    let again = d.join("again.png");
    let o = run(&t2i(
        m,
        &[
            "-s",
            "1",
            "--scheduler",
            p.get("Sampler").unwrap(),
            "--schedule",
            p.get("Schedule type").unwrap(),
            "-n",
            &p.negative_prompt,
            "-o",
            again.to_str().unwrap(),
        ],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(pixels(&out), pixels(&again));
    // Karras / exponential actually change the image; "uniform" is the folder's default here (at 2 steps
    // linspace spacing gives exactly the Karras endpoints, so 4).
    let euler = |schedule: &str| {
        let file = d.join(format!("{schedule}.png"));
        let o = run(&[
            "txt2img",
            "--model",
            m,
            "--prompt",
            "a cat",
            "--quiet",
            "-s",
            "1",
            "--steps",
            "4",
            "--scheduler",
            "euler",
            "--schedule",
            schedule,
            "-o",
            file.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        file
    };
    let (k, u) = (euler("karras"), euler("uniform"));
    assert_ne!(pixels(&k), pixels(&u));
    assert!(png_parameters(&u).contains("Schedule type: Uniform"));
    // PNDM has no sigma schedule: no Schedule type written, and none accepted.
    let pl = d.join("pl.png");
    let o = run(&t2i(
        m,
        &["--scheduler", "pndm", "-o", pl.to_str().unwrap()],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!png_parameters(&pl).contains("Schedule type"));
    expect_usage(
        &run(&t2i(m, &["--scheduler", "ddim", "--schedule", "beta"])),
        "--schedule beta does not apply to ddim (DDIMScheduler has no sigma schedule); schedulers with it: lms",
    );
    expect_usage(
        &run(&t2i(m, &["--scheduler", "euler-a", "--schedule", "karras"])),
        "does not apply to euler-a (it has uniform)",
    );
    expect_usage(
        &run(&t2i(m, &["--schedule", "exponential", "--karras"])),
        "--schedule asks for the exponential schedule and --karras for karras",
    );
    expect_usage(
        &run(&t2i(m, &["--schedule", "polyexp"])),
        "--schedule polyexp: choose",
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Defaults from a TOML file (--config or $SD_ONNX_CONFIG); the command line wins; mistakes name the key.
#[test]
fn config_file_supplies_defaults() {
    let d = tmpdir("config");
    let cfg = d.join("sd.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = \"{MODEL}\"\nsteps = 2\nscheduler = \"Euler a\"\nquiet = true\noutput = \"{}/c-{{seed}}.png\"\n",
            d.display()
        ),
    )
    .unwrap();
    let o = run(&[
        "txt2img",
        "--config",
        cfg.to_str().unwrap(),
        "-p",
        "a cat",
        "-s",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = png_parameters(&d.join("c-3.png"));
    assert!(text.contains("Steps: 2, Sampler: Euler a"), "{text}");
    let o = bin()
        .env("SD_ONNX_CONFIG", &cfg)
        .args(["txt2img", "-p", "a cat", "-s", "4", "--steps", "3"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(png_parameters(&d.join("c-4.png")).contains("Steps: 3,"));
    std::fs::write(&cfg, "stepz = 2\n").unwrap();
    expect_usage(
        &run(&[
            "txt2img",
            "--config",
            cfg.to_str().unwrap(),
            "-p",
            "x",
            "-m",
            MODEL,
        ]),
        "`stepz` is not an option of any subcommand",
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// `tokenize` shows the tokens; `--help` is grouped and lists every scheduler; an argument that is not UTF-8
/// is named.
#[test]
fn tokenize_help_and_arguments() {
    let o = run(&["tokenize", "-m", MODEL, "a red, apple"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("736  red</w>") && out.contains("x 71 (padding to 77)"),
        "{out}"
    );
    let o = run(&["tokenize", "-m", MODEL, "--json", "a cat"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"][1], "a</w>");
    let help = String::from_utf8_lossy(&run(&["txt2img", "--help"]).stdout).into_owned();
    for heading in ["Generation:", "Images:", "Model and runtime:", "Output:"] {
        assert!(help.contains(heading), "{heading}");
    }
    for name in sd_onnx::schedulers::SchedulerKind::names() {
        assert!(help.contains(name), "--help does not list {name}");
    }
    use std::os::unix::ffi::OsStrExt;
    let o = bin()
        .args(["txt2img", "-m", MODEL, "-p"])
        .arg(std::ffi::OsStr::from_bytes(b"caf\xe9"))
        .output()
        .unwrap();
    expect_usage(&o, "argument 5 (`caf\u{fffd}`) is not valid UTF-8");
}

/// `--embeddings-dir` on the command line gives the library's (and diffusers') image, `embeddings` lists what
/// loads and what does not, and a folder that is not there is bad input naming it.
#[test]
fn embeddings_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("sd-onnx-cli-ti-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("ti.png");
    let o = run(&[
        "txt2img",
        "--model",
        MODEL,
        "--embeddings-dir",
        "tests/fixtures/embeddings",
        "--prompt",
        "a photo of tiny-style on a table",
        "--scheduler",
        "euler-a",
        "--steps",
        "10",
        "--seed",
        "50",
        "--guidance",
        "7.5",
        "-W",
        "64",
        "-H",
        "64",
        "--quiet",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (_, _, got) = common::read_png(&out);
    let (_, _, want) = common::read_png(Path::new("tests/fixtures/ti/ti_a1111_pt.png"));
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        max <= 1,
        "max {max} levels from diffusers' load_textual_inversion"
    );

    let o = run(&[
        "embeddings",
        "--model",
        MODEL,
        "--embeddings-dir",
        "tests/fixtures/embeddings/bad",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["loaded"].as_array().unwrap().len(), 0);
    let reason = v["refused"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("32 wide") && reason.contains("16 wide"),
        "{reason}"
    );

    let o = run(&[
        "txt2img",
        "--model",
        MODEL,
        "--embeddings-dir",
        "/no/such/dir",
        "-p",
        "x",
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("/no/such/dir"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// LoRA from the command line (issue 14): `--lora PATH:W` and `<lora:NAME:W>` with `--lora-dir` give diffusers'
/// fused image; the PNG names them in `Lora hashes`; `lora inspect` reports format, base model and matches;
/// refusals name the file and its base model; nothing is written when a run is refused.
#[test]
fn loras_from_the_command_line() {
    let dir = tmpdir("lora");
    let out = dir.join("l.png");
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "txt2img",
            "--model",
            MODEL,
            "--scheduler",
            "euler",
            "--steps",
            "10",
            "--seed",
            "50",
            "--guidance",
            "7.5",
            "-W",
            "64",
            "-H",
            "64",
            "--quiet",
            "--overwrite",
            "--output",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(out.to_str().unwrap().into());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let want = common::read_png(Path::new("tests/fixtures/lora/kohya_0.6.png")).2;
    let close = |got: &[u8]| {
        got.iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap()
    };
    for extra in [
        &[
            "-p",
            "a cube ",
            "--lora",
            "tests/fixtures/loras/style.safetensors:0.6",
        ][..],
        &[
            "-p",
            "a cube <lora:style:0.6>",
            "--lora-dir",
            "tests/fixtures/loras",
        ][..],
    ] {
        let args = common(extra);
        let o = bin().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let (_, _, got) = common::read_png(&out);
        assert!(
            close(&got) <= 1,
            "{extra:?}: {} levels from diffusers' fuse_lora",
            close(&got)
        );
        let png = std::fs::read(&out).unwrap();
        let text = String::from_utf8_lossy(&png);
        // A1111's short hash: SHA-256 of the file after its header (addnet_hash_safetensors), first 12 digits.
        assert!(
            text.contains("Lora hashes: \"style: a70081fa12a4\""),
            "{extra:?}"
        );
    }

    let o = run(&[
        "lora",
        "inspect",
        "tests/fixtures/loras/locon.safetensors",
        "-m",
        MODEL,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["base_model"], "sd_v1");
    assert_eq!(
        v["kinds"]["LoCon"].as_u64().unwrap()
            + v["kinds"]["LoCon (Tucker)"].as_u64().unwrap()
            + v["kinds"]["LoRA"].as_u64().unwrap_or(0),
        v["targets"]["unet"].as_u64().unwrap()
    );
    assert_eq!(v["unmatched"].as_array().unwrap().len(), 0);
    assert!(v["refused"].is_null());

    let _ = std::fs::remove_file(&out);
    // Refusals: exit 2, one line naming the file, nothing written.
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "-p",
                "x",
                "--lora",
                "tests/fixtures/loras/xl/xl-style.safetensors",
            ],
            "xl-style.safetensors: is a LoRA for another model (trained on sdxl_base_v1-0)",
        ),
        (
            &[
                "-p",
                "x <lora:nope:1>",
                "--lora-dir",
                "tests/fixtures/loras",
            ],
            "no nope.safetensors in tests/fixtures/loras",
        ),
        (&["-p", "x <lora:style:1>"], "needs --lora-dir"),
        (
            &[
                "-p",
                "x",
                "--lora",
                "tests/fixtures/loras/style.safetensors:abc",
            ],
            "style.safetensors:abc",
        ),
    ];
    for (extra, want) in cases {
        let o = bin().args(common(extra)).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{extra:?}: {}", stderr(&o));
        assert!(!out.exists(), "{extra:?} wrote an image");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
