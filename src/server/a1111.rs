//! AUTOMATIC1111's API shapes (its `modules/api/models.py`): a txt2img / img2img request body read into an
//! [`Intent`] plus what we cannot honour, and the `info` string of a response. Defaults are not decided here:
//! a field left out stays `None` and [`crate::pipeline::resolve`] applies the model's, as for the CLI.
//!
//! Fields are read from the JSON by name with their types checked, so that a wrong type is refused naming the
//! field; fields we do not know are ignored (A1111's pydantic models ignore them too), and fields we know but
//! cannot honour (`enable_hr`, `restore_faces`, a `subseed_strength`, ...) are listed in the response's `info`
//! under `not_honoured`, never silently pretended.

use super::{ApiError, Limits};
use crate::images;
use crate::pipeline::{InitIntent, Intent, Request};
use crate::prompt::TextOptions;
use crate::rng::RngKind;
use crate::schedulers::{SchedulerKind, SigmaSpacing};
use serde_json::{Map, Value, json};

/// A generation request as the worker takes it.
#[derive(Debug)]
pub struct Job {
    /// txt2img or img2img (for `/progress`'s `job` and `info`).
    pub kind: &'static str,
    /// What to resolve against the model.
    pub intent: Intent,
    /// `override_settings.sd_model_checkpoint`: the model this request runs on.
    pub model: Option<String>,
    /// Fields asked for that we cannot honour, with why.
    pub not_honoured: Vec<(String, String)>,
    /// `send_images` (default true).
    pub send_images: bool,
    /// `include_init_images` (img2img; default false).
    pub include_init: Option<String>,
}

/// What a request gets from the server's options when it does not override them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Defaults {
    /// `CLIP_stop_at_last_layers`.
    pub clip_skip: usize,
    /// `randn_source`.
    pub rng: RngKind,
}

/// A typed view of a JSON object: each getter checks the field's type and names it when it is wrong.
struct Fields<'a>(&'a Map<String, Value>);

fn type_error(field: &str, want: &str, got: &Value) -> ApiError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    ApiError::unprocessable(format!("{field}: expected {want}, got {kind}"))
}

impl<'a> Fields<'a> {
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn str(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(type_error(k, "a string", v)),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(type_error(k, "true or false", v)),
        }
    }

    /// An integer (pydantic takes `20.0` for an int field; so do we, but not `20.5`).
    fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    return Ok(Some(i));
                }
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                    _ if n.is_u64() => {
                        Err(ApiError::unprocessable(format!("{k}: {n} is too large")))
                    }
                    _ => Err(ApiError::unprocessable(format!(
                        "{k}: expected an integer, got {n}"
                    ))),
                }
            }
            Some(v) => Err(type_error(k, "an integer", v)),
        }
    }

    /// A count or size: an integer from `min` to `max`.
    fn count(&self, k: &str, min: i64, max: u64, why: &str) -> Result<Option<usize>, ApiError> {
        match self.int(k)? {
            None => Ok(None),
            Some(v) if v < min => Err(ApiError::unprocessable(format!(
                "{k}: {v} is less than {min}"
            ))),
            Some(v) if v as u64 > max => Err(ApiError::unprocessable(format!(
                "{k}: {v} is more than this server allows ({max}{why})"
            ))),
            Some(v) => Ok(Some(v as usize)),
        }
    }

    /// A finite number (JSON has no NaN or infinity; serde refuses Python's `NaN` and out-of-range literals).
    fn float(&self, k: &str) -> Result<Option<f64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if f.is_finite() => Ok(Some(f)),
                _ => Err(ApiError::unprocessable(format!(
                    "{k}: {n} is not a finite number"
                ))),
            },
            Some(v) => Err(type_error(k, "a number", v)),
        }
    }

    fn list(&self, k: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(type_error(k, "a list", v)),
        }
    }

    fn object(&self, k: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(v) => Err(type_error(k, "an object", v)),
        }
    }
}

