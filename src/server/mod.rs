//! `sd-onnx serve`: AUTOMATIC1111's web API (`/sdapi/v1/*`, the shapes of its `modules/api/models.py`) and
//! OpenAI's `POST /v1/images/generations`, so the clients people already use (Open WebUI, SillyTavern, the
//! `webuiapi` package) can drive a model that stays loaded.
//!
//! Layers, as axum's examples keep them: [`serve`] binds, routes and shuts down; handlers here check auth and
//! size limits, read the body ([`a1111::parse`]: JSON to an [`crate::pipeline::Intent`], limits checked before
//! anything is allocated) and enqueue a job; one inference thread (`worker`) owns the model's
//! [`crate::pipeline::Pipeline`] and resolves every request with [`crate::pipeline::resolve`], as the CLI does,
//! so a request gives the CLI's pixels. The queue is bounded: a full one answers 503 with `Retry-After`.
//!
//! Nothing a client sends becomes a path: models and LoRAs are looked up by name among the files the server
//! listed itself (`--model`, `--models-dir`, `--lora-dir`; the `refresh-*` endpoints list again).

pub mod a1111;
mod worker;

use crate::error::{Error, Result};
use crate::runtime::Runtime;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a request may ask for; refused (422) beyond, before anything is allocated.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most denoising steps.
    pub max_steps: usize,
    /// Most images per request (`batch_size` x `n_iter`).
    pub max_images: usize,
    /// Most pixels per image (width x height, also an img2img input's size when no size is given).
    pub max_pixels: usize,
    /// Longest side.
    pub max_side: usize,
    /// Largest request body in bytes (413 beyond).
    pub max_body: usize,
    /// Jobs waiting beyond the running one (503 beyond).
    pub queue: usize,
}

impl Default for Limits {
    /// What keeps a small machine alive: 150 steps (A1111's slider), 16 images, 1024x1024, 2048 a side, 64 MiB
    /// bodies (a few base64 images), 8 queued jobs.
    fn default() -> Self {
        Limits {
            max_steps: 150,
            max_images: 16,
            max_pixels: 1024 * 1024,
            max_side: 2048,
            max_body: 64 << 20,
            queue: 8,
        }
    }
}

/// How the server runs.
pub struct ServeConfig {
    /// The model loaded first (and listed).
    pub model: PathBuf,
    /// A folder whose model subfolders are listed too (`sd_model_checkpoint` switches between them).
    pub models_dir: Option<PathBuf>,
    /// Where to listen (`127.0.0.1:7860`; port 0 picks one).
    pub listen: String,
    /// `USER:PASS` pairs (A1111's `--api-auth`, comma-separated there); empty: no authentication.
    pub auth: Vec<(String, String)>,
    /// LoRA files for `<lora:NAME:W>` tags.
    pub lora_dir: Option<PathBuf>,
    /// Textual-inversion embeddings, loaded with each model.
    pub embeddings_dir: Option<PathBuf>,
    /// Request limits and the queue's length.
    pub limits: Limits,
    /// Where the server's lines go (`listening on ...`, warnings).
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
    /// Called with the bound address once the server accepts connections.
    pub on_listening: Option<Box<dyn FnOnce(SocketAddr) + Send>>,
}

/// An error as A1111 answers it (its `api_middleware`'s handler): `{"error", "detail", "body", "errors"}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The kind (A1111 sends the exception's class name).
    pub error: &'static str,
    /// What is wrong, one line.
    pub detail: String,
    /// `Retry-After` seconds, for 503.
    pub retry_after: Option<u32>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: String) -> Self {
        ApiError {
            status,
            error,
            detail,
            retry_after: None,
        }
    }
    fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationError",
            detail.into(),
        )
    }
    fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "HTTPException", detail.into())
    }
    fn unavailable(detail: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "HTTPException",
                detail.into(),
            )
        }
    }
    fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "RuntimeError",
            detail.into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": self.error, "detail": self.detail, "body": "", "errors": self.detail});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sd-onnx\""),
            );
        }
        r
    }
}

