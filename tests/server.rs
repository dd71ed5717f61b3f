//! `sd-onnx serve` through raw HTTP on 127.0.0.1: the API's images equal the CLI's byte for byte, bad requests
//! get A1111-style 4xx errors and never take the server down, auth guards every endpoint, concurrent clients get
//! their own images, a full queue answers 503, `/interrupt`, SIGTERM and a client hanging up stop the running
//! job, memory stays flat over hundreds of requests; and the `webuiapi` package (PyPI) drives it as it drives
//! A1111.
//!
//! Every server here runs the bundled model (onnx/sd-emoji, 64x64) on the CPU, on a port the OS picks.

use base64::Engine;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MODEL: &str = "onnx/sd-emoji";

struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sd-onnx"))
            .args(["serve", "-m", MODEL, "--listen", "127.0.0.1:0"])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut port = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(addr) = line.strip_prefix("listening on http://") {
                port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
                break;
            }
        }
        let Some(port) = port else {
            let _ = child.kill();
            panic!("the server did not start:\n{}", log.lock().unwrap());
        };
        let l = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(|l| l.ok()) {
                l.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Server { child, port, log }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        http(self.port, method, path, headers, body)
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
    /// The images of a txt2img/img2img answer, as the PNG files they encode.
    fn images(&self) -> Vec<Vec<u8>> {
        assert_eq!(self.status, 200, "{}", self.text());
        self.json()["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| b64().decode(i.as_str().unwrap()).unwrap())
            .collect()
    }
}

fn b64() -> base64::engine::general_purpose::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), read to the end.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before it has read a large body: a failed write is not the test's failure.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP answer to {method} {path}: {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply { status, head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sdonnx-server-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The CLI's files for the same parameters.
/// Runs the CLI with `line`'s words (split at spaces; '...' quotes one with spaces) and returns the PNGs it wrote.
fn cli(line: &str, out: &Path) -> Vec<Vec<u8>> {
    let args: Vec<String> = line
        .split('\'')
        .enumerate()
        .flat_map(|(i, part)| {
            if i % 2 == 1 {
                vec![part.to_string()]
            } else {
                part.split_whitespace().map(str::to_string).collect()
            }
        })
        .collect();
    let o = Command::new(env!("CARGO_BIN_EXE_sd-onnx"))
        .args(&args)
        .args(["-m", MODEL, "-q", "--overwrite", "-o"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = out.parent().unwrap();
    let stem = out.file_stem().unwrap().to_string_lossy().into_owned();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&stem))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn png_b64(img: &image::RgbImage) -> String {
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .unwrap();
    b64().encode(buf)
}

/// The same parameters through the API and the CLI give the same files, byte for byte (pixels and the A1111
/// `parameters` chunk): txt2img with a batch (image i seeded seed + i), img2img and inpainting, a LoRA tag.
#[test]
fn the_api_equals_the_cli_byte_for_byte() {
    let s = Server::start(&[
        "--lora-dir",
        "examples",
        "--embeddings-dir",
        "examples/embeddings",
    ]);
    let dir = tmp("parity");

    let api = s
        .post("/sdapi/v1/txt2img", &json!({"prompt": "red apple", "negative_prompt": "blurry", "seed": 11,
            "steps": 8, "sampler_name": "Euler a", "cfg_scale": 7, "width": 64, "height": 64, "batch_size": 2}))
        .images();
    let cli_files = cli(
        "txt2img -p 'red apple' --negative-prompt blurry --seed 11 --steps 8 --scheduler 'Euler a' \
         --guidance 7 -W 64 -H 64 --batch-size 2",
        &dir.join("t2i.png"),
    );
    assert_eq!(api.len(), 2);
    assert!(
        api == cli_files,
        "txt2img batch: the API's PNGs differ from the CLI's"
    );

    // DPM++ 2M Karras (the schedule from the name), and a LoRA from --lora-dir.
    let api = s
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "rocket <lora:emoji-pixel-art:0.7>", "seed": 3,
            "steps": 6, "sampler_name": "DPM++ 2M Karras", "width": 64, "height": 64}),
        )
        .images();
    let cli_files = cli(
        "txt2img -p 'rocket <lora:emoji-pixel-art:0.7>' --seed 3 --steps 6 \
         --scheduler 'DPM++ 2M Karras' -W 64 -H 64 --lora-dir examples",
        &dir.join("lora.png"),
    );
    assert!(
        api == cli_files,
        "txt2img with a LoRA: the API's PNG differs from the CLI's"
    );

    // A textual-inversion embedding from --embeddings-dir, named in the prompt (and its `TI hashes`).
    let e = s.get("/sdapi/v1/embeddings").json();
    assert_eq!(e["loaded"]["unicorn-face"]["vectors"], 4, "{e}");
    let r = s.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "unicorn-face", "seed": 2, "steps": 6, "cfg_scale": 3}),
    );
    let api = r.images();
    assert!(
        r.json()["info"].as_str().unwrap().contains("TI hashes"),
        "{}",
        r.text()
    );
    let cli_files = cli(
        "txt2img -p unicorn-face --seed 2 --steps 6 --guidance 3 --embeddings-dir examples/embeddings",
        &dir.join("ti.png"),
    );
    assert!(
        api == cli_files,
        "txt2img with an embedding: the API's PNG differs from the CLI's"
    );

    // img2img from a rendered emoji, and inpainting its right half.
    let init = image::open("docs/emoji/input-red-apple.png")
        .unwrap()
        .to_rgb8();
    init.save(dir.join("init.png")).unwrap();
    let mask = image::RgbImage::from_fn(64, 64, |x, _| {
        image::Rgb(if x >= 32 { [255; 3] } else { [0; 3] })
    });
    mask.save(dir.join("mask.png")).unwrap();
    let api = s
        .post("/sdapi/v1/img2img", &json!({"prompt": "grinning face", "seed": 5, "steps": 10,
            "denoising_strength": 0.6, "init_images": [format!("data:image/png;base64,{}", png_b64(&init))]}))
        .images();
    let cli_files = cli(
        &format!(
            "img2img -p 'grinning face' --seed 5 --steps 10 --strength 0.6 --init-image '{}'",
            dir.join("init.png").display()
        ),
        &dir.join("i2i.png"),
    );
    assert!(
        api == cli_files,
        "img2img: the API's PNG differs from the CLI's"
    );

    // Inpainting its right half, through the API and through the CLI.
    let inpaint = |extra: Value, mask_file: &str, what: &str| {
        let mut body = json!({"prompt": "rocket", "seed": 6, "steps": 10, "mask_blur": 0,
            "init_images": [png_b64(&init)], "mask": png_b64(&mask)});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let api = s.post("/sdapi/v1/img2img", &body).images();
        let line = format!(
            "inpaint -p rocket --seed 6 --steps 10 --init-image '{}' --mask '{}'",
            dir.join("init.png").display(),
            dir.join(mask_file).display()
        );
        let cli_files = cli(&line, &dir.join(format!("out-{mask_file}")));
        assert!(
            api == cli_files,
            "{what}: the API's PNG differs from the CLI's"
        );
    };
    inpaint(json!({"inpainting_fill": 1}), "mask.png", "inpainting");
    // inpainting_mask_invert repaints the other half: the same as the CLI given the inverted mask.
    let mut inverted = mask.clone();
    image::imageops::invert(&mut inverted);
    inverted.save(dir.join("inverted.png")).unwrap();
    inpaint(
        json!({"inpainting_mask_invert": 1}),
        "inverted.png",
        "inpainting_mask_invert",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a response says: A1111's info fields (a JSON string), batch seeds, what was not honoured.
#[test]
fn info_is_a1111s_json_string_and_says_what_was_not_honoured() {
    let s = Server::start(&[]);
    let r = s.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "ghost", "seed": 40, "steps": 2, "width": 64,
        "height": 64, "n_iter": 2, "enable_hr": true, "restore_faces": true, "eta": 1.0,
        "made_up_field": {"x": 1}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
    assert_eq!(v["parameters"]["prompt"], "ghost");
    let info: Value = serde_json::from_str(v["info"].as_str().expect("info is a string")).unwrap();
    assert_eq!(info["all_seeds"], json!([40, 41]));
    assert_eq!(info["sd_model_name"], "sd-emoji");
    assert!(info["infotexts"][1].as_str().unwrap().contains("Seed: 41"));
    for k in ["enable_hr", "restore_faces", "eta"] {
        assert!(
            info["not_honoured"][k].is_string(),
            "{k} not reported: {info}"
        );
    }
    assert!(
        info["not_honoured"].get("made_up_field").is_none(),
        "unknown fields are ignored"
    );
    for k in ["session_run_ms", "outside_session_run_ms", "queue_ms"] {
        assert!(info["timings"][k].is_number(), "{k}");
    }

    // OpenAI's endpoint: b64_json images of the same model.
    let r = s.post(
        "/v1/images/generations",
        &json!({"prompt": "rocket", "n": 2, "size": "64x64", "seed": 1, "steps": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2);
    let png = b64().decode(data[0]["b64_json"].as_str().unwrap()).unwrap();
    assert_eq!(image::load_from_memory(&png).unwrap().width(), 64);
    let r = s.post(
        "/v1/images/generations",
        &json!({"prompt": "x", "response_format": "url"}),
    );
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("b64_json")
    );
}

/// The listings clients probe: samplers with aliases, schedulers, models, options, and empty-but-valid
/// answers for what we do not have.
#[test]
fn listings_have_a1111s_shapes() {
    let s = Server::start(&["--lora-dir", "examples", "--models-dir", "onnx"]);
    let samplers = s.get("/sdapi/v1/samplers").json();
    let euler_a = samplers
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "Euler a")
        .unwrap();
    assert!(
        euler_a["aliases"]
            .as_array()
            .unwrap()
            .contains(&json!("k_euler_a"))
    );
    let schedulers = s.get("/sdapi/v1/schedulers").json();
    let labels: Vec<&str> = schedulers
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["Automatic", "Uniform", "Karras", "Exponential", "Beta"]
    );
    let models = s.get("/sdapi/v1/sd-models").json();
    let names: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "sd-emoji");
    assert!(names.contains(&"sd-tiny-optimum"), "{names:?}");
    // The loaded model's hashes: SHA-256 of its UNet file (this one has no external data), short = 10 digits.
    use sha2::Digest;
    let unet = std::fs::read(Path::new(MODEL).join("unet/model.onnx")).unwrap();
    let sha256: String = sha2::Sha256::digest(&unet)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(models[0]["sha256"], sha256.as_str());
    assert_eq!(models[0]["hash"], &sha256[..10]);
    assert_eq!(
        s.get("/sdapi/v1/options").json()["sd_checkpoint_hash"],
        sha256.as_str()
    );
    assert_eq!(
        names.iter().filter(|n| **n == "sd-emoji").count(),
        1,
        "--model inside --models-dir is listed once"
    );
    let loras = s.get("/sdapi/v1/loras").json();
    assert_eq!(loras[0]["name"], "emoji-pixel-art");
    assert_eq!(
        s.get("/sdapi/v1/options").json()["sd_model_checkpoint"],
        "sd-emoji"
    );
    assert_eq!(
        s.get("/sdapi/v1/scripts").json(),
        json!({"txt2img": [], "img2img": []})
    );
    for p in ["upscalers", "latent-upscale-modes", "sd-vae", "sd-modules"] {
        let r = s.get(&format!("/sdapi/v1/{p}"));
        assert_eq!((r.status, r.json()), (200, json!([])), "{p}");
    }
    let e = s.get("/sdapi/v1/embeddings").json();
    assert_eq!(e, json!({"loaded": {}, "skipped": {}}));
    for p in ["refresh-checkpoints", "refresh-loras", "refresh-embeddings"] {
        assert_eq!(
            s.post(&format!("/sdapi/v1/{p}"), &json!({})).status,
            200,
            "{p}"
        );
    }

    // sd_model_checkpoint switches models (waits for the load), and the next image is the other model's.
    let r = s.post(
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": "sd-tiny-optimum"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.get("/sdapi/v1/options").json()["sd_model_checkpoint"],
        "sd-tiny-optimum"
    );
    let r = s.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "x", "steps": 2, "seed": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let info: Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "sd-tiny-optimum");
    // A name the server did not list never reaches the file system.
    for name in ["../onnx/sd-emoji", "/etc", "sd-emoji/../sd-tiny-optimum"] {
        let r = s.post("/sdapi/v1/options", &json!({"sd_model_checkpoint": name}));
        assert_eq!(r.status, 404, "{name}: {}", r.text());
    }
    let r = s.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "<lora:../examples/emoji-pixel-art:1>", "steps": 1}),
    );
    assert_eq!(r.status, 422, "{}", r.text());
}

