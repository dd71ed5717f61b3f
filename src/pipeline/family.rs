//! What differs between the model families we run, decided here and nowhere else:
//!
//! | | text conditioning | guidance | defaults (diffusers' pipeline) |
//! |---|---|---|---|
//! | SD 1.x/2.x | `last_hidden_state` | classifier-free (uncond + cond in one UNet call) | 7.5, strengths 0.8 / 1.0 |
//! | SDXL base | both encoders' penultimate states side by side, pooled `text_embeds`, `time_ids` | classifier-free; zeros for an absent negative (`force_zeros_for_empty_prompt`) | 5, strengths 0.3 / 0.9999 |
//! | guidance-distilled (LCM) | as its base | the scale as a `timestep_cond` embedding, one pass | 4 steps, 8.5 |
//!
//! The two axes are independent (an LCM-distilled SDXL UNet is SDXL conditioning with embedded guidance), so a
//! [`Family`] is a pair, and every rule that depends on it is a method here.

use crate::profile::ModelProfile;
use crate::schedulers::SchedulerKind;

/// Tokens per prompt the CLIP text encoders take (and TensorRT profiles fix).
pub const TOKENS: usize = crate::tokenizer::MAX_LENGTH;

/// How the prompt conditions the UNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextConditioning {
    /// One text encoder's `last_hidden_state` (`StableDiffusionPipeline`).
    Sd,
    /// `StableDiffusionXLPipeline`: two encoders, pooled `text_embeds` and the size/crop `time_ids`.
    Sdxl {
        /// Without a negative prompt, the unconditional embeddings are zeros instead of the empty prompt's.
        zeros_for_empty_negative: bool,
    },
}

/// How the guidance scale enters the UNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guidance {
    /// Classifier-free guidance: an unconditional half in the same UNet call when the scale is above 1.
    ClassifierFree,
    /// Guidance-distilled (LCM): the scale as a `dim`-wide `timestep_cond` embedding, no unconditional pass.
    Embedded {
        /// `time_cond_proj_dim`.
        dim: usize,
    },
}

/// A model's family: the facts of [`ModelProfile`] that change how a run is put together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// How the text conditions the UNet.
    pub text: TextConditioning,
    /// How the guidance scale enters it.
    pub guidance: Guidance,
}

/// What a run uses when the request leaves it out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunDefaults {
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f32,
    /// img2img strength.
    pub img2img_strength: f64,
    /// Inpainting strength.
    pub inpaint_strength: f64,
}

/// The shapes one request runs each graph at (for providers that build per-shape engines: TensorRT).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphShapes {
    /// (component name, `input:d1xd2,...` for every input of that graph).
    pub per_component: Vec<(&'static str, String)>,
}

impl Family {
    /// The family a folder's profile describes.
    pub fn of(profile: &ModelProfile) -> Self {
        Family {
            text: match &profile.xl {
                Some(xl) => TextConditioning::Sdxl {
                    zeros_for_empty_negative: xl.zeros_for_empty_negative.value,
                },
                None => TextConditioning::Sd,
            },
            guidance: match &profile.guidance_embedding {
                Some(g) => Guidance::Embedded { dim: g.value },
                None => Guidance::ClassifierFree,
            },
        }
    }

    /// Whether a run at this scale has an unconditional half (diffusers' `do_classifier_free_guidance`:
    /// `guidance_scale > 1 and time_cond_proj_dim is None`).
    pub fn guided(&self, guidance: f32) -> bool {
        self.guidance == Guidance::ClassifierFree && guidance > 1.0
    }

    /// The UNet's batch for `batch` images: doubled when guided.
    pub fn unet_batch(&self, batch: usize, guidance: f32) -> usize {
        if self.guided(guidance) {
            2 * batch
        } else {
            batch
        }
    }

    /// Whether the negative prompt is used at all (not by guidance-distilled UNets).
    pub fn uses_negative_prompt(&self) -> bool {
        self.guidance == Guidance::ClassifierFree
    }

