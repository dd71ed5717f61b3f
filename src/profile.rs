//! The model profile: every per-model fact the pipeline needs, read once from an exported folder as it is
//! (`model_index.json`, per-component `config.json`, scheduler and tokenizer configs). Nothing else in the
//! crate decides VAE scale, latent channels, layout or scheduler defaults.

use crate::error::{Error, Result};
use crate::schedulers::{SchedulerConfig, SchedulerKind};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Which exporter made the folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// diffusers' `convert_stable_diffusion_checkpoint_to_onnx.py` (`OnnxStableDiffusionPipeline`).
    DiffusersConvert,
    /// `optimum-cli export onnx` (`ORTStableDiffusionPipeline`; per-component config.json).
    Optimum,
    /// Has the graphs but neither exporter's markers.
    Unknown,
}

impl Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Layout::DiffusersConvert => "diffusers convert script (OnnxStableDiffusionPipeline)",
            Layout::Optimum => "optimum export (per-component config.json)",
            Layout::Unknown => "unrecognised (graphs found, no exporter markers)",
        }
    }
}

/// One exported graph and the files beside it.
#[derive(Clone, Debug)]
pub struct Component {
    pub name: &'static str,
    pub graph: PathBuf,
    /// External-data files next to the graph (`model.onnx_data`, `weights.pb`, ...).
    pub external_data: Vec<PathBuf>,
    pub config: Option<Value>,
}

/// A fact and where it came from (for `inspect`).
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub value: T,
    pub source: String,
}

/// SDXL's second conditioning (diffusers' `StableDiffusionXLPipeline`): a second text encoder whose
/// penultimate hidden states are concatenated to the first's, whose pooled projection the UNet takes as
/// `text_embeds`, and the size/crop `time_ids`.
#[derive(Clone, Debug)]
pub struct XlConditioning {
    pub text_encoder_2: Component,
    pub tokenizer_2_dir: PathBuf,
    /// `force_zeros_for_empty_prompt`: without a negative prompt, the unconditional embeddings (both the
    /// sequence and the pooled one) are zeros instead of the empty prompt's.
    pub zeros_for_empty_negative: Sourced<bool>,
}

/// Defaults for what a request leaves out (see [`ModelProfile::defaults`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunDefaults {
    pub steps: usize,
    pub guidance: f32,
    pub img2img_strength: f64,
    pub inpaint_strength: f64,
}

#[derive(Clone, Debug)]
pub struct ModelProfile {
    pub dir: PathBuf,
    pub layout: Layout,
    pub text_encoder: Component,
    pub unet: Component,
    pub vae_decoder: Component,
    pub vae_encoder: Option<Component>,
    /// An fp32 VAE decoder kept beside an fp16 one (`vae_decoder_fp32/`), used when fp16 overflows.
    pub vae_decoder_fp32: Option<Component>,
    pub tokenizer_dir: PathBuf,
    pub scheduler_config: SchedulerConfig,
    /// The scheduler class the folder names, if we port it.
    pub default_scheduler: Option<SchedulerKind>,
    pub scheduler_class: Option<String>,
    pub vae_scaling_factor: Sourced<f32>,
    /// Image pixels per latent pixel.
    pub vae_factor: Sourced<usize>,
    /// What image sizes must be multiples of: the VAE factor times 2 for each time the UNet halves the latent.
    /// An exported UNet upsamples by a fixed factor of 2 (diffusers' odd-size path is not traced), so other
    /// sizes fail inside the graph.
    pub size_multiple: Sourced<usize>,
    /// Channels of the latents the UNet denoises; `None` means "ask the graph".
    pub latent_channels: Option<Sourced<usize>>,
    /// UNet input channels (9 for inpainting UNets) when a config says.
    pub unet_in_channels: Option<usize>,
    /// Guidance-distilled UNets (LCM): the width of the guidance-scale embedding they take as `timestep_cond`
    /// (`time_cond_proj_dim`). Such a UNet is run once per step, without an unconditional pass.
    pub guidance_embedding: Option<Sourced<usize>>,
    pub unet_sample_size: Option<usize>,
    /// Set for SDXL folders (`text_encoder_2/`).
    pub xl: Option<XlConditioning>,
    pub prediction_type: String,
    /// Things that will not work, said plainly.
    pub problems: Vec<String>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::model(path, format!("invalid JSON: {e}")))
}

