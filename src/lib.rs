//! sd-onnx: Stable Diffusion from exported ONNX graphs, with everything around the graphs in Rust.
//! See ARCHITECTURE.md for the map.

pub mod bench;
pub mod cli;
pub mod error;
pub mod graphs;
pub mod images;
pub mod onnx_proto;
pub mod output;
pub mod pipeline;
pub mod profile;
pub mod rng;
pub mod runtime;
pub mod schedulers;
pub mod tokenizer;

pub use error::{Error, Result};