    /// diffusers' pipeline defaults for this family. Guidance-distilled UNets: LatentConsistencyModelPipeline's
    /// 4 steps and guidance 8.5; SDXL: StableDiffusionXLPipeline's guidance 5 and its img2img/inpainting
    /// strengths 0.3 and 0.9999; otherwise StableDiffusionPipeline's guidance 7.5 and strengths 0.8 and 1.0.
    /// Steps are ours (25) where diffusers has 50.
    pub fn defaults(&self) -> RunDefaults {
        let (img2img_strength, inpaint_strength) = match self.text {
            TextConditioning::Sdxl { .. } => (0.3, 0.9999),
            TextConditioning::Sd => (0.8, 1.0),
        };
        let (steps, guidance) = match (self.guidance, self.text) {
            (Guidance::Embedded { .. }, _) => (4, 8.5),
            (Guidance::ClassifierFree, TextConditioning::Sdxl { .. }) => (25, 5.0),
            (Guidance::ClassifierFree, TextConditioning::Sd) => (25, 7.5),
        };
        RunDefaults {
            steps,
            guidance,
            img2img_strength,
            inpaint_strength,
        }
    }

    /// img2img on a guidance-distilled UNet with the LCM scheduler follows diffusers'
    /// LatentConsistencyModelImg2ImgPipeline: the strength shapes the scheduler's timesteps and the loop runs
    /// all of them (instead of StableDiffusionImg2ImgPipeline's skipped start). Inpainting has no LCM pipeline
    /// in diffusers and keeps the Stable Diffusion one.
    pub fn strength_in_schedule(&self, scheduler: SchedulerKind, img2img: bool) -> bool {
        matches!(self.guidance, Guidance::Embedded { .. })
            && scheduler == SchedulerKind::Lcm
            && img2img
    }

    /// SDXL's `add_time_ids`: (original size, crop top-left, target size), all from the request's size.
    pub fn time_ids(width: usize, height: usize) -> [f32; 6] {
        let (h, w) = (height as f32, width as f32);
        [h, w, 0.0, 0.0, h, w]
    }

