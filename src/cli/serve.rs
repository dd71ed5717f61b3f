//! `serve`: flags to a [`ServeConfig`]; the library's server does the rest.

use super::args::ServeArgs;
use super::load_runtime;
use sd_onnx::error::{Error, Result};
use sd_onnx::server::{Limits, ServeConfig, serve as run};
use std::sync::Arc;

pub fn serve(a: ServeArgs) -> Result<()> {
    let mut auth = Vec::new();
    if let Some(list) = &a.api_auth {
        for pair in list.split(',') {
            match pair.split_once(':') {
                Some((u, p)) if !u.is_empty() && !p.is_empty() => {
                    auth.push((u.to_string(), p.to_string()))
                }
                _ => {
                    return Err(Error::Usage(
                        "--api-auth: expected USER:PASS (comma-separated for several)".into(),
                    ));
                }
            }
        }
    }
    for (flag, v) in [
        ("--max-steps", a.max_steps),
        ("--max-images", a.max_images),
        ("--max-pixels", a.max_pixels),
        ("--max-body-mb", a.max_body_mb),
        ("--queue", a.queue),
    ] {
        if v == 0 {
            return Err(Error::Usage(format!("{flag} 0: must be at least 1")));
        }
    }
    let limits = Limits {
        max_steps: a.max_steps,
        max_images: a.max_images,
        max_pixels: a.max_pixels,
        max_body: a.max_body_mb.saturating_mul(1 << 20),
        queue: a.queue,
        ..Limits::default()
    };
    // Before the runtime loads: a missing folder is a usage error naming the flag.
    for (flag, dir) in [
        ("--model", Some(&a.model)),
        ("--models-dir", a.models_dir.as_ref()),
        ("--lora-dir", a.lora_dir.as_ref()),
        ("--embeddings-dir", a.embeddings_dir.as_ref()),
    ] {
        if let Some(d) = dir
            && !d.is_dir()
        {
            return Err(Error::Usage(format!(
                "{flag} {}: not a folder",
                d.display()
            )));
        }
    }
    let runtime = load_runtime(&a.runtime, None, false)?;
    run(
        runtime,
        ServeConfig {
            model: a.model,
            models_dir: a.models_dir,
            listen: a.listen,
            auth,
            lora_dir: a.lora_dir,
            embeddings_dir: a.embeddings_dir,
            limits,
            log: Arc::new(|line: &str| eprintln!("{line}")),
            on_listening: None,
        },
    )
}