/// The models the server offers: `--model` and the model folders directly under `--models-dir`, by name.
pub struct Models {
    model: PathBuf,
    models_dir: Option<PathBuf>,
    list: Mutex<Vec<(String, PathBuf)>>,
}

impl Models {
    fn scan(&self) -> Vec<(String, PathBuf)> {
        let name = |p: &Path| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        let mut list = vec![(name(&self.model), self.model.clone())];
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let first = canon(&self.model);
        if let Some(dir) = &self.models_dir
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| worker::is_model_dir(p) && canon(p) != first)
                .collect();
            found.sort();
            for p in found {
                let n = name(&p);
                if !list.iter().any(|(m, _)| *m == n) {
                    list.push((n, p));
                }
            }
        }
        list
    }

    fn refresh(&self) {
        let list = self.scan();
        *lock(&self.list) = list;
    }

    fn names(&self) -> Vec<(String, PathBuf)> {
        lock(&self.list).clone()
    }

    /// The folder of a listed model.
    fn path(&self, name: &str) -> Option<PathBuf> {
        lock(&self.list)
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
    }
}

/// A poisoned lock (a panic elsewhere) still holds usable data: the server keeps answering.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running job, for `/progress`.
#[derive(Clone, Debug, Default)]
struct Running {
    kind: &'static str,
    started: Option<Instant>,
    timestamp: String,
    batch: usize,
    batches: usize,
    step: usize,
    steps: usize,
    interrupted: bool,
}

/// The loaded model, for listings.
#[derive(Default)]
struct CurrentModel {
    name: String,
    /// The UNet's full SHA-256 ([`crate::model_hash::unet_sha256`]); the short hash is its first 10 digits.
    sha256: Option<String>,
    /// Name, vectors, width.
    embeddings: Vec<(String, usize, usize)>,
    /// File, why.
    refused: Vec<(String, String)>,
}

/// What the handlers and the worker share.
pub struct Shared {
    log: Arc<dyn Fn(&str) + Send + Sync>,
    queued: Mutex<usize>,
    running: Mutex<Option<Running>>,
    interrupter: Mutex<Option<Arc<AtomicBool>>>,
    model: Mutex<CurrentModel>,
    /// A1111 options: `sd_model_checkpoint` (the default model), `CLIP_stop_at_last_layers`, `randn_source`.
    options: Mutex<serde_json::Map<String, Value>>,
    loras: Mutex<Vec<PathBuf>>,
    lora_dir: Option<PathBuf>,
    stopping: AtomicBool,
}

impl Shared {
    fn log(&self, line: &str) {
        (self.log)(line)
    }
    fn lock_model(&self) -> MutexGuard<'_, CurrentModel> {
        lock(&self.model)
    }
    fn dequeued(&self) {
        let mut q = lock(&self.queued);
        *q = q.saturating_sub(1);
    }
    fn running(
        &self,
        kind: &'static str,
        batches: usize,
        steps: usize,
        interrupter: Arc<AtomicBool>,
    ) {
        *lock(&self.interrupter) = Some(interrupter);
        *lock(&self.running) = Some(Running {
            kind,
            started: Some(Instant::now()),
            timestamp: timestamp(),
            batches,
            steps,
            ..Running::default()
        });
    }
    fn progress(&self, batch: Option<usize>, step: Option<(usize, usize)>) {
        if let Some(r) = lock(&self.running).as_mut() {
            if let Some(b) = batch {
                r.batch = b;
                r.step = 0;
            }
            if let Some((done, total)) = step {
                r.step = done;
                r.steps = total;
            }
        }
    }
    fn finished(&self) {
        *lock(&self.running) = None;
        *lock(&self.interrupter) = None;
    }
    fn interrupt_requested(&self) -> bool {
        lock(&self.running).as_ref().is_some_and(|r| r.interrupted)
    }
    /// Stop the running job at its next step (A1111's interrupt); nothing when none runs.
    fn interrupt(&self) {
        if let Some(r) = lock(&self.running).as_mut() {
            r.interrupted = true;
        }
        if let Some(i) = lock(&self.interrupter).as_ref() {
            i.store(true, Ordering::Relaxed);
        }
    }
    fn default_model(&self) -> String {
        lock(&self.options)
            .get("sd_model_checkpoint")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }
    fn set_default_model(&self, name: &str) {
        lock(&self.options).insert("sd_model_checkpoint".into(), json!(name));
    }
    fn lora_path(&self, name: &str) -> Option<PathBuf> {
        lock(&self.loras)
            .iter()
            .find(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == name))
            .cloned()
    }
    fn refresh_loras(&self) {
        let list = self
            .lora_dir
            .as_deref()
            .map(crate::lora::list)
            .unwrap_or_default();
        *lock(&self.loras) = list;
    }
    /// The defaults requests take from the options (clip skip, generator).
    fn request_defaults(&self) -> a1111::Defaults {
        let o = lock(&self.options);
        a1111::Defaults {
            clip_skip: o
                .get("CLIP_stop_at_last_layers")
                .and_then(Value::as_u64)
                .map_or(1, |v| v as usize),
            rng: o
                .get("randn_source")
                .and_then(Value::as_str)
                .and_then(a1111::rng_from_option)
                .unwrap_or_default(),
        }
    }
}

