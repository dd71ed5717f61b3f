//! A1111's "infotext": the generation parameters PNG Info shows and "Send to txt2img" pastes. [`write()`] follows
//! A1111's `processing.create_infotext` (prompt, `Negative prompt:` line, one line of `Key: value` pairs, values
//! quoted by its `quote`); [`parse`] ports its `infotext_utils.parse_generation_parameters` (the regular
//! expression, `unquote`, the `Size-1`/`Size-2` split), so a test can read what we write exactly as A1111 does,
//! and a server can read what A1111 writes.
//!
//! What is written, and what A1111 makes of it:
//! * `Sampler`: A1111's name where A1111 has the sampler (`DPM++ 2M`, `Euler a`, `PLMS`, ...), else the diffusers
//!   class (`DDPMScheduler`, `DEISMultistepScheduler`), which `--scheduler` also takes.
//! * `Schedule type`: always explicit for schedulers with a sigma schedule (A1111's missing or `Automatic` means
//!   each sampler's own default, Karras for DPM++ 2M); omitted for PNDM, DDIM, DDPM and LCM, which have none.
//! * `RNG`: `CPU` for torch's CPU generator, `NV` for the CUDA Philox generator; numpy's `RandomState`, which A1111
//!   has not, is `sd-onnx RNG: numpy` (a key A1111 ignores).
//! * `Model hash`: the first 10 hex digits of the SHA-256 of the UNet's graph file and its external data files
//!   (see [`crate::model_hash`]); A1111 hashes its single checkpoint file, so the two never coincide, but ours
//!   names the weights just as exactly.
//! * `Version`: `sd-onnx X.Y.Z`, which A1111's version parser ignores (a `v1.x` would switch on its
//!   compatibility options).
//! * `Batch size` / `Batch pos` for batches of more than one, as A1111 writes them.
//! * `Clip skip` above 1, and `Emphasis` when it is not A1111's default and a prompt has brackets, as A1111
//!   writes them; plain (diffusers') prompt syntax, which A1111 has not, is `sd-onnx prompt syntax: plain`.
//!   The prompts are written as typed, syntax and all; `TI hashes` names the embeddings they used, as A1111
//!   writes it (civitai reads it).

use crate::pipeline::{BatchSeeds, Request};
use crate::profile::ModelProfile;
use crate::prompt::{Emphasis, PromptSyntax};
use crate::rng::RngKind;
use crate::schedulers::{SchedulerKind, SigmaSpacing};

/// A1111's `re_param`: `key: value` pairs, the value either JSON-quoted or up to the next comma.
const RE_PARAM: &str = r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#;

/// The name written as `Sampler`: A1111's where it has the sampler, else the diffusers class.
pub fn sampler_name(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::Pndm => "PLMS",
        SchedulerKind::Ddim => "DDIM",
        SchedulerKind::Euler => "Euler",
        SchedulerKind::EulerAncestral => "Euler a",
        SchedulerKind::DpmPp2m => "DPM++ 2M",
        SchedulerKind::Lms => "LMS",
        SchedulerKind::Heun => "Heun",
        SchedulerKind::DpmPp2mSde => "DPM++ 2M SDE",
        SchedulerKind::UniPc => "UniPC",
        SchedulerKind::Kdpm2 => "DPM2",
        SchedulerKind::Kdpm2Ancestral => "DPM2 a",
        SchedulerKind::Lcm => "LCM",
        SchedulerKind::Ddpm | SchedulerKind::Deis => kind.class_name(),
    }
}

/// A1111's `quote`: values holding `,`, `:` or a newline are written as JSON strings (non-ASCII kept).
pub fn quote(value: &str) -> String {
    if value.contains([',', ':', '\n']) {
        serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
    } else {
        value.to_string()
    }
}

/// A1111's `unquote`: a JSON string's value, anything else as it is.
pub fn unquote(value: &str) -> String {
    if value.len() < 2 || !value.starts_with('"') || !value.ends_with('"') {
        return value.to_string();
    }
    serde_json::from_str::<String>(value).unwrap_or_else(|_| value.to_string())
}

/// What one image's infotext says beyond the request.
#[derive(Clone, Debug)]
pub struct ImageInfo<'a> {
    /// This image's seed.
    pub seed: u64,
    /// Its position in its batch.
    pub batch_pos: usize,
    /// The model's name (its folder's).
    pub model: &'a str,
    /// [`crate::model_hash::unet_hash`]'s value, if computed.
    pub model_hash: Option<&'a str>,
    /// The sigma schedule the run used (`None` for schedulers without one); see
    /// [`Request::effective_schedule`].
    pub schedule: Option<SigmaSpacing>,
    /// A1111's `TI hashes` of the embeddings the prompts used ([`crate::model_hash::ti_hashes`]).
    pub ti_hashes: Option<&'a str>,
    /// A1111's `Lora hashes` of the LoRAs merged ([`crate::lora::hashes`]).
    pub lora_hashes: Option<&'a str>,
}