/// A1111's `randn_source` option: `CPU` is torch's CPU generator, `GPU` the CUDA one (Philox, which we
/// reproduce on any device), `NV` A1111's own port of it (the same draws).
pub fn rng_from_option(value: &str) -> Option<RngKind> {
    match value {
        "CPU" => Some(RngKind::Torch),
        "GPU" | "NV" => Some(RngKind::Philox),
        _ => None,
    }
}

/// The `scheduler` field of A1111 1.9+ (the sigma schedule): `Automatic` leaves it to the sampler / folder.
fn schedule_field(value: &str) -> Result<Option<SigmaSpacing>, ApiError> {
    if value.eq_ignore_ascii_case("automatic") {
        return Ok(None);
    }
    SigmaSpacing::parse(&value.to_ascii_lowercase())
        .map(Some)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Scheduler not found: {value} (Automatic, Uniform, Karras, Exponential or Beta)"
            ))
        })
}

/// The base64 of an image, with or without a `data:image/...;base64,` prefix, decoded with the input limits.
fn image_field(field: &'static str, value: &Value) -> Result<image::DynamicImage, ApiError> {
    use base64::Engine;
    let Value::String(s) = value else {
        return Err(type_error(field, "a base64-encoded image", value));
    };
    let data = match s.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => s.as_str(),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::unprocessable(format!("{field}: not valid base64 ({e})")))?;
    images::decode(&bytes, field).map_err(|e| ApiError::unprocessable(e.to_string()))
}

/// The model a request names, without A1111's ` [hash]` suffix of a checkpoint title.
pub fn model_name(title: &str) -> &str {
    match title.rsplit_once(" [") {
        Some((name, rest)) if rest.ends_with(']') => name,
        _ => title,
    }
}

