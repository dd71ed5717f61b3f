//! sd-onnx: Stable Diffusion from exported ONNX graphs, with everything around the graphs in Rust.
//! See ARCHITECTURE.md for the map.

pub mod error;
pub mod rng;
pub mod schedulers;

pub use error::{Error, Result};