/// The infotext of image `batch_pos` (seeded `seed`) of `req` on `profile`'s model, with the model hash if
/// one was computed.
pub fn for_image(
    req: &Request,
    profile: &ModelProfile,
    seed: u64,
    batch_pos: usize,
    model_hash: Option<&str>,
    ti_hashes: Option<&str>,
    lora_hashes: Option<&str>,
) -> String {
    let model = profile.name();
    write(
        req,
        &ImageInfo {
            seed,
            batch_pos,
            model: &model,
            model_hash,
            schedule: req.effective_schedule(profile),
            ti_hashes,
            lora_hashes,
        },
    )
}

/// The infotext of every image a run of `req` on `pipeline` makes, in order (batch after batch), as the CLI and
/// the server write them: the model hash given, the `TI hashes` of the embeddings the prompts use and the
/// `Lora hashes` of the LoRAs the pipeline has merged.
pub fn for_run(
    pipeline: &crate::pipeline::Pipeline,
    req: &Request,
    model_hash: Option<&str>,
) -> crate::Result<Vec<String>> {
    let lora_hashes = crate::lora::hashes(pipeline.loras());
    let ti_hashes = crate::model_hash::ti_hashes(&pipeline.used_embeddings(req)?)?;
    Ok((0..req.batch_count)
        .flat_map(|b| req.seeds(b).into_iter().enumerate())
        .map(|(pos, seed)| {
            for_image(
                req,
                &pipeline.profile,
                seed,
                pos,
                model_hash,
                ti_hashes.as_deref(),
                lora_hashes.as_deref(),
            )
        })
        .collect())
}

/// The infotext of one image of `req`.
pub fn write(req: &Request, image: &ImageInfo) -> String {
    let mut params: Vec<(&str, String)> = vec![
        ("Steps", req.steps.to_string()),
        ("Sampler", sampler_name(req.scheduler).to_string()),
    ];
    if let Some(s) = image.schedule {
        params.push(("Schedule type", s.a1111_name().to_string()));
    }
    params.push(("CFG scale", req.guidance.to_string()));
    params.push(("Seed", image.seed.to_string()));
    if req.text.clip_skip > 1 {
        params.push(("Clip skip", req.text.clip_skip.to_string()));
    }
    params.push(("Size", format!("{}x{}", req.width, req.height)));
    if let Some(h) = image.model_hash {
        params.push(("Model hash", h.to_string()));
    }
    params.push(("Model", image.model.to_string()));
    if req.batch > 1 {
        params.push(("Batch size", req.batch.to_string()));
        params.push(("Batch pos", image.batch_pos.to_string()));
        if req.seeds == BatchSeeds::Shared {
            params.push(("Batch generator", "shared".to_string()));
        }
    }
    if let Some(init) = &req.init {
        params.push(("Denoising strength", init.strength.to_string()));
    }
    if req.guidance_rescale > 0.0 {
        params.push(("CFG Rescale", req.guidance_rescale.to_string()));
    }
    if let Some(h) = image.lora_hashes {
        params.push(("Lora hashes", h.to_string()));
    }
    if let Some(h) = image.ti_hashes {
        params.push(("TI hashes", h.to_string()));
    }
    let bracketed = |t: &str| t.contains(['(', '[']);
    match req.text.syntax {
        PromptSyntax::Plain => params.push(("sd-onnx prompt syntax", "plain".to_string())),
        PromptSyntax::A1111
            if req.text.emphasis != Emphasis::Original
                && (bracketed(&req.prompt)
                    || req.negative_prompt.as_deref().is_some_and(bracketed)) =>
        {
            params.push(("Emphasis", req.text.emphasis.a1111_name().to_string()));
        }
        PromptSyntax::A1111 => {}
    }
    match req.rng {
        RngKind::Torch => params.push(("RNG", "CPU".to_string())),
        RngKind::Philox => params.push(("RNG", "NV".to_string())),
        RngKind::Numpy => params.push(("sd-onnx RNG", "numpy".to_string())),
    }
    params.push(("Version", format!("sd-onnx {}", env!("CARGO_PKG_VERSION"))));
    let line: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}: {}", quote(v)))
        .collect();
    let negative = match req.negative_prompt.as_deref() {
        Some(n) if !n.is_empty() => format!("\nNegative prompt: {n}"),
        _ => String::new(),
    };
    format!("{}{negative}\n{}", req.prompt, line.join(", "))
        .trim()
        .to_string()
}