    /// A short description for `inspect`.
    pub fn describe(&self, text_width: Option<u64>) -> &'static str {
        match (self.text, text_width) {
            (TextConditioning::Sdxl { .. }, _) => {
                "SDXL (two text encoders, pooled text embeddings and size/crop time ids)"
            }
            (TextConditioning::Sd, Some(768)) => "SD 1.x (CLIP ViT-L/14 text encoder)",
            (TextConditioning::Sd, Some(1024)) => "SD 2.x (OpenCLIP ViT-H text encoder)",
            (TextConditioning::Sd, Some(_)) => {
                "Stable Diffusion architecture (non-standard text encoder width)"
            }
            (TextConditioning::Sd, None) => {
                "Stable Diffusion (text encoder width unknown without config.json)"
            }
        }
    }

    /// Every graph's input shapes for a run of `batch` images at `width` x `height` and this guidance scale.
    /// The UNet's entry is left out when the text encoders' widths are unknown (no config.json).
    pub fn graph_shapes(
        &self,
        profile: &ModelProfile,
        width: usize,
        height: usize,
        batch: usize,
        guidance: f32,
    ) -> GraphShapes {
        let f = profile.vae_factor.value;
        let (lh, lw) = (height / f, width / f);
        let b = self.unet_batch(batch, guidance);
        let ch = profile.unet_in_channels.value;
        let config_u64 = |c: &crate::profile::Component, key: &str| {
            c.config.as_ref().and_then(|c| c[key].as_u64())
        };
        let ids = format!("input_ids:1x{TOKENS}");
        let mut per_component = vec![("text_encoder", ids.clone())];
        let d1 = config_u64(&profile.text_encoder, "hidden_size");
        let mut extra = String::new();
        let text_width = match (&profile.xl, self.text) {
            (Some(xl), TextConditioning::Sdxl { .. }) => {
                per_component.push(("text_encoder_2", ids));
                let d2 = config_u64(&xl.text_encoder_2, "hidden_size");
                let p = config_u64(&xl.text_encoder_2, "projection_dim");
                match (d1, d2, p) {
                    (Some(d1), Some(d2), Some(p)) => {
                        extra = format!(",text_embeds:{b}x{p},time_ids:{b}x6");
                        Some(d1 + d2)
                    }
                    _ => None,
                }
            }
            _ => d1,
        };
        if let Guidance::Embedded { dim } = self.guidance {
            extra.push_str(&format!(",timestep_cond:{b}x{dim}"));
        }
        if let Some(d) = text_width {
            per_component.push((
                "unet",
                format!("sample:{b}x{ch}x{lh}x{lw},encoder_hidden_states:{b}x{TOKENS}x{d}{extra}"),
            ));
        }
        let latent = profile.latent_channels.value;
        per_component.push(("vae_decoder", format!("latent_sample:1x{latent}x{lh}x{lw}")));
        per_component.push(("vae_encoder", format!("sample:1x3x{height}x{width}")));
        GraphShapes { per_component }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn family(dir: &str) -> (ModelProfile, Family) {
        let p = ModelProfile::load(Path::new(dir)).unwrap_or_else(|e| panic!("{e}"));
        let f = p.family();
        (p, f)
    }

    #[test]
    fn defaults_follow_the_diffusers_pipeline_of_the_model() {
        let sd = family("onnx/sd-tiny-optimum").1.defaults();
        assert_eq!((sd.steps, sd.guidance), (25, 7.5));
        assert_eq!((sd.img2img_strength, sd.inpaint_strength), (0.8, 1.0));
        let lcm = family("onnx/sd-tiny-lcm-optimum").1.defaults();
        assert_eq!((lcm.steps, lcm.guidance), (4, 8.5));
        let xl = family("onnx/sdxl-tiny-optimum").1.defaults();
        assert_eq!((xl.steps, xl.guidance), (25, 5.0));
        assert_eq!((xl.img2img_strength, xl.inpaint_strength), (0.3, 0.9999));
    }

    /// diffusers guides (two halves) above scale 1, except guidance-distilled UNets, which never do.
    #[test]
    fn the_guided_rule_for_sd_sdxl_and_lcm() {
        for dir in ["onnx/sd-tiny-optimum", "onnx/sdxl-tiny-optimum"] {
            let f = family(dir).1;
            assert!(f.guided(7.5) && f.guided(1.01), "{dir}");
            assert!(!f.guided(1.0) && !f.guided(0.0), "{dir}");
            assert_eq!((f.unet_batch(3, 7.5), f.unet_batch(3, 1.0)), (6, 3));
        }
        let lcm = family("onnx/sd-tiny-lcm-optimum").1;
        assert_eq!(lcm.guidance, Guidance::Embedded { dim: 8 });
        assert!(!lcm.guided(8.5));
        assert_eq!(lcm.unet_batch(2, 8.5), 2);
        assert!(!lcm.uses_negative_prompt());
        assert!(lcm.strength_in_schedule(SchedulerKind::Lcm, true));
        assert!(!lcm.strength_in_schedule(SchedulerKind::Lcm, false));
        assert!(
            !family("onnx/sd-tiny-optimum")
                .1
                .strength_in_schedule(SchedulerKind::Lcm, true)
        );
    }

    /// The shapes each graph runs at (what TensorRT's profiles are built from): CFG doubles the UNet batch,
    /// LCM does not (it takes `timestep_cond` instead), SDXL adds both widths, the pooled projection and the
    /// time ids.
    #[test]
    fn graph_shapes_follow_the_family() {
        let get = |s: &GraphShapes, c: &str| {
            s.per_component
                .iter()
                .find(|(n, _)| *n == c)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (sd, f) = family("onnx/sd-tiny-optimum");
        let hidden = sd
            .text_encoder
            .config
            .as_ref()
            .and_then(|c| c["hidden_size"].as_u64());
        let hidden = hidden.unwrap_or_default();
        let s = f.graph_shapes(&sd, 96, 64, 2, 7.5);
        assert_eq!(
            get(&s, "unet"),
            format!("sample:4x4x8x12,encoder_hidden_states:4x77x{hidden}")
        );
        assert_eq!(get(&s, "vae_decoder"), "latent_sample:1x4x8x12");
        assert_eq!(get(&s, "vae_encoder"), "sample:1x3x64x96");
        assert_eq!(get(&s, "text_encoder"), "input_ids:1x77");
        assert!(get(&f.graph_shapes(&sd, 96, 64, 2, 1.0), "unet").starts_with("sample:2x4x"));
        let (lcm, f) = family("onnx/sd-tiny-lcm-optimum");
        let unet = get(&f.graph_shapes(&lcm, 64, 64, 1, 8.5), "unet");
        assert!(
            unet.starts_with("sample:1x4x8x8,") && unet.ends_with(",timestep_cond:1x8"),
            "{unet}"
        );
        let (xl, f) = family("onnx/sdxl-tiny-optimum");
        let s = f.graph_shapes(&xl, 64, 64, 1, 5.0);
        assert_eq!(
            get(&s, "unet"),
            "sample:2x4x8x8,encoder_hidden_states:2x77x16,text_embeds:2x8,time_ids:2x6"
        );
        assert_eq!(get(&s, "text_encoder_2"), "input_ids:1x77");
        let (inpaint, f) = family("onnx/sd-tiny-inpaint-optimum");
        assert!(
            get(&f.graph_shapes(&inpaint, 64, 64, 1, 7.5), "unet").starts_with("sample:2x9x8x8,")
        );
    }
}