fn optional_json(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn component(dir: &Path, name: &'static str) -> Result<Option<Component>> {
    let sub = dir.join(name);
    let graph = sub.join("model.onnx");
    if !graph.is_file() {
        return Ok(None);
    }
    let mut external_data: Vec<PathBuf> = std::fs::read_dir(&sub)
        .map_err(|source| Error::Read {
            path: sub.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p.is_file()
                && n != "model.onnx"
                && n != "config.json"
                && !n.ends_with(".json")
                && !n.ends_with(".txt")
        })
        .collect();
    external_data.sort();
    Ok(Some(Component {
        name,
        graph,
        external_data,
        config: optional_json(&sub.join("config.json"))?,
    }))
}

fn required(dir: &Path, name: &'static str) -> Result<Component> {
    component(dir, name)?.ok_or_else(|| {
        Error::model(
            dir.join(name).join("model.onnx"),
            format!("missing: the folder has no {name} graph"),
        )
    })
}

/// The UNet's upsampling layers counted in its graph, when the graph file is small enough to read at start-up
/// (exports keep weights outside model.onnx; a single-file graph of hundreds of MB is not read).
fn graph_upsamplers(graph: &Path) -> Option<usize> {
    const MAX_READ: u64 = 64 << 20;
    if std::fs::metadata(graph).ok()?.len() > MAX_READ {
        return None;
    }
    let bytes = std::fs::read(graph).ok()?;
    crate::onnx_proto::count_ops(&bytes, &["Resize", "Upsample"])
}

impl ModelProfile {
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::model(
                dir,
                "not a folder (pass --model DIR, an exported ONNX pipeline)",
            ));
        }
        let index = optional_json(&dir.join("model_index.json"))?;
        let class = index
            .as_ref()
            .and_then(|v| v["_class_name"].as_str())
            .unwrap_or("");
        let xl = if class.contains("XL") || dir.join("text_encoder_2").is_dir() {
            // The SDXL refiner conditions on an aesthetic score and has only the second encoder: say so up
            // front instead of failing later on an input the UNet lacks.
            let aesthetic = index
                .as_ref()
                .and_then(|v| v["requires_aesthetics_score"].as_bool())
                .unwrap_or(false);
            if aesthetic || !dir.join("text_encoder").is_dir() {
                return Err(Error::model(
                    dir,
                    "an SDXL refiner (aesthetic-score conditioning, no first text encoder): not supported; \
                     sd-onnx runs SDXL base exports",
                ));
            }
            let tokenizer_2_dir = dir.join("tokenizer_2");
            if !tokenizer_2_dir.is_dir() {
                return Err(Error::model(
                    &tokenizer_2_dir,
                    "missing: an SDXL folder needs its second tokenizer",
                ));
            }
            let zeros = index
                .as_ref()
                .and_then(|v| v["force_zeros_for_empty_prompt"].as_bool());
            Some(XlConditioning {
                text_encoder_2: required(dir, "text_encoder_2")?,
                tokenizer_2_dir,
                zeros_for_empty_negative: Sourced {
                    value: zeros.unwrap_or(true),
                    source: if zeros.is_some() {
                        "model_index.json force_zeros_for_empty_prompt".into()
                    } else {
                        "default (StableDiffusionXLPipeline's)".into()
                    },
                },
            })
        } else {
            None
        };
        let text_encoder = required(dir, "text_encoder")?;
        let unet = required(dir, "unet")?;
        let vae_decoder = required(dir, "vae_decoder")?;
        let vae_encoder = component(dir, "vae_encoder")?;
        let vae_decoder_fp32 = component(dir, "vae_decoder_fp32")?;
        let tokenizer_dir = dir.join("tokenizer");
        if !tokenizer_dir.is_dir() {
            return Err(Error::model(
                &tokenizer_dir,
                "missing: the folder has no tokenizer",
            ));
        }
        let layout = if class.starts_with("Onnx") {
            Layout::DiffusersConvert
        } else if unet.config.is_some() || class.starts_with("ORT") {
            Layout::Optimum
        } else {
            Layout::Unknown
        };
        let mut problems = Vec::new();

        let sched_path = dir.join("scheduler").join("scheduler_config.json");
        let (scheduler_config, scheduler_class) = match optional_json(&sched_path)? {
            Some(v) => {
                let cfg = SchedulerConfig::from_json(v)
                    .map_err(|e| Error::model(&sched_path, e.to_string()))?;
                let class = cfg.class_name().map(str::to_string);
                (cfg, class)
            }
            None => {
                problems.push(format!(
                    "{}: missing; schedulers use their own defaults",
                    sched_path.display()
                ));
                (SchedulerConfig::default(), None)
            }
        };
        let default_scheduler = scheduler_class
            .as_deref()
            .and_then(|c| SchedulerKind::from_class(c).ok());
        if let (Some(c), None) = (&scheduler_class, default_scheduler) {
            problems.push(format!(
                "scheduler class {c} is not ported; pass --scheduler"
            ));
        }
        let prediction_type = scheduler_config
            .str("prediction_type", "epsilon")
            .unwrap_or("epsilon")
            .to_string();

        let vae_cfg = vae_decoder
            .config
            .as_ref()
            .or(vae_encoder.as_ref().and_then(|c| c.config.as_ref()));
        let vae_scaling_factor = match vae_cfg.and_then(|c| c["scaling_factor"].as_f64()) {
            Some(v) => Sourced {
                value: v as f32,
                source: "vae_decoder/config.json scaling_factor".into(),
            },
            None => Sourced {
                value: 0.18215,
                source: "default (no VAE config.json; SD 1.x/2.x value)".into(),
            },
        };
        let vae_factor = match vae_cfg
            .and_then(|c| c["block_out_channels"].as_array())
            .map(|a| a.len())
        {
            Some(n) if n >= 1 => Sourced {
                value: 1 << (n - 1),
                source: "vae config.json block_out_channels".into(),
            },
            _ => Sourced {
                value: 8,
                source: "default (no VAE config.json)".into(),
            },
        };
        let ucfg = unet.config.as_ref();
        // diffusers' UNet2DConditionModel has one downsampler per block but the last.
        let halvings = match ucfg
            .and_then(|c| c["block_out_channels"].as_array())
            .map(|a| a.len())
        {
            Some(n) if n >= 1 => Some((n - 1, "unet/config.json block_out_channels".to_string())),
            _ => graph_upsamplers(&unet.graph).map(|n| {
                (
                    n,
                    "Resize nodes in unet/model.onnx (no unet config.json)".to_string(),
                )
            }),
        };
        let size_multiple = match halvings {
            Some((n, source)) => Sourced {
                value: vae_factor.value << n.min(8),
                source: format!("VAE factor x 2^{n}: {source}"),
            },
            None => Sourced {
                value: vae_factor.value,
                source: "VAE factor (the UNet's depth is unknown)".into(),
            },
        };
        let unet_in_channels = ucfg
            .and_then(|c| c["in_channels"].as_u64())
            .map(|v| v as usize);
        let latent_channels = ucfg
            .and_then(|c| c["out_channels"].as_u64())
            .map(|v| Sourced {
                value: v as usize,
                source: "unet/config.json out_channels".into(),
            })
            .or_else(|| {
                vae_cfg
                    .and_then(|c| c["latent_channels"].as_u64())
                    .map(|v| Sourced {
                        value: v as usize,
                        source: "vae config.json latent_channels".into(),
                    })
            });
        let guidance_embedding = ucfg
            .and_then(|c| c["time_cond_proj_dim"].as_u64())
            .filter(|&d| d > 0)
            .map(|d| Sourced {
                value: d as usize,
                source: "unet/config.json time_cond_proj_dim".into(),
            });
        let unet_sample_size = ucfg
            .and_then(|c| c["sample_size"].as_u64())
            .map(|v| v as usize);
        if vae_encoder.is_none() {
            problems.push("no vae_encoder: img2img and inpainting will not work".into());
        }
        Ok(ModelProfile {
            dir: dir.to_path_buf(),
            layout,
            text_encoder,
            unet,
            vae_decoder,
            vae_encoder,
            vae_decoder_fp32,
            tokenizer_dir,
            scheduler_config,
            default_scheduler,
            scheduler_class,
            vae_scaling_factor,
            vae_factor,
            size_multiple,
            latent_channels,
            unet_in_channels,
            guidance_embedding,
            unet_sample_size,
            xl,
            prediction_type,
            problems,
        })
    }

    /// What a run uses when the user does not say: diffusers' pipeline defaults for this kind of model.
    /// Guidance-distilled UNets: LatentConsistencyModelPipeline's 4 steps and guidance 8.5; SDXL:
    /// StableDiffusionXLPipeline's guidance 5 and its img2img/inpainting strengths 0.3 and 0.9999; otherwise
    /// StableDiffusionPipeline's guidance 7.5 and strengths 0.8 and 1.0. Steps are ours (25) where diffusers
    /// has 50.
    pub fn defaults(&self) -> RunDefaults {
        let (img2img_strength, inpaint_strength) = match self.xl {
            Some(_) => (0.3, 0.9999),
            None => (0.8, 1.0),
        };
        let (steps, guidance) = match (&self.guidance_embedding, &self.xl) {
            (Some(_), _) => (4, 8.5),
            (None, Some(_)) => (25, 5.0),
            (None, None) => (25, 7.5),
        };
        RunDefaults {
            steps,
            guidance,
            img2img_strength,
            inpaint_strength,
        }
    }

    /// diffusers' default size: `unet.config.sample_size * vae_scale_factor`, else 512.
    pub fn default_size(&self) -> (usize, usize) {
        match self.unet_sample_size {
            Some(s) => (s * self.vae_factor.value, s * self.vae_factor.value),
            None => (512, 512),
        }
    }

    /// A short name for PNG metadata: the folder's name.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_facts_from_configs_and_falls_back_without_them() {
        let opt = ModelProfile::load(Path::new("onnx/sd-tiny-optimum")).unwrap();
        assert_eq!(opt.layout, Layout::Optimum);
        assert_eq!(opt.vae_factor.value, 8);
        assert_eq!(opt.default_size(), (64, 64));
        assert_eq!(opt.latent_channels.as_ref().map(|c| c.value), Some(4));
        assert_eq!(opt.default_scheduler, Some(SchedulerKind::Pndm));
        let conv = ModelProfile::load(Path::new("onnx/sd-tiny-convert")).unwrap();
        assert_eq!(conv.layout, Layout::DiffusersConvert);
        assert!(conv.latent_channels.is_none());
        assert_eq!(conv.default_size(), (512, 512));
        assert_eq!(conv.unet.external_data.len(), 1);
        assert!((conv.vae_scaling_factor.value - 0.18215).abs() < 1e-9);
        // The tiny UNet halves the latent once: sizes must be multiples of 16, from its config or (convert
        // layout, no config) from the one Resize node in its graph.
        assert_eq!(opt.size_multiple.value, 16);
        assert!(opt.size_multiple.source.contains("config.json"));
        assert_eq!(conv.size_multiple.value, 16);
        assert!(conv.size_multiple.source.contains("Resize"));
    }

    #[test]
    fn defaults_follow_the_diffusers_pipeline_of_the_model() {
        let d = |dir: &str| ModelProfile::load(Path::new(dir)).unwrap().defaults();
        let sd = d("onnx/sd-tiny-optimum");
        assert_eq!((sd.steps, sd.guidance), (25, 7.5));
        assert_eq!((sd.img2img_strength, sd.inpaint_strength), (0.8, 1.0));
        let lcm = d("onnx/sd-tiny-lcm-optimum");
        assert_eq!((lcm.steps, lcm.guidance), (4, 8.5));
        let xl = d("onnx/sdxl-tiny-optimum");
        assert_eq!((xl.steps, xl.guidance), (25, 5.0));
        assert_eq!((xl.img2img_strength, xl.inpaint_strength), (0.3, 0.9999));
    }

    #[test]
    fn scaling_factor_comes_from_the_vae_config() {
        let tmp = std::env::temp_dir().join(format!("sdonnx-profile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for c in ["text_encoder", "unet", "vae_decoder", "tokenizer"] {
            std::fs::create_dir_all(tmp.join(c)).unwrap();
            if c != "tokenizer" {
                std::fs::write(tmp.join(c).join("model.onnx"), b"").unwrap();
            }
        }
        std::fs::write(
            tmp.join("vae_decoder/config.json"),
            r#"{"scaling_factor": 0.13025, "block_out_channels": [1,2,3]}"#,
        )
        .unwrap();
        let p = ModelProfile::load(&tmp).unwrap();
        assert!((p.vae_scaling_factor.value - 0.13025).abs() < 1e-7);
        assert_eq!(p.vae_factor.value, 4);
        // An unreadable UNet graph and no UNet config: only the VAE factor is known.
        assert_eq!(p.size_multiple.value, 4);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