/// Bad requests get A1111-style JSON errors with 4xx codes, and the server answers the next request.
#[test]
fn bad_requests_get_4xx_and_never_take_the_server_down() {
    let s = Server::start(&[
        "--max-body-mb",
        "1",
        "--max-steps",
        "40",
        "--max-images",
        "4",
    ]);
    let junk_png = b64().encode(b"\x89PNG\r\n\x1a\nnot really");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("txt2img", b"{not json".to_vec(), 400, "not JSON"),
        ("txt2img", b"{\"prompt\": NaN}".to_vec(), 400, "not JSON"),
        (
            "txt2img",
            b"{\"cfg_scale\": 1e999}".to_vec(),
            400,
            "not JSON",
        ),
        ("txt2img", b"[1, 2]".to_vec(), 422, "JSON object"),
        (
            "txt2img",
            br#"{"steps": "many"}"#.to_vec(),
            422,
            "steps: expected an integer",
        ),
        (
            "txt2img",
            br#"{"prompt": 5}"#.to_vec(),
            422,
            "prompt: expected a string",
        ),
        ("txt2img", br#"{"steps": 41}"#.to_vec(), 422, "--max-steps"),
        (
            "txt2img",
            br#"{"steps": 0}"#.to_vec(),
            422,
            "steps: 0 is less than 1",
        ),
        (
            "txt2img",
            br#"{"batch_size": 3, "n_iter": 2}"#.to_vec(),
            422,
            "--max-images",
        ),
        (
            "txt2img",
            br#"{"width": 2048, "height": 2048}"#.to_vec(),
            422,
            "--max-pixels",
        ),
        (
            "txt2img",
            br#"{"width": 63, "height": 64, "steps": 1}"#.to_vec(),
            422,
            "not a positive multiple",
        ),
        ("txt2img", br#"{"seed": -7}"#.to_vec(), 422, "seed"),
        (
            "txt2img",
            br#"{"sampler_name": "Euler z"}"#.to_vec(),
            404,
            "Sampler not found",
        ),
        (
            "txt2img",
            br#"{"scheduler": "wobbly"}"#.to_vec(),
            404,
            "Scheduler not found",
        ),
        (
            "txt2img",
            br#"{"override_settings": {"sd_model_checkpoint": "nope"}}"#.to_vec(),
            404,
            "not found",
        ),
        ("txt2img", br#"{"prompt": "(unbalanced"}"#.to_vec(), 200, ""),
        (
            "img2img",
            br#"{"prompt": "x"}"#.to_vec(),
            422,
            "init_images",
        ),
        (
            "img2img",
            br#"{"init_images": ["@@@"]}"#.to_vec(),
            422,
            "not valid base64",
        ),
        (
            "img2img",
            format!(r#"{{"init_images": ["{junk_png}"]}}"#).into_bytes(),
            422,
            "cannot be decoded",
        ),
        (
            "img2img",
            format!(r#"{{"init_images": ["{junk_png}"], "denoising_strength": 2}}"#).into_bytes(),
            422,
            "denoising_strength",
        ),
        (
            "options",
            br#"{"sd_model_checkpoint": 3}"#.to_vec(),
            422,
            "expected a string",
        ),
        (
            "options",
            br#"{"CLIP_stop_at_last_layers": 99}"#.to_vec(),
            422,
            "CLIP_stop_at_last_layers",
        ),
    ];
    for (endpoint, body, status, says) in &cases {
        let body: Vec<u8> = if *status == 200 {
            // A prompt A1111 parses leniently still runs (tiny and fast).
            br#"{"prompt": "(unbalanced", "steps": 1, "width": 64, "height": 64}"#.to_vec()
        } else {
            body.clone()
        };
        let r = s.request(
            "POST",
            &format!("/sdapi/v1/{endpoint}"),
            &[("Content-Type", "application/json")],
            &body,
        );
        assert_eq!(
            r.status,
            *status,
            "{endpoint} {}: {}",
            String::from_utf8_lossy(&body),
            r.text()
        );
        if *status != 200 {
            let e = r.json();
            assert!(
                e["detail"].as_str().unwrap().contains(says),
                "{endpoint}: {e}"
            );
            assert!(
                e["error"].is_string() && e["errors"].is_string(),
                "A1111's error shape: {e}"
            );
        }
        assert_eq!(
            s.get("/sdapi/v1/progress").status,
            200,
            "the server went down after {endpoint}"
        );
    }
    // Over the body limit: 413, before the body is read whole.
    let big = vec![b' '; 2 << 20];
    let r = s.request(
        "POST",
        "/sdapi/v1/txt2img",
        &[("Content-Type", "application/json")],
        &big,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // Unknown paths: A1111's 404 shape.
    let r = s.get("/sdapi/v1/nothing-here");
    assert_eq!(
        (r.status, r.json()["detail"].clone()),
        (404, json!("Not Found"))
    );
    // Still serving.
    assert_eq!(
        s.post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "rocket", "steps": 1})
        )
        .images()
        .len(),
        1
    );
}

/// `--api-auth`: every endpoint answers 401 (with `WWW-Authenticate`) without the credentials or with wrong
/// ones, and works with them.
#[test]
fn auth_guards_every_endpoint() {
    let s = Server::start(&["--api-auth", "alice:s3cret,bob:hunter2"]);
    let good = format!("Basic {}", b64().encode("bob:hunter2"));
    let bad = format!("Basic {}", b64().encode("bob:hunter3"));
    let endpoints = [
        ("GET", "/sdapi/v1/sd-models"),
        ("GET", "/sdapi/v1/options"),
        ("POST", "/sdapi/v1/options"),
        ("GET", "/sdapi/v1/samplers"),
        ("GET", "/sdapi/v1/schedulers"),
        ("GET", "/sdapi/v1/progress"),
        ("POST", "/sdapi/v1/interrupt"),
        ("GET", "/sdapi/v1/loras"),
        ("GET", "/sdapi/v1/embeddings"),
        ("POST", "/sdapi/v1/refresh-checkpoints"),
        ("GET", "/sdapi/v1/scripts"),
        ("GET", "/sdapi/v1/upscalers"),
        ("POST", "/sdapi/v1/txt2img"),
        ("POST", "/sdapi/v1/img2img"),
        ("POST", "/v1/images/generations"),
        ("GET", "/sdapi/v1/not-an-endpoint"),
    ];
    for (method, path) in endpoints {
        for auth in [None, Some(bad.as_str()), Some("Bearer x"), Some("Basic !!")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            let r = s.request(method, path, &headers, b"{}");
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}");
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|h| h.starts_with("Basic")),
                "{method} {path}"
            );
        }
    }
    let r = s.request("GET", "/sdapi/v1/options", &[("Authorization", &good)], b"");
    assert_eq!(r.status, 200);
    let r = s.request(
        "POST",
        "/sdapi/v1/txt2img",
        &[("Authorization", &good)],
        br#"{"prompt": "x", "steps": 1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Binding beyond loopback without --api-auth is warned about.
#[test]
fn an_open_bind_without_auth_is_warned_about() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sd-onnx"))
        .args(["serve", "-m", MODEL, "--listen", "0.0.0.0:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("listening on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.contains("warning: listening on 0.0.0.0:") && seen.contains("without --api-auth"),
        "{seen}"
    );
}

/// N clients at once get their own images: each equals the image the same request gets alone.
#[test]
fn concurrent_clients_get_their_own_images() {
    let s = Server::start(&["--queue", "16"]);
    let prompts = ["red apple", "rocket", "ghost", "grinning face"];
    let body = |i: u64| {
        let prompt = prompts[i as usize % 4];
        json!({"prompt": prompt, "seed": 100 + i, "steps": 4, "width": 64, "height": 64})
    };
    let alone: Vec<Vec<u8>> = (0..8)
        .map(|i| s.post("/sdapi/v1/txt2img", &body(i)).images().remove(0))
        .collect();
    let port = s.port;
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let b = body(i).to_string();
            std::thread::spawn(move || {
                http(port, "POST", "/sdapi/v1/txt2img", &[], b.as_bytes())
                    .images()
                    .remove(0)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert!(
            h.join().unwrap() == alone[i],
            "client {i} got another client's image"
        );
    }
}

/// Poll `/progress` until a job has made a step (a minute at most); returns that answer.
fn wait_for_a_step(s: &Server) -> Value {
    let started = Instant::now();
    loop {
        let p = s.get("/sdapi/v1/progress").json();
        if p["state"]["sampling_step"].as_u64().unwrap_or(0) > 0 {
            return p;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no job made a step: {p}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With the queue full, more requests get 503 and a Retry-After; `/interrupt` stops the running job at its
/// next step (its client gets 409), and the server goes on.
#[test]
fn a_full_queue_answers_503_and_interrupt_stops_the_job() {
    let s = Server::start(&["--queue", "1", "--max-steps", "1000"]);
    let port = s.port;
    let long = json!({"prompt": "rocket", "steps": 900, "width": 64, "height": 64}).to_string();
    let running = {
        let b = long.clone();
        std::thread::spawn(move || http(port, "POST", "/sdapi/v1/txt2img", &[], b.as_bytes()))
    };
    let p = wait_for_a_step(&s);
    assert_eq!(p["state"]["job"], "txt2img");
    assert_eq!(p["state"]["sampling_steps"], 900);
    assert!(
        p["progress"].as_f64().unwrap() > 0.0 && p["eta_relative"].as_f64().unwrap() > 0.0,
        "{p}"
    );
    let queued = {
        let b = long.clone();
        std::thread::spawn(move || http(port, "POST", "/sdapi/v1/txt2img", &[], b.as_bytes()))
    };
    let started = Instant::now();
    while s.get("/sdapi/v1/progress").json()["state"]["queued"] != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the second job was not queued"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = s.post("/sdapi/v1/txt2img", &json!({"prompt": "x", "steps": 1}));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "{}", r.head);
    // Interrupt the running job, then the queued one when it runs.
    let p = s.get("/sdapi/v1/progress").json();
    let step_then = p["state"]["sampling_step"].as_u64().unwrap();
    assert_eq!(s.post("/sdapi/v1/interrupt", &json!({})).status, 200);
    let r = running.join().unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["detail"].as_str().unwrap().contains("interrupted"));
    assert!(step_then < 900);
    wait_for_a_step(&s);
    assert_eq!(s.post("/sdapi/v1/interrupt", &json!({})).status, 200);
    assert_eq!(queued.join().unwrap().status, 409);
    assert_eq!(
        s.post("/sdapi/v1/txt2img", &json!({"prompt": "x", "steps": 1}))
            .images()
            .len(),
        1
    );
}

/// A client that hangs up does not leave its job running: the running one stops at its next step, a queued
/// one is dropped before it starts, and the next client is served at once.
#[test]
fn a_client_that_hangs_up_cancels_its_job() {
    let s = Server::start(&["--max-steps", "1000"]);
    let long = json!({"prompt": "rocket", "steps": 900}).to_string();
    let send = |body: &str| {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        let head = format!(
            "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(body.as_bytes()).unwrap();
        c
    };
    let running = send(&long);
    wait_for_a_step(&s);
    let queued = send(&long);
    let started = Instant::now();
    while s.get("/sdapi/v1/progress").json()["state"]["queued"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(30), "not queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(queued);
    drop(running);
    // 900 steps take minutes here; both jobs must be gone within seconds.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let p = s.get("/sdapi/v1/progress").json();
        let log = s.log.lock().unwrap().clone();
        if p["state"]["job"] == ""
            && p["state"]["queued"] == 0
            && log.contains("went away during its job")
            && log.contains("went away before its job started")
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the jobs ran on after their clients left: {p}\n{}",
            s.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        s.post("/sdapi/v1/txt2img", &json!({"prompt": "x", "steps": 1}))
            .images()
            .len(),
        1
    );
}

/// SIGTERM during a job: new connections are refused, the running job's client gets an answer (not a hang),
/// and the process exits 0 within seconds.
#[test]
fn sigterm_stops_the_server_within_seconds() {
    let mut s = Server::start(&["--max-steps", "1000"]);
    let port = s.port;
    let running = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/sdapi/v1/txt2img",
            &[],
            br#"{"prompt": "rocket", "steps": 900}"#,
        )
    });
    wait_for_a_step(&s);
    let killed = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let r = running.join().unwrap();
    assert!(
        r.status == 409 || r.status == 503,
        "{} {}",
        r.status,
        r.text()
    );
    // Generous: the server's own deadline is 10 s after the signal; it normally exits at once.
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < until,
            "still running 30 s after SIGTERM:\n{}",
            s.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", s.log.lock().unwrap());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still accepting"
    );
}

/// RSS after 20 and after 300 requests: it does not keep growing (sessions and buffers are reused).
#[test]
fn memory_is_stable_over_hundreds_of_requests() {
    let s = Server::start(&[]);
    let mut after_20 = 0;
    for i in 0..300u64 {
        let prompt = ["red apple", "rocket <lora:x:1>", "ghost"][(i % 3) as usize];
        let r = s.post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": prompt, "seed": i, "steps": 1, "width": 64,
            "height": 64}),
        );
        // Every third one names a LoRA the server has not: an error each time, which must not leak either.
        assert_eq!(r.status, if i % 3 == 1 { 422 } else { 200 }, "{}", r.text());
        if i + 1 == 20 {
            after_20 = s.rss_kib();
        }
    }
    let after_300 = s.rss_kib();
    eprintln!(
        "RSS after 20 requests {} MiB, after 300 {} MiB",
        after_20 / 1024,
        after_300 / 1024
    );
    assert!(
        after_300 < after_20 + after_20 / 10 + 16 * 1024,
        "RSS grew from {after_20} KiB after 20 requests to {after_300} KiB after 300"
    );
}

/// The `webuiapi` package (PyPI), as people drive A1111 from Python: tests/clients/webuiapi_check.py runs
/// txt2img, img2img, inpainting, options and listings; its txt2img PNG equals the CLI's.
#[test]
fn webuiapi_drives_the_server() {
    let python = Path::new(".venv/bin/python");
    let has = Command::new(python)
        .args(["-c", "import webuiapi"])
        .status();
    assert!(
        has.is_ok_and(|s| s.success()),
        "the webuiapi package is not in .venv (scripts/setup installs it)"
    );
    let s = Server::start(&["--api-auth", "user:pass"]);
    let dir = tmp("webuiapi");
    let o = Command::new(python)
        .args(["tests/clients/webuiapi_check.py", &s.port.to_string()])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        s.log.lock().unwrap()
    );
    let cli_files = cli(
        "txt2img -p 'red apple' --seed 1 --steps 8 --scheduler 'Euler a' --guidance 7 -W 64 -H 64",
        &dir.join("cli.png"),
    );
    let api = std::fs::read(dir.join("webuiapi-txt2img.png")).unwrap();
    assert!(
        api == cli_files[0],
        "webuiapi's txt2img differs from the CLI's"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