/// An infotext read back as A1111 reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    /// The prompt (lines before `Negative prompt:`).
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: String,
    /// The `Key: value` pairs in order, values unquoted; `Size` split into `Size-1` and `Size-2` as A1111 does.
    pub params: Vec<(String, String)>,
}

impl Parsed {
    /// The value of `key` (the last one, as a Python dict keeps).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A1111's `parse_generation_parameters`, without the UI's defaults for absent keys.
pub fn parse(text: &str) -> Parsed {
    // The expression is a constant: it compiles.
    let Ok(re) = regex::Regex::new(RE_PARAM) else {
        return Parsed::default();
    };
    let mut lines: Vec<&str> = text.trim().split('\n').collect();
    let mut last = lines.pop().unwrap_or("");
    if re.captures_iter(last).count() < 3 {
        lines.push(last);
        last = "";
    }
    let mut out = Parsed::default();
    let mut negative = false;
    for line in lines {
        let mut line = line.trim();
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            negative = true;
            line = rest.trim();
        }
        let target = if negative {
            &mut out.negative_prompt
        } else {
            &mut out.prompt
        };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    for c in re.captures_iter(last) {
        let (k, v) = (&c[1], &c[2]);
        // Python's v[0] raises on an empty value and A1111 skips the pair.
        if v.is_empty() {
            continue;
        }
        let v = if v.starts_with('"') && v.ends_with('"') {
            unquote(v)
        } else {
            v.to_string()
        };
        match size(&v) {
            Some((w, h)) => {
                out.params.push((format!("{k}-1"), w.to_string()));
                out.params.push((format!("{k}-2"), h.to_string()));
            }
            None => out.params.push((k.to_string(), v)),
        }
    }
    out
}

/// A1111's `re_imagesize`: `^(\d+)x(\d+)$`.
fn size(v: &str) -> Option<(&str, &str)> {
    let (w, h) = v.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(w) && digits(h)).then_some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_follows_a1111() {
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("dream, v2: fp16"), r#""dream, v2: fp16""#);
        assert_eq!(quote("a\nb \"c\" é"), r#""a\nb \"c\" é""#);
        for v in ["plain", "dream, v2: fp16", "a\nb \"c\" é", "\\ back, slash"] {
            assert_eq!(unquote(&quote(v)), v);
        }
    }

    fn request(kind: SchedulerKind, schedule: Option<SigmaSpacing>, rng: RngKind) -> Request {
        Request {
            prompt: "a cat, sitting: on a mat\nsecond line".into(),
            negative_prompt: Some("blurry, low: quality".into()),
            steps: 20,
            guidance: 7.5,
            guidance_rescale: 0.0,
            scheduler: kind,
            schedule,
            seed: 42,
            seeds: BatchSeeds::Consecutive,
            rng,
            width: 512,
            height: 768,
            batch: 2,
            batch_count: 1,
            init: None,
            text: Default::default(),
            prompt_embeds: None,
        }
    }

    /// Everything we write reads back through A1111's parser as what was run: every scheduler with every
    /// schedule it has, every generator, a model name with `,` and `:`, prompts with commas, colons and lines;
    /// and the sampler and schedule names read back are names `--scheduler` and `--schedule` take.
    #[test]
    fn what_we_write_a1111_reads_back_exactly() {
        for (kind, _, _) in SchedulerKind::all() {
            let schedules: Vec<Option<SigmaSpacing>> = if kind.schedules().is_empty() {
                vec![None]
            } else {
                kind.schedules().iter().map(|&s| Some(s)).collect()
            };
            for schedule in schedules {
                for rng in [RngKind::Torch, RngKind::Numpy, RngKind::Philox] {
                    let req = request(kind, schedule, rng);
                    let info = ImageInfo {
                        seed: 43,
                        batch_pos: 1,
                        model: "dream, v2: fp16",
                        model_hash: Some("0123456789"),
                        schedule,
                        ti_hashes: None,
                        lora_hashes: None,
                    };
                    let p = parse(&write(&req, &info));
                    let what = format!("{kind:?} {schedule:?} {rng:?}");
                    assert_eq!(p.prompt, req.prompt, "{what}");
                    assert_eq!(
                        Some(p.negative_prompt.as_str()),
                        req.negative_prompt.as_deref()
                    );
                    let sampler = p.get("Sampler").unwrap();
                    assert_eq!(
                        SchedulerKind::parse_name(sampler).ok(),
                        Some((kind, None)),
                        "{what}"
                    );
                    // Written explicitly (A1111's missing = "Automatic" = each sampler's own default).
                    assert_eq!(
                        p.get("Schedule type").map(SigmaSpacing::parse),
                        schedule.map(Some)
                    );
                    assert_eq!(p.get("Model"), Some("dream, v2: fp16"), "{what}");
                    assert_eq!(p.get("Model hash"), Some("0123456789"));
                    assert_eq!(p.get("Seed"), Some("43"));
                    assert_eq!(
                        (p.get("Size-1"), p.get("Size-2")),
                        (Some("512"), Some("768"))
                    );
                    assert_eq!(
                        (p.get("Batch size"), p.get("Batch pos")),
                        (Some("2"), Some("1"))
                    );
                    assert_eq!(p.get("Steps"), Some("20"));
                    assert_eq!(p.get("CFG scale"), Some("7.5"));
                    let rng_back = match (p.get("RNG"), p.get("sd-onnx RNG")) {
                        (Some("CPU"), None) => RngKind::Torch,
                        (Some("NV"), None) => RngKind::Philox,
                        (None, Some("numpy")) => RngKind::Numpy,
                        other => panic!("{what}: RNG {other:?}"),
                    };
                    assert_eq!(rng_back, rng);
                    assert!(p.get("Version").unwrap().starts_with("sd-onnx "));
                    // A1111's sampler list: where it has ours, the name is its own.
                    let a1111 = [
                        "DPM++ 2M",
                        "DPM++ 2M SDE",
                        "Euler a",
                        "Euler",
                        "LMS",
                        "Heun",
                        "DPM2",
                        "DPM2 a",
                        "DDIM",
                        "PLMS",
                        "UniPC",
                        "LCM",
                    ];
                    if !matches!(kind, SchedulerKind::Ddpm | SchedulerKind::Deis) {
                        assert!(a1111.contains(&sampler), "{sampler}");
                    }
                }
            }
        }
    }

    /// Clip skip, emphasis and syntax as A1111 writes them, and prompts kept as typed.
    #[test]
    fn text_options_are_written_as_a1111_writes_them() {
        use crate::prompt::TextOptions;
        let info = ImageInfo {
            seed: 1,
            batch_pos: 0,
            model: "m",
            model_hash: None,
            schedule: None,
            ti_hashes: Some("tiny-style: 0123456789ab, glow: ba9876543210"),
            lora_hashes: Some("style: 0123456789ab, locon: ba9876543210"),
        };
        let mut req = request(SchedulerKind::Euler, None, RngKind::Torch);
        req.prompt = "a (red:1.3) cube BREAK \\(x\\)".into();
        let p = parse(&write(&req, &info));
        assert_eq!(p.prompt, req.prompt);
        assert_eq!((p.get("Clip skip"), p.get("Emphasis")), (None, None));
        assert_eq!(p.get("TI hashes"), info.ti_hashes);
        assert_eq!(p.get("Lora hashes"), info.lora_hashes);
        req.text = TextOptions {
            clip_skip: 2,
            emphasis: Emphasis::NoNorm,
            ..TextOptions::default()
        };
        let p = parse(&write(&req, &info));
        assert_eq!(
            (p.get("Clip skip"), p.get("Emphasis")),
            (Some("2"), Some("No norm"))
        );
        req.text.syntax = PromptSyntax::Plain;
        let p = parse(&write(&req, &info));
        assert_eq!(p.get("sd-onnx prompt syntax"), Some("plain"));
        assert_eq!(p.get("Emphasis"), None);
    }

    #[test]
    fn parse_reads_a1111s_own_example() {
        let text = "girl with an artist's beret, determined, blue eyes\nNegative prompt: ugly, fat\n\
                    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x768, Model hash: 45dee52b";
        let p = parse(text);
        assert_eq!(
            p.prompt,
            "girl with an artist's beret, determined, blue eyes"
        );
        assert_eq!(p.negative_prompt, "ugly, fat");
        assert_eq!(p.get("Sampler"), Some("Euler a"));
        assert_eq!(p.get("Size-1"), Some("512"));
        assert_eq!(p.get("Size-2"), Some("768"));
        assert_eq!(p.get("Model hash"), Some("45dee52b"));
        // Fewer than three pairs on the last line: it is part of the prompt.
        let p = parse("a cat\nStyle: x, y");
        assert_eq!(p.prompt, "a cat\nStyle: x, y");
        assert!(p.params.is_empty());
    }
}