/// A1111's `job_timestamp`: UTC `YYYYmmddHHMMSS`.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    models: Arc<Models>,
    queue: std::sync::mpsc::SyncSender<worker::Msg>,
    limits: Limits,
    auth: Arc<Vec<Vec<u8>>>,
}

impl AppState {
    /// Put a message on the queue, or answer 503 when it is full.
    fn enqueue(&self, msg: worker::Msg) -> std::result::Result<(), ApiError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        *lock(&self.shared.queued) += 1;
        self.queue.try_send(msg).map_err(|e| {
            self.shared.dequeued();
            match e {
                std::sync::mpsc::TrySendError::Full(_) => ApiError::unavailable(format!(
                    "the queue is full ({} jobs waiting; --queue): try again shortly",
                    self.limits.queue
                )),
                std::sync::mpsc::TrySendError::Disconnected(_) => {
                    ApiError::unavailable("the server is shutting down")
                }
            }
        })
    }
}

/// HTTP Basic authentication on every endpoint when `--api-auth` is set, compared in constant time.
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.auth.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        });
    let ok = given.is_some_and(|g| {
        use subtle::ConstantTimeEq;
        // Every credential is compared (no early exit on a match).
        state
            .auth
            .iter()
            .fold(subtle::Choice::from(0), |acc, c| {
                acc | c.as_slice().ct_eq(&g)
            })
            .into()
    });
    if ok {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "HTTPException",
            "Incorrect username or password".into(),
        )
        .into_response()
    }
}

/// The body as JSON: 413 beyond `--max-body-mb`, 400 when it is not JSON (NaN and infinities included).
fn json_body(
    body: std::result::Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> std::result::Result<Value, ApiError> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        ApiError::new(
            status,
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                "PayloadTooLarge"
            } else {
                "HTTPException"
            },
            e.body_text(),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "JSONDecodeError",
            format!("the body is not JSON: {e}"),
        )
    })
}

