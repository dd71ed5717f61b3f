//! The VAE decoder and encoder graphs.

use super::Graph;
use crate::error::Result;
use crate::profile::Component;
use crate::runtime::{Runtime, SessionSpec};
use ndarray::Array4;
use ort::value::TensorElementType;

/// The VAE decoder: `latent_sample` (already divided by the scaling factor) to an image in [-1, 1].
pub struct VaeDecoder {
    /// The session.
    pub graph: Graph,
    out: String,
}

impl VaeDecoder {
    /// Open the component's graph as exported.
    pub fn load(runtime: &Runtime, c: &Component) -> Result<Self> {
        Self::load_spec(runtime, &SessionSpec::plain(c))
    }

    /// Open it with the spec's initializer overrides (LoRA-merged weights).
    pub fn load_spec(runtime: &Runtime, spec: &SessionSpec) -> Result<Self> {
        let graph = Graph::load_spec(runtime, spec)?;
        graph.input("latent_sample")?;
        let out = graph.output_name("sample")?;
        Ok(VaeDecoder { graph, out })
    }

    /// True when the graph takes float16 latents.
    pub fn is_fp16(&self) -> bool {
        self.graph
            .inputs
            .iter()
            .any(|p| p.name == "latent_sample" && p.dtype == Some(TensorElementType::Float16))
    }

    /// Decode one latent (1, C, h, w) to an image tensor (1, 3, H, W) in [-1, 1].
    pub fn decode(&mut self, latent: &Array4<f32>) -> Result<Array4<f32>> {
        let shape: Vec<i64> = latent.shape().iter().map(|&d| d as i64).collect();
        let v = self
            .graph
            .float_input("latent_sample", latent.iter().copied().collect(), shape)?;
        self.graph
            .run4(vec![("latent_sample".into(), v)], &self.out.clone())
    }
}

/// What the VAE encoder export returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderOutput {
    /// Mean and log-variance (optimum's `latent_parameters`): we sample with the run's generator.
    Parameters,
    /// Already sampled inside the graph (the convert script's `latent_sample`): not reproducible.
    Sample,
}

/// The VAE encoder: an image in [-1, 1] to the latent distribution's parameters (or a sample).
pub struct VaeEncoder {
    /// The session.
    pub graph: Graph,
    /// What it returns.
    pub output: EncoderOutput,
    out: String,
}

impl VaeEncoder {
    /// Open the component's graph as exported.
    pub fn load(runtime: &Runtime, c: &Component) -> Result<Self> {
        Self::load_spec(runtime, &SessionSpec::plain(c))
    }

    /// Open it with the spec's initializer overrides (LoRA-merged weights).
    pub fn load_spec(runtime: &Runtime, spec: &SessionSpec) -> Result<Self> {
        let graph = Graph::load_spec(runtime, spec)?;
        graph.input("sample")?;
        let out = graph.output_name("latent_parameters")?;
        let output = if out == "latent_sample" {
            EncoderOutput::Sample
        } else {
            EncoderOutput::Parameters
        };
        Ok(VaeEncoder { graph, output, out })
    }

    /// Encode a (1, 3, H, W) image in [-1, 1]: latent parameters (2C channels) or a latent sample (C).
    pub fn encode(&mut self, image: &Array4<f32>) -> Result<Array4<f32>> {
        let shape: Vec<i64> = image.shape().iter().map(|&d| d as i64).collect();
        let v = self
            .graph
            .float_input("sample", image.iter().copied().collect(), shape)?;
        self.graph
            .run4(vec![("sample".into(), v)], &self.out.clone())
    }
}