/// Read a txt2img (`img2img = false`) or img2img body. Limits are checked here, before anything is allocated
/// for the request (images are decoded only after the numbers passed).
pub fn parse(
    body: &Value,
    img2img: bool,
    limits: &Limits,
    defaults: &Defaults,
) -> Result<Job, ApiError> {
    let Value::Object(map) = body else {
        return Err(type_error("body", "a JSON object", body));
    };
    let f = Fields(map);
    let mut not_honoured: Vec<(String, String)> = Vec::new();
    let mut refuse =
        |field: &str, why: &str| not_honoured.push((field.to_string(), why.to_string()));

    let prompt = f.str("prompt")?.unwrap_or("").to_string();
    let negative = f.str("negative_prompt")?.filter(|s| !s.is_empty());
    let steps = f.count("steps", 1, limits.max_steps as u64, "; --max-steps")?;
    let width = f.count("width", 1, limits.max_side as u64, "")?;
    let height = f.count("height", 1, limits.max_side as u64, "")?;
    let batch = f.count("batch_size", 1, limits.max_images as u64, "; --max-images")?;
    let batch_count = f.count("n_iter", 1, limits.max_images as u64, "; --max-images")?;
    let images = batch.unwrap_or(1) * batch_count.unwrap_or(1);
    if images > limits.max_images {
        return Err(ApiError::unprocessable(format!(
            "batch_size x n_iter: {images} images is more than this server allows ({}; --max-images)",
            limits.max_images
        )));
    }
    if let (Some(w), Some(h)) = (width, height)
        && w * h > limits.max_pixels
    {
        return Err(ApiError::unprocessable(format!(
            "width x height: {w}x{h} is more than this server allows ({} pixels; --max-pixels)",
            limits.max_pixels
        )));
    }
    let guidance = f.float("cfg_scale")?;
    let seed = match f.int("seed")? {
        None | Some(-1) => None,
        Some(s) if s < 0 => {
            return Err(ApiError::unprocessable(format!(
                "seed: {s} is not a seed (0 or more, or -1 for a random one)"
            )));
        }
        Some(s) => Some(s as u64),
    };
    if f.float("subseed_strength")?.is_some_and(|s| s != 0.0) {
        refuse(
            "subseed_strength",
            "variation seeds are not built; the image is the seed's alone",
        );
    }
    for (k, default) in [("seed_resize_from_w", -1), ("seed_resize_from_h", -1)] {
        if f.int(k)?.is_some_and(|v| v != default && v != 0) {
            refuse(k, "resizing the seed's noise is not built");
        }
    }

    // Sampler: `sampler_name` (or the old `sampler_index`), A1111's names and ours; its "NAME Karras" form
    // and the `scheduler` field both give the schedule.
    let sampler = match f.str("sampler_name")? {
        Some(s) => Some(s),
        None => f.str("sampler_index")?,
    };
    let named = match sampler {
        None => None,
        Some(s) => Some(
            SchedulerKind::parse_name(s)
                .map_err(|_| ApiError::not_found(format!("Sampler not found: {s}")))?,
        ),
    };
    let by_field = match f.str("scheduler")? {
        Some(s) => schedule_field(s)?,
        None => None,
    };
    let schedule = match (named.and_then(|(_, s)| s), by_field) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::unprocessable(format!(
                "sampler_name asks for the {} schedule and scheduler for {}: give one",
                a.name(),
                b.name()
            )));
        }
        (a, b) => a.or(b),
    };

    // Settings a request may override (A1111's `override_settings`).
    let mut text = TextOptions {
        clip_skip: defaults.clip_skip.max(1),
        ..TextOptions::default()
    };
    let mut rng = defaults.rng;
    let mut model = None;
    if let Some(o) = f.object("override_settings")? {
        let o = Fields(o);
        if let Some(n) = o.count("CLIP_stop_at_last_layers", 1, 12, "")? {
            text.clip_skip = n;
        }
        if let Some(r) = o.str("randn_source")? {
            rng = rng_from_option(r).ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "override_settings.randn_source: {r} (CPU, GPU or NV)"
                ))
            })?;
        }
        model = o
            .str("sd_model_checkpoint")?
            .map(|s| model_name(s).to_string());
        for k in o.0.keys() {
            if !matches!(
                k.as_str(),
                "CLIP_stop_at_last_layers" | "randn_source" | "sd_model_checkpoint"
            ) {
                refuse(
                    &format!("override_settings.{k}"),
                    "not an option sd-onnx has",
                );
            }
        }
    }

    // What A1111 does and we do not; reported in `info`, the rest of the request runs.
    if f.bool("enable_hr")? == Some(true) {
        refuse(
            "enable_hr",
            "the high-resolution pass is not built; the image is made at width x height",
        );
    }
    if f.bool("restore_faces")? == Some(true) {
        refuse("restore_faces", "face restoration is not built");
    }
    if f.bool("tiling")? == Some(true) {
        refuse("tiling", "tiling is not built");
    }
    if f.bool("save_images")? == Some(true) {
        refuse(
            "save_images",
            "the server keeps no files; the images are in the response",
        );
    }
    if f.list("styles")?.is_some_and(|s| !s.is_empty()) {
        refuse("styles", "prompt styles are not built");
    }
    if f.str("script_name")?.is_some_and(|s| !s.is_empty()) {
        refuse("script_name", "scripts are not built");
    }
    if f.object("alwayson_scripts")?.is_some_and(|s| !s.is_empty()) {
        refuse("alwayson_scripts", "scripts are not built");
    }
    if f.str("refiner_checkpoint")?.is_some_and(|s| !s.is_empty()) {
        refuse("refiner_checkpoint", "refiners are not built");
    }
    if f.float("eta")?.is_some_and(|e| e != 0.0) {
        refuse(
            "eta",
            "DDIM runs with eta 0 (diffusers' default); ancestral samplers add their own noise",
        );
    }
    for k in ["s_churn", "s_tmin", "s_noise", "s_tmax", "s_min_uncond"] {
        let neutral = if k == "s_noise" { 1.0 } else { 0.0 };
        if f.float(k)?.is_some_and(|v| v != neutral) {
            refuse(k, "sampler noise settings are not built");
        }
    }

    let send_images = f.bool("send_images")?.unwrap_or(true);
    let mut include_init = None;
    let init = if img2img {
        let strength = f.float("denoising_strength")?;
        if let Some(s) = strength
            && !(0.0..=1.0).contains(&s)
        {
            return Err(ApiError::unprocessable(format!(
                "denoising_strength: {s} is not between 0 and 1"
            )));
        }
        let inits = f
            .list("init_images")?
            .filter(|l| !l.is_empty())
            .ok_or_else(|| {
                ApiError::unprocessable("init_images: img2img needs one image (base64)")
            })?;
        if inits.len() > 1 {
            refuse(
                "init_images",
                "only the first image is used (A1111 cycles them through a batch)",
            );
        }
        if f.int("resize_mode")?.is_some_and(|m| m != 0) {
            refuse(
                "resize_mode",
                "images are resized to width x height (A1111's 'Just resize'), as diffusers does",
            );
        }
        let image = image_field("init_images", &inits[0])?;
        if f.bool("include_init_images")? == Some(true) {
            include_init = inits[0].as_str().map(str::to_string);
        }
        let mask = match f.get("mask") {
            None => None,
            Some(m) => {
                let mut mask = image_field("mask", m)?;
                if f.int("inpainting_mask_invert")?.is_some_and(|v| v != 0) {
                    mask.invert();
                }
                let blur = f.count("mask_blur", 0, 64, "")?.unwrap_or(0);
                if blur > 0 {
                    // A1111 blurs the mask (Gaussian, radius mask_blur) before it is used; diffusers' mask
                    // processor then binarises it at 0.5, so the blur rounds the mask's corners, as A1111's does.
                    mask = image::DynamicImage::ImageLuma8(image::imageops::blur(
                        &mask.to_luma8(),
                        blur as f32,
                    ));
                }
                if f.int("inpainting_fill")?.is_some_and(|v| v != 1) {
                    refuse(
                        "inpainting_fill",
                        "the masked part starts from the original image noised (A1111's 'original'), as diffusers' inpainting does",
                    );
                }
                if f.bool("inpaint_full_res")? == Some(true) {
                    refuse(
                        "inpaint_full_res",
                        "the whole picture is inpainted at width x height (A1111's 'Whole picture')",
                    );
                }
                Some((mask, "mask".to_string()))
            }
        };
        Some(InitIntent {
            image,
            image_name: "init_images[0]".into(),
            mask,
            strength,
        })
    } else {
        None
    };
    if let Some(init) = &init {
        // Without a size, img2img runs at the input's: the pixel limit applies to it too.
        let (w, h) = (
            width.unwrap_or(init.image.width() as usize),
            height.unwrap_or(init.image.height() as usize),
        );
        if w * h > limits.max_pixels {
            return Err(ApiError::unprocessable(format!(
                "init_images: {w}x{h} is more than this server allows ({} pixels; --max-pixels): give width and height",
                limits.max_pixels
            )));
        }
    }
    Ok(Job {
        kind: if img2img { "img2img" } else { "txt2img" },
        intent: Intent {
            prompt,
            negative_prompt: negative.map(str::to_string),
            steps,
            guidance: guidance.map(|g| g as f32),
            scheduler: named.map(|(k, _)| k),
            schedule,
            seed,
            rng,
            width,
            height,
            batch,
            batch_count,
            init,
            text,
            ..Intent::default()
        },
        model,
        not_honoured,
        send_images,
        include_init,
    })
}