type Body = std::result::Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// Parse on a blocking thread (base64 and image decoding take CPU), enqueue, wait for the worker.
async fn generate(
    state: &AppState,
    body: Body,
    kind: Kind,
) -> std::result::Result<(Value, worker::Output, Instant), ApiError> {
    let received = Instant::now();
    let value = json_body(body)?;
    let limits = state.limits.clone();
    let defaults = state.shared.request_defaults();
    let v = value.clone();
    let job = tokio::task::spawn_blocking(move || match kind {
        Kind::Txt2img => a1111::parse(&v, false, &limits, &defaults),
        Kind::Img2img => a1111::parse(&v, true, &limits, &defaults),
        Kind::OpenAi => a1111::parse_openai(&v, &limits, &defaults),
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    if let Some(m) = &job.model
        && state.models.path(m).is_none()
    {
        return Err(ApiError::not_found(format!(
            "override_settings.sd_model_checkpoint: model {m:?} not found (GET /sdapi/v1/sd-models)"
        )));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.enqueue(worker::Msg::Generate {
        job: Box::new(job),
        queued: Instant::now(),
        reply: tx,
    })?;
    let out = rx
        .await
        .map_err(|_| ApiError::unavailable("the server is shutting down"))??;
    Ok((value, out, received))
}

#[derive(Clone, Copy)]
enum Kind {
    Txt2img,
    Img2img,
    OpenAi,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `info` with the request's timings added (what `bench` reads), as A1111's JSON string.
fn info_string(mut info: Value, out: &worker::Output, received: Instant) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let total = received.elapsed();
    info["timings"] = json!({
        "request_ms": ms(total),
        "queue_ms": ms(out.queue),
        "worker_ms": ms(out.work),
        "session_run_ms": ms(out.session_run),
        "outside_session_run_ms": ms(total.saturating_sub(out.session_run + out.queue)),
    });
    info.to_string()
}

async fn txt2img(State(s): State<AppState>, body: Body) -> Response {
    image_response(&s, body, Kind::Txt2img).await
}

async fn img2img(State(s): State<AppState>, body: Body) -> Response {
    image_response(&s, body, Kind::Img2img).await
}

async fn image_response(s: &AppState, body: Body, kind: Kind) -> Response {
    match generate(s, body, kind).await {
        Err(e) => e.into_response(),
        Ok((mut params, out, received)) => {
            let mut images: Vec<String> = out.images.iter().map(|i| b64(i)).collect();
            if let Some(obj) = params.as_object_mut() {
                if matches!(kind, Kind::Img2img)
                    && obj.get("include_init_images").and_then(Value::as_bool) == Some(true)
                    && let Some(first) = obj
                        .get("init_images")
                        .and_then(|v| v.get(0))
                        .and_then(Value::as_str)
                {
                    images.push(first.to_string());
                }
                // A1111 echoes the request without the (large) input images.
                obj.remove("init_images");
                obj.remove("mask");
            }
            let info = info_string(out.info.clone(), &out, received);
            axum::Json(json!({"images": images, "parameters": params, "info": info}))
                .into_response()
        }
    }
}

/// OpenAI's `POST /v1/images/generations`; errors in OpenAI's shape.
async fn openai_generations(State(s): State<AppState>, body: Body) -> Response {
    match generate(&s, body, Kind::OpenAi).await {
        Ok((_, out, _)) => {
            let created = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let data: Vec<Value> = out
                .images
                .iter()
                .map(|i| json!({"b64_json": b64(i)}))
                .collect();
            axum::Json(json!({"created": created, "data": data})).into_response()
        }
        Err(e) => {
            let body = json!({"error": {"message": e.detail, "type": "invalid_request_error",
                                        "param": null, "code": null}});
            let mut r = (e.status, axum::Json(body)).into_response();
            if let Some(s) = e.retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            r
        }
    }
}

async fn sd_models(State(s): State<AppState>) -> Response {
    let current = s.shared.lock_model();
    let list: Vec<Value> = s
        .models
        .names()
        .iter()
        .map(|(name, path)| {
            // Known for the loaded model; the others are hashed when loaded (A1111 too hashes lazily).
            let sha256 = (current.name == *name).then(|| current.sha256.clone()).flatten();
            json!({"title": name, "model_name": name, "hash": sha256.as_deref().map(|h| &h[..h.len().min(10)]),
                   "sha256": sha256, "filename": path.display().to_string(), "config": null})
        })
        .collect();
    axum::Json(list).into_response()
}

async fn samplers() -> Response {
    let list: Vec<Value> = crate::schedulers::SchedulerKind::all()
        .map(|(kind, name, _)| {
            let mut aliases: Vec<&str> = vec![name];
            aliases.extend(kind.aliases().iter().filter(|a| **a != crate::infotext::sampler_name(kind)));
            let scheduler: Vec<&str> = kind.schedules().iter().map(|s| s.a1111_name()).collect();
            json!({"name": crate::infotext::sampler_name(kind), "aliases": aliases,
                   "options": {"diffusers_class": kind.class_name(), "schedules": scheduler.join(",")}})
        })
        .collect();
    axum::Json(list).into_response()
}

async fn schedulers() -> Response {
    let mut list = vec![
        json!({"name": "automatic", "label": "Automatic", "aliases": null,
                                "default_rho": -1, "need_inner_model": false}),
    ];
    for s in crate::schedulers::SigmaSpacing::ALL {
        list.push(json!({"name": s.name(), "label": s.a1111_name(), "aliases": null,
                         "default_rho": if s == crate::schedulers::SigmaSpacing::Karras { 7.0 } else { -1.0 },
                         "need_inner_model": false}));
    }
    axum::Json(list).into_response()
}

async fn progress(State(s): State<AppState>) -> Response {
    let queued = *lock(&s.shared.queued);
    let r = lock(&s.shared.running).clone();
    let (progress, eta, state) = match &r {
        None => (
            0.0,
            0.0,
            json!({"skipped": false, "interrupted": false, "stopping_generation": false, "job": "",
                   "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0,
                   "sampling_steps": 0, "queued": queued}),
        ),
        Some(r) => {
            let steps = r.steps.max(1) as f64;
            let p = ((r.batch as f64 + r.step as f64 / steps) / r.batches.max(1) as f64).min(1.0);
            let elapsed = r.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            let eta = if p > 0.0 { elapsed / p - elapsed } else { 0.0 };
            (
                p,
                eta,
                json!({"skipped": false, "interrupted": r.interrupted, "stopping_generation": false,
                       "job": r.kind, "job_count": r.batches, "job_timestamp": r.timestamp,
                       "job_no": r.batch, "sampling_step": r.step, "sampling_steps": r.steps,
                       "queued": queued}),
            )
        }
    };
    axum::Json(
        json!({"progress": progress, "eta_relative": eta, "state": state,
                      "current_image": null, "textinfo": null}),
    )
    .into_response()
}

async fn interrupt(State(s): State<AppState>) -> Response {
    s.shared.interrupt();
    axum::Json(json!({})).into_response()
}

async fn get_options(State(s): State<AppState>) -> Response {
    let mut o = lock(&s.shared.options).clone();
    let current = s.shared.lock_model();
    o.insert("sd_checkpoint_hash".into(), json!(current.sha256));
    o.insert("samples_format".into(), json!("png"));
    axum::Json(Value::Object(o)).into_response()
}

/// `POST /sdapi/v1/options`: `sd_model_checkpoint` loads that model (waits, as A1111 does),
/// `CLIP_stop_at_last_layers` and `randn_source` become the requests' defaults; others are not honoured (said).
async fn set_options(State(s): State<AppState>, body: Body) -> Response {
    let value = match json_body(body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let Some(map) = value.as_object() else {
        return ApiError::unprocessable("body: expected a JSON object of options").into_response();
    };
    let mut not_honoured = serde_json::Map::new();
    let mut set = Vec::new();
    for (k, v) in map {
        match k.as_str() {
            "CLIP_stop_at_last_layers" => match v.as_u64().filter(|n| (1..=12).contains(n)) {
                Some(n) => set.push((k.clone(), json!(n))),
                None => {
                    return ApiError::unprocessable(format!("{k}: {v} (an integer from 1 to 12)"))
                        .into_response();
                }
            },
            "randn_source" => match v.as_str().filter(|r| a1111::rng_from_option(r).is_some()) {
                Some(r) => set.push((k.clone(), json!(r))),
                None => {
                    return ApiError::unprocessable(format!("{k}: {v} (CPU, GPU or NV)"))
                        .into_response();
                }
            },
            "sd_model_checkpoint" => {
                let Some(title) = v.as_str() else {
                    return ApiError::unprocessable(format!("{k}: expected a string"))
                        .into_response();
                };
                let name = a1111::model_name(title).to_string();
                if s.models.path(&name).is_none() {
                    return ApiError::not_found(format!(
                        "model {title:?} not found (GET /sdapi/v1/sd-models)"
                    ))
                    .into_response();
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                if let Err(e) = s.enqueue(worker::Msg::Switch { name, reply: tx }) {
                    return e.into_response();
                }
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return e.into_response(),
                    Err(_) => {
                        return ApiError::unavailable("the server is shutting down")
                            .into_response();
                    }
                }
            }
            _ => {
                not_honoured.insert(k.clone(), json!("not an option sd-onnx has"));
            }
        }
    }
    let mut o = lock(&s.shared.options);
    for (k, v) in set {
        o.insert(k, v);
    }
    if not_honoured.is_empty() {
        axum::Json(Value::Null).into_response()
    } else {
        axum::Json(json!({"not_honoured": not_honoured})).into_response()
    }
}

async fn loras(State(s): State<AppState>) -> Response {
    let list: Vec<Value> = lock(&s.shared.loras)
        .iter()
        .map(|p| {
            let name = p
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            json!({"name": name, "alias": name, "path": p.display().to_string(), "metadata": {}})
        })
        .collect();
    axum::Json(list).into_response()
}

async fn embeddings(State(s): State<AppState>) -> Response {
    let m = s.shared.lock_model();
    let loaded: serde_json::Map<String, Value> = m
        .embeddings
        .iter()
        .map(|(name, vectors, width)| {
            (
                name.clone(),
                json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null,
                                  "shape": width, "vectors": vectors}),
            )
        })
        .collect();
    let skipped: serde_json::Map<String, Value> = m
        .refused
        .iter()
        .map(|(file, why)| {
            (
                file.clone(),
                json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null,
                                  "shape": null, "vectors": null, "reason": why}),
            )
        })
        .collect();
    axum::Json(json!({"loaded": loaded, "skipped": skipped})).into_response()
}

