//! sd-onnx: Stable Diffusion from exported ONNX graphs (diffusers' convert script or optimum), with everything
//! around the graphs in Rust, so that a seed gives the image diffusers gives.
//!
//! ```no_run
//! use sd_onnx::pipeline::{Intent, MemoryMode, Pipeline, resolve};
//! use sd_onnx::{infotext, output, profile::ModelProfile, runtime::Runtime};
//! use std::path::Path;
//!
//! # fn main() -> sd_onnx::Result<()> {
//! let runtime = Runtime::load(None)?; // ORT_DYLIB_PATH, or a library next to the executable
//! let profile = ModelProfile::load(Path::new("onnx/sd-emoji"))?;
//! let plan = resolve(&profile, Intent { prompt: "red apple".into(), seed: Some(1), ..Intent::default() })?;
//! // A1111's "parameters" text for the first image (seed, batch position 0, no model hash).
//! let params = infotext::for_image(&plan.request, &profile, plan.request.seed, 0, None, None, None);
//! let mut pipeline = Pipeline::with_memory(&runtime, profile, MemoryMode::OneShot)?;
//! let generated = pipeline.run(plan, &mut |_| {})?;
//! output::write_image(Path::new("apple.png"), &generated.images[0], &params)?;
//! # Ok(())
//! # }
//! ```
//!
//! [`pipeline`] holds the stages (request resolution, conditioning, latents, denoising, decoding),
//! [`runtime`] the ONNX Runtime library, providers and caches, [`profile`] what a folder says about its model.
//! See ARCHITECTURE.md for the map and its invariants.

#![warn(missing_docs)]

pub mod bench;
pub mod embeddings;
pub mod error;
pub mod ftfy;
pub mod graphs;
pub mod images;
pub mod infotext;
pub mod inspect;
pub mod lora;
pub mod model_hash;
pub mod onnx_edit;
pub mod onnx_proto;
pub mod output;
pub mod pipeline;
pub mod profile;
pub mod prompt;
pub mod rng;
pub mod runtime;
pub mod schedulers;
#[cfg(feature = "server")]
pub mod server;
pub mod tokenizer;

pub use error::{Error, Result};