/// OpenAI's `POST /v1/images/generations` body (`prompt`, `n`, `size`, `response_format`) as a txt2img job.
pub fn parse_openai(body: &Value, limits: &Limits, defaults: &Defaults) -> Result<Job, ApiError> {
    let Value::Object(map) = body else {
        return Err(type_error("body", "a JSON object", body));
    };
    let f = Fields(map);
    let prompt = f
        .str("prompt")?
        .ok_or_else(|| ApiError::unprocessable("prompt: required"))?;
    let n = f.count("n", 1, limits.max_images as u64, "; --max-images")?;
    if let Some(fmt) = f.str("response_format")?
        && fmt != "b64_json"
    {
        return Err(ApiError::unprocessable(format!(
            "response_format: {fmt} (this server returns b64_json only; it keeps no files to link to)"
        )));
    }
    let (width, height) = match f.str("size")? {
        None | Some("auto") => (None, None),
        Some(s) => {
            let parsed = s
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)));
            let (w, h) = parsed.ok_or_else(|| {
                ApiError::unprocessable(format!("size: {s} (WIDTHxHEIGHT, e.g. 512x512)"))
            })?;
            if w * h > limits.max_pixels || w > limits.max_side || h > limits.max_side {
                return Err(ApiError::unprocessable(format!(
                    "size: {s} is more than this server allows ({} pixels; --max-pixels)",
                    limits.max_pixels
                )));
            }
            (Some(w), Some(h))
        }
    };
    let mut body = json!({"prompt": prompt, "batch_size": n.unwrap_or(1)});
    if let (Some(w), Some(h)) = (width, height) {
        body["width"] = json!(w);
        body["height"] = json!(h);
    }
    for k in [
        "negative_prompt",
        "steps",
        "cfg_scale",
        "seed",
        "sampler_name",
    ] {
        if let Some(v) = map.get(k) {
            body[k] = v.clone();
        }
    }
    parse(&body, false, limits, defaults)
}

