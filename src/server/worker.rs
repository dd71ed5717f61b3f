//! The inference thread: it owns the loaded model's [`Pipeline`] (sessions created once and kept,
//! [`MemoryMode::KeepAll`]) and takes jobs one at a time from a bounded queue; the HTTP side only parses,
//! enqueues and waits for the reply. Model switches and embedding reloads go through the same queue, so they
//! never race a generation.

use super::a1111::{self, Job};
use super::{ApiError, Models, Shared};
use crate::embeddings::{Embedding, Refused};
use crate::error::Error;
use crate::infotext;
use crate::lora::{Active, LoraFile};
use crate::model_hash::unet_sha256;
use crate::output::{OutputFormat, encode};
use crate::pipeline::{MemoryMode, Pipeline, Progress, resolve};
use crate::profile::ModelProfile;
use crate::runtime::Runtime;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the queue carries.
pub enum Msg {
    /// Generate; the reply is the images and `info`.
    Generate {
        job: Box<Job>,
        queued: Instant,
        reply: oneshot::Sender<Result<Output, ApiError>>,
    },
    /// Load this model (a name from the server's list) and make it the default.
    Switch {
        name: String,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Read the embeddings folder again.
    RefreshEmbeddings {
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
}

/// A finished generation.
pub struct Output {
    /// PNG files (A1111 `parameters` chunk included).
    pub images: Vec<Vec<u8>>,
    /// A1111's info fields (the handler adds its timings and makes it a string).
    pub info: serde_json::Value,
    /// Waiting in the queue.
    pub queue: Duration,
    /// Inside ONNX Runtime's `Session::run` (text encoder, every UNet call, VAE).
    pub session_run: Duration,
    /// The worker's time for this job (resolve, LoRA, run, encoding).
    pub work: Duration,
}

/// The model in use.
struct Loaded {
    name: String,
    pipeline: Pipeline,
    hash: String,
}

/// What the worker is given.
pub struct Worker {
    pub runtime: Runtime,
    pub shared: Arc<Shared>,
    pub models: Arc<Models>,
    pub embeddings_dir: Option<PathBuf>,
    /// LoRA files read so far, by path (re-read when the file changes: its stamp).
    pub lora_files: HashMap<PathBuf, Arc<LoraFile>>,
}

impl Worker {
    /// Load `name` (from the server's list). Returns the model once its sessions exist.
    fn load(&mut self, name: &str) -> Result<Loaded, ApiError> {
        let dir = self.models.path(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "model {name:?} not found (GET /sdapi/v1/sd-models)"
            ))
        })?;
        let started = Instant::now();
        let profile = ModelProfile::load(&dir).map_err(ApiError::from)?;
        let sha256 = unet_sha256(&profile, self.runtime.config.cache_dir.as_deref())
            .map_err(ApiError::from)?;
        let hash = sha256[..10].to_string();
        let mut pipeline = Pipeline::with_memory(&self.runtime, profile, MemoryMode::KeepAll)
            .map_err(ApiError::from)?;
        self.set_embeddings(&mut pipeline)?;
        let mut current = self.shared.lock_model();
        current.name = name.to_string();
        current.sha256 = Some(sha256);
        drop(current);
        self.shared.log(&format!(
            "model {name}: sessions ready in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(Loaded {
            name: name.to_string(),
            pipeline,
            hash,
        })
    }

    fn set_embeddings(&self, pipeline: &mut Pipeline) -> Result<(), ApiError> {
        let (loaded, refused): (Vec<Embedding>, Vec<Refused>) = match &self.embeddings_dir {
            None => (Vec::new(), Vec::new()),
            Some(dir) => {
                let widths =
                    crate::graphs::text_widths(&pipeline.profile).map_err(ApiError::from)?;
                crate::embeddings::load_dir(dir, &widths).map_err(ApiError::from)?
            }
        };
        pipeline.set_embeddings(&loaded).map_err(ApiError::from)?;
        let mut current = self.shared.lock_model();
        current.embeddings = loaded
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.len(),
                    e.vectors.first().map_or(0, |v| v.ncols()),
                )
            })
            .collect();
        current.refused = refused
            .iter()
            .map(|r| (r.file.display().to_string(), r.reason.clone()))
            .collect();
        Ok(())
    }

    /// The LoRA set a request's `<lora:NAME:W>` tags ask for, from the files the server listed.
    fn loras_for(
        &mut self,
        tags: &[crate::prompt::networks::LoraTag],
    ) -> Result<Vec<Active>, ApiError> {
        let mut active = Vec::new();
        for tag in tags {
            let path = self.shared.lora_path(&tag.name).ok_or_else(|| {
                ApiError::unprocessable(format!(
                    "prompt: <lora:{}> is not a LoRA this server has (GET /sdapi/v1/loras; POST /sdapi/v1/refresh-loras after adding one)",
                    tag.name
                ))
            })?;
            let file = match self.lora_files.get(&path) {
                Some(f) if crate::lora::stamp_of(&path) == f.stamp => f.clone(),
                _ => {
                    let f = Arc::new(LoraFile::read(&path).map_err(ApiError::from)?);
                    self.lora_files.insert(path.clone(), f.clone());
                    f
                }
            };
            active.push(Active {
                file,
                te: tag.te,
                unet: tag.unet,
            });
        }
        Ok(active)
    }

    /// Load `first`, say how that went on `loaded`, then serve the queue until every sender is gone.
    pub fn run(mut self, rx: Receiver<Msg>, first: String, loaded_tx: Sender<Result<(), String>>) {
        let mut loaded = match self.load(&first) {
            Ok(l) => {
                let _ = loaded_tx.send(Ok(()));
                Some(l)
            }
            Err(e) => {
                let _ = loaded_tx.send(Err(e.detail));
                return;
            }
        };
        while let Ok(msg) = rx.recv() {
            self.shared.dequeued();
            let stopping = self
                .shared
                .stopping
                .load(std::sync::atomic::Ordering::SeqCst);
            match msg {
                Msg::Generate { reply, .. } if stopping => {
                    let _ = reply.send(Err(ApiError::unavailable("the server is shutting down")));
                }
                // The client hung up while its job waited (axum drops the handler, and with it the
                // receiver): nobody would read the images, so the job is not run.
                Msg::Generate { reply, .. } if reply.is_closed() => {
                    self.shared
                        .log("a client went away before its job started: the job is dropped");
                }
                Msg::Generate { job, queued, reply } => {
                    let waited = queued.elapsed();
                    let result = self.generate(&mut loaded, *job, waited, &reply);
                    self.shared.finished();
                    if reply.is_closed() {
                        self.shared.log(match &result {
                            Err(e) if e.error == "Interrupted" => {
                                "a client went away during its job: it was stopped at the next step"
                            }
                            _ => "a client went away before its answer was sent",
                        });
                    }
                    let _ = reply.send(result);
                }
                Msg::Switch { name, reply } => {
                    let result = if loaded.as_ref().is_some_and(|l| l.name == name) {
                        Ok(())
                    } else {
                        // The old sessions go first: two models need not fit at once.
                        loaded = None;
                        self.load(&name).map(|l| loaded = Some(l))
                    };
                    if result.is_ok() {
                        self.shared.set_default_model(&name);
                    }
                    let _ = reply.send(result);
                }
                Msg::RefreshEmbeddings { reply } => {
                    let result = match &mut loaded {
                        Some(l) => self.set_embeddings(&mut l.pipeline),
                        None => Ok(()),
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }

    fn generate(
        &mut self,
        loaded: &mut Option<Loaded>,
        job: Job,
        waited: Duration,
        reply: &oneshot::Sender<Result<Output, ApiError>>,
    ) -> Result<Output, ApiError> {
        let started = Instant::now();
        let want = job
            .model
            .clone()
            .unwrap_or_else(|| self.shared.default_model());
        if loaded.as_ref().is_none_or(|l| l.name != want) {
            *loaded = None;
            *loaded = Some(self.load(&want)?);
        }
        let Some(model) = loaded.as_mut() else {
            return Err(ApiError::internal("no model loaded"));
        };
        let plan = resolve(&model.pipeline.profile, job.intent).map_err(ApiError::from)?;
        let req = plan.request.clone();
        let tags = req.lora_tags().map_err(ApiError::from)?;
        let active = self.loras_for(&tags)?;
        let same = |a: &[Active], b: &[Active]| {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    x.file.path == y.file.path
                        && x.file.stamp == y.file.stamp
                        && x.te == y.te
                        && x.unet == y.unet
                })
        };
        let mut warnings = Vec::new();
        if !same(&active, model.pipeline.loras()) {
            warnings.extend(model.pipeline.set_loras(&active).map_err(ApiError::from)?);
        }
        let texts =
            infotext::for_run(&model.pipeline, &req, Some(&model.hash)).map_err(ApiError::from)?;
        self.shared.running(
            job.kind,
            req.batch_count,
            req.steps,
            model.pipeline.interrupter(),
        );
        let shared = self.shared.clone();
        let interrupter = model.pipeline.interrupter();
        let result = model.pipeline.run(plan, &mut |p| {
            // `/interrupt`, or the client hung up (its receiver is gone): stop at the next step.
            if shared.interrupt_requested() || reply.is_closed() {
                interrupter.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            match p {
                Progress::Batch { index, .. } => shared.progress(Some(index), None),
                Progress::Step { done, total } => shared.progress(None, Some((done, total))),
                Progress::Encoding | Progress::Decoding => {}
            }
        });
        let generated = result.map_err(ApiError::from)?;
        warnings.extend(generated.warnings.iter().cloned());
        warnings.extend(self.runtime.take_warnings());
        let mut images = Vec::new();
        if job.send_images {
            for (img, text) in generated.images.iter().zip(&texts) {
                images.push(encode(img, OutputFormat::Png, text).map_err(ApiError::from)?);
            }
        }
        let t = &generated.timings;
        let session_run = t.text + t.unet.iter().sum::<Duration>() + t.decode;
        let info = a1111::info(
            &a1111::RunFacts {
                kind: job.kind,
                req: &req,
                schedule: req.effective_schedule(&model.pipeline.profile),
                seeds: &generated.seeds,
                model: &model.name,
                model_hash: &model.hash,
                infotexts: &texts,
            },
            &job.not_honoured,
            &warnings,
        );
        Ok(Output {
            images,
            info,
            queue: waited,
            session_run,
            work: started.elapsed(),
        })
    }
}

/// Where a model's name leads: the folders the server listed (`--model`, and `--models-dir`'s subfolders).
pub fn is_model_dir(p: &Path) -> bool {
    p.join("unet").join("model.onnx").is_file() && p.join("model_index.json").is_file()
        || p.join("unet").join("model.onnx").is_file() && p.join("scheduler").is_dir()
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match &e {
            Error::Interrupted => ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "Interrupted",
                "interrupted (POST /sdapi/v1/interrupt)".into(),
            ),
            Error::Invalid { .. } | Error::Usage(_) | Error::Scheduler(_) => {
                ApiError::unprocessable(e.to_string())
            }
            _ if e.is_usage() => ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "ModelError",
                e.to_string(),
            ),
            _ => ApiError::internal(e.to_string()),
        }
    }
}