async fn refresh_checkpoints(State(s): State<AppState>) -> Response {
    let models = s.models.clone();
    let _ = tokio::task::spawn_blocking(move || models.refresh()).await;
    axum::Json(Value::Null).into_response()
}

async fn refresh_loras(State(s): State<AppState>) -> Response {
    let shared = s.shared.clone();
    let _ = tokio::task::spawn_blocking(move || shared.refresh_loras()).await;
    axum::Json(Value::Null).into_response()
}

async fn refresh_embeddings(State(s): State<AppState>) -> Response {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Err(e) = s.enqueue(worker::Msg::RefreshEmbeddings { reply: tx }) {
        return e.into_response();
    }
    match rx.await {
        Ok(Ok(())) => axum::Json(Value::Null).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::unavailable("the server is shutting down").into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::not_found("Not Found").into_response()
}

fn router(state: AppState) -> Router {
    let empty_list = || get(|| async { axum::Json(json!([])) });
    let v1 = Router::new()
        .route("/txt2img", post(txt2img))
        .route("/img2img", post(img2img))
        .route("/options", get(get_options).post(set_options))
        .route("/sd-models", get(sd_models))
        .route("/samplers", get(samplers))
        .route("/schedulers", get(schedulers))
        .route("/progress", get(progress))
        .route("/interrupt", post(interrupt))
        .route("/skip", post(interrupt))
        .route("/loras", get(loras))
        .route("/embeddings", get(embeddings))
        .route("/refresh-checkpoints", post(refresh_checkpoints))
        .route("/refresh-loras", post(refresh_loras))
        .route("/refresh-embeddings", post(refresh_embeddings))
        // What clients probe and we do not have: empty but valid answers.
        .route(
            "/scripts",
            get(|| async { axum::Json(json!({"txt2img": [], "img2img": []})) }),
        )
        .route("/script-info", empty_list())
        .route("/upscalers", empty_list())
        .route("/latent-upscale-modes", empty_list())
        .route("/sd-vae", empty_list())
        .route("/sd-modules", empty_list())
        .route("/hypernetworks", empty_list())
        .route("/face-restorers", empty_list())
        .route("/realesrgan-models", empty_list())
        .route("/prompt-styles", empty_list())
        .route("/extensions", empty_list())
        .route("/cmd-flags", get(|| async { axum::Json(json!({})) }));
    Router::new()
        .nest("/sdapi/v1", v1)
        .route("/v1/images/generations", post(openai_generations))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(state.limits.max_body))
        .with_state(state)
}