/// What a finished run says about itself, for [`info`].
pub struct RunFacts<'a> {
    /// txt2img or img2img.
    pub kind: &'a str,
    /// The request as resolved.
    pub req: &'a Request,
    /// The sigma schedule it ran with ([`Request::effective_schedule`]).
    pub schedule: Option<SigmaSpacing>,
    /// Each image's seed.
    pub seeds: &'a [u64],
    /// The model's name and hash.
    pub model: &'a str,
    /// [`crate::model_hash::unet_hash`].
    pub model_hash: &'a str,
    /// Each image's infotext.
    pub infotexts: &'a [String],
}

/// The `info` of a response (an object; the handler adds timings and sends it as a string, as A1111 does):
/// A1111's fields (what `webuiapi` and clients read: seeds, prompts, sizes, `infotexts`), with `not_honoured`
/// and `warnings` added.
pub fn info(run: &RunFacts, not_honoured: &[(String, String)], warnings: &[String]) -> Value {
    let req = run.req;
    let n = run.seeds.len();
    let negative = req.negative_prompt.clone().unwrap_or_default();
    let not_honoured: Map<String, Value> = not_honoured
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut extra = Map::new();
    if let Some(s) = run.schedule {
        extra.insert("Schedule type".into(), json!(s.a1111_name()));
    }
    json!({
        "prompt": req.prompt,
        "all_prompts": vec![&req.prompt; n],
        "negative_prompt": negative,
        "all_negative_prompts": vec![&negative; n],
        "seed": req.seed,
        "all_seeds": run.seeds,
        "subseed": req.seed,
        "all_subseeds": run.seeds,
        "subseed_strength": 0,
        "width": req.width,
        "height": req.height,
        "sampler_name": crate::infotext::sampler_name(req.scheduler),
        "cfg_scale": req.guidance,
        "steps": req.steps,
        "batch_size": req.batch,
        "n_iter": req.batch_count,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": run.model,
        "sd_model_hash": run.model_hash,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": req.init.as_ref().map(|i| i.strength),
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": run.infotexts,
        "styles": [],
        "job_timestamp": super::timestamp(),
        "clip_skip": req.text.clip_skip,
        "is_using_inpainting_conditioning": run.kind == "img2img" && req.init.as_ref().is_some_and(|i| i.mask.is_some()),
        "version": concat!("sd-onnx ", env!("CARGO_PKG_VERSION")),
        "not_honoured": not_honoured,
        "warnings": warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn parse(body: &Value, img2img: bool, limits: &Limits) -> Result<Job, ApiError> {
        super::parse(body, img2img, limits, &Defaults::default())
    }

    fn parse_openai(body: &Value, limits: &Limits) -> Result<Job, ApiError> {
        super::parse_openai(body, limits, &Defaults::default())
    }

    #[test]
    fn a_webuiapi_body_reads_as_the_cli_flags_do() {
        let body = json!({"prompt": "red apple", "negative_prompt": "", "seed": 7, "steps": 8,
            "sampler_name": "DPM++ 2M Karras", "cfg_scale": 6.5, "width": 64, "height": 64,
            "batch_size": 2, "n_iter": 1, "enable_hr": false, "restore_faces": false, "styles": [],
            "override_settings": {"CLIP_stop_at_last_layers": 2}, "unknown_field": [1, 2]});
        let job = parse(&body, false, &limits()).unwrap();
        let i = &job.intent;
        assert_eq!(i.prompt, "red apple");
        assert_eq!(i.negative_prompt, None);
        assert_eq!(
            (i.seed, i.steps, i.width, i.batch),
            (Some(7), Some(8), Some(64), Some(2))
        );
        assert_eq!(i.scheduler, Some(SchedulerKind::DpmPp2m));
        assert_eq!(i.schedule, Some(SigmaSpacing::Karras));
        assert_eq!(i.guidance, Some(6.5));
        assert_eq!(i.text.clip_skip, 2);
        assert!(job.not_honoured.is_empty(), "{:?}", job.not_honoured);
    }

    #[test]
    fn what_cannot_be_honoured_is_reported_not_pretended() {
        let body = json!({"prompt": "x", "enable_hr": true, "restore_faces": true, "subseed_strength": 0.3,
            "styles": ["a"], "override_settings": {"sd_vae": "x"}});
        let job = parse(&body, false, &limits()).unwrap();
        let fields: Vec<&str> = job.not_honoured.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            fields,
            [
                "subseed_strength",
                "override_settings.sd_vae",
                "enable_hr",
                "restore_faces",
                "styles"
            ]
        );
    }

    #[test]
    fn wrong_types_and_limits_are_refused_by_field() {
        let err = |body: Value| parse(&body, false, &limits()).unwrap_err().to_string();
        assert!(err(json!({"steps": "20"})).contains("steps: expected an integer, got a string"));
        assert!(err(json!({"steps": 20.5})).contains("steps: expected an integer"));
        assert!(
            err(json!({"steps": 100000})).contains("steps: 100000 is more than this server allows")
        );
        assert!(err(json!({"batch_size": 8, "n_iter": 8})).contains("64 images"));
        assert!(err(json!({"width": 2048, "height": 2048})).contains("--max-pixels"));
        assert!(err(json!({"seed": -5})).contains("seed: -5"));
        assert!(err(json!({"sampler_name": "Nope"})).contains("Sampler not found"));
        assert!(
            err(json!({"sampler_name": "Euler Karras", "scheduler": "Exponential"}))
                .contains("give one")
        );
        assert!(err(json!([1])).contains("body: expected a JSON object"));
        let e = parse(&json!({"init_images": ["!!!"]}), true, &limits()).unwrap_err();
        assert!(
            e.to_string().contains("init_images: not valid base64"),
            "{e}"
        );
        let e = parse(&json!({"init_images": ["aGVsbG8="]}), true, &limits()).unwrap_err();
        assert!(
            e.to_string().contains("cannot be decoded as an image"),
            "{e}"
        );
        assert_eq!(e.status, axum::http::StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn titles_lose_their_hash() {
        assert_eq!(model_name("sd-emoji [0123456789]"), "sd-emoji");
        assert_eq!(model_name("sd-emoji"), "sd-emoji");
    }

    #[test]
    fn openai_sizes_and_formats() {
        let job = parse_openai(
            &json!({"prompt": "rocket", "n": 2, "size": "64x64"}),
            &limits(),
        )
        .unwrap();
        assert_eq!(
            (job.intent.width, job.intent.height, job.intent.batch),
            (Some(64), Some(64), Some(2))
        );
        let e = parse_openai(&json!({"prompt": "x", "response_format": "url"}), &limits());
        assert!(e.unwrap_err().to_string().contains("b64_json only"));
        let e = parse_openai(&json!({"prompt": "x", "size": "big"}), &limits());
        assert!(e.unwrap_err().to_string().contains("WIDTHxHEIGHT"));
    }
}