/// Whether `addr` is reachable only from this machine.
fn loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Run the server until SIGTERM or Ctrl-C: load `--model`, bind, serve. On the signal it stops accepting,
/// interrupts the running job (its client gets an error), answers queued ones 503, and returns within
/// seconds (at most 10 after the signal, even if a connection lingers).
pub fn serve(runtime: Runtime, config: ServeConfig) -> Result<()> {
    let models = Arc::new(Models {
        model: config.model.clone(),
        models_dir: config.models_dir.clone(),
        list: Mutex::new(Vec::new()),
    });
    models.refresh();
    let first = models.names()[0].0.clone();
    let shared = Arc::new(Shared {
        log: config.log.clone(),
        queued: Mutex::new(0),
        running: Mutex::new(None),
        interrupter: Mutex::new(None),
        model: Mutex::new(CurrentModel::default()),
        options: Mutex::new(serde_json::Map::new()),
        loras: Mutex::new(Vec::new()),
        lora_dir: config.lora_dir.clone(),
        stopping: AtomicBool::new(false),
    });
    shared.set_default_model(&first);
    lock(&shared.options).insert("CLIP_stop_at_last_layers".into(), json!(1));
    lock(&shared.options).insert("randn_source".into(), json!("CPU"));
    shared.refresh_loras();

    // The first model loads before the server listens: a broken folder is an error now, not a 500 later.
    crate::profile::ModelProfile::load(&config.model)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(config.limits.queue);
    let w = worker::Worker {
        runtime,
        shared: shared.clone(),
        models: models.clone(),
        embeddings_dir: config.embeddings_dir.clone(),
        lora_files: Default::default(),
    };
    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("sd-onnx-worker".into())
        .spawn(move || w.run(rx, first, loaded_tx))
        .map_err(|e| Error::Usage(format!("starting the worker thread: {e}")))?;
    match loaded_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(Error::Usage(format!(
                "--model {}: {e}",
                config.model.display()
            )));
        }
        Err(_) => return Err(Error::Usage("the worker thread stopped".into())),
    }

    let auth: Vec<Vec<u8>> = config
        .auth
        .iter()
        .map(|(u, p)| format!("{u}:{p}").into_bytes())
        .collect();
    let state = AppState {
        shared: shared.clone(),
        models,
        queue: tx,
        limits: config.limits.clone(),
        auth: Arc::new(auth),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("starting the async runtime: {e}")))?;
    let log = config.log.clone();
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| Error::Usage(format!("--listen {}: {e}", config.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Usage(format!("--listen {}: {e}", config.listen)))?;
        if !loopback(&addr) && config.auth.is_empty() {
            log(&format!(
                "warning: listening on {addr} without --api-auth: anyone who can reach this port can use the server"
            ));
        }
        log(&format!("listening on http://{addr}"));
        if let Some(f) = config.on_listening {
            f(addr);
        }
        let stop = Arc::new(tokio::sync::Notify::new());
        let signalled = {
            let stop = stop.clone();
            let shared = shared.clone();
            let log = log.clone();
            async move {
                shutdown_signal().await;
                log("stopping: no new connections; the running job is interrupted");
                shared.stopping.store(true, Ordering::SeqCst);
                shared.interrupt();
                stop.notify_waiters();
            }
        };
        let app = router(state);
        let server = axum::serve(listener, app).with_graceful_shutdown(signalled);
        let deadline = async {
            stop.notified().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        tokio::select! {
            r = server => r.map_err(|e| Error::Usage(format!("serving: {e}"))),
            _ = deadline => {
                log("stopping: connections still open after 10 s; closing them");
                Ok(())
            }
        }
    });
    // The router (and its queue sender) is gone: the worker finishes its job and stops. A job that does not
    // stop within seconds is left to the process's exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    let until = Instant::now() + Duration::from_secs(5);
    while !worker.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_a1111s_format() {
        let t = timestamp();
        assert_eq!(t.len(), 14);
        assert!(t.starts_with("20"), "{t}");
        assert!(t.chars().all(|c| c.is_ascii_digit()));
    }
}
