//! The model profile: every per-model fact the pipeline needs, read once from an exported folder as it is
//! (`model_index.json`, per-component `config.json`, scheduler and tokenizer configs). Nothing else in the
//! crate decides VAE scale, latent channels, layout or scheduler defaults.

use crate::error::{Error, Result};
use crate::pipeline::Family;
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
    /// For `inspect`.
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
    /// `text_encoder`, `unet`, ...
    pub name: &'static str,
    /// Its `model.onnx`.
    pub graph: PathBuf,
    /// External-data files next to the graph (`model.onnx_data`, `weights.pb`, ...).
    pub external_data: Vec<PathBuf>,
    /// Its `config.json`, when the export wrote one.
    pub config: Option<Value>,
}

/// A fact and where it came from (for `inspect`).
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    /// The fact.
    pub value: T,
    /// Where it came from (a config key, or "default ...").
    pub source: String,
}

/// SDXL's second conditioning (diffusers' `StableDiffusionXLPipeline`): a second text encoder whose
/// penultimate hidden states are concatenated to the first's, whose pooled projection the UNet takes as
/// `text_embeds`, and the size/crop `time_ids`.
#[derive(Clone, Debug)]
pub struct XlConditioning {
    /// The second text encoder (with a projection).
    pub text_encoder_2: Component,
    /// Its tokenizer folder.
    pub tokenizer_2_dir: PathBuf,
    /// `force_zeros_for_empty_prompt`: without a negative prompt, the unconditional embeddings (both the
    /// sequence and the pooled one) are zeros instead of the empty prompt's.
    pub zeros_for_empty_negative: Sourced<bool>,
}

/// Every per-model fact the pipeline needs, read once from an exported folder.
#[derive(Clone, Debug)]
pub struct ModelProfile {
    /// The folder.
    pub dir: PathBuf,
    /// Which exporter made it.
    pub layout: Layout,
    /// The (first) text encoder.
    pub text_encoder: Component,
    /// The UNet.
    pub unet: Component,
    /// The VAE decoder.
    pub vae_decoder: Component,
    /// The VAE encoder (img2img and inpainting need it).
    pub vae_encoder: Option<Component>,
    /// An fp32 VAE decoder kept beside an fp16 one (`vae_decoder_fp32/`), used when fp16 overflows.
    pub vae_decoder_fp32: Option<Component>,
    /// The (first) tokenizer folder.
    pub tokenizer_dir: PathBuf,
    /// scheduler_config.json.
    pub scheduler_config: SchedulerConfig,
    /// The scheduler class the folder names, if we port it.
    pub default_scheduler: Option<SchedulerKind>,
    /// The `_class_name` of scheduler_config.json.
    pub scheduler_class: Option<String>,
    /// What latents are multiplied by after encoding (divided by before decoding).
    pub vae_scaling_factor: Sourced<f32>,
    /// Image pixels per latent pixel.
    pub vae_factor: Sourced<usize>,
    /// What image sizes must be multiples of: the VAE factor times 2 for each time the UNet halves the latent.
    /// An exported UNet upsamples by a fixed factor of 2 (diffusers' odd-size path is not traced), so other
    /// sizes fail inside the graph.
    pub size_multiple: Sourced<usize>,
    /// Channels of the latents the UNet denoises (4 for every Stable Diffusion family we run).
    pub latent_channels: Sourced<usize>,
    /// UNet input channels: the latent channels, or 9 for inpainting UNets (latents + mask + masked image).
    pub unet_in_channels: Sourced<usize>,
    /// Guidance-distilled UNets (LCM): the width of the guidance-scale embedding they take as `timestep_cond`
    /// (`time_cond_proj_dim`). Such a UNet is run once per step, without an unconditional pass.
    pub guidance_embedding: Option<Sourced<usize>>,
    /// The UNet's `sample_size` (default image size / VAE factor).
    pub unet_sample_size: Option<usize>,
    /// Set for SDXL folders (`text_encoder_2/`).
    pub xl: Option<XlConditioning>,
    /// `epsilon`, `v_prediction` or `sample`.
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

/// `--model models/` (a folder of model folders) is a common slip: name the models inside instead of saying
/// `models/text_encoder/model.onnx: missing`.
fn refuse_folder_of_models(dir: &Path) -> Result<()> {
    if dir.join("unet").is_dir() || dir.join("model_index.json").is_file() {
        return Ok(());
    }
    let mut inside: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("unet").is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if inside.is_empty() {
        return Ok(());
    }
    inside.sort();
    Err(Error::model(
        dir,
        format!(
            "is a folder of models, not a model; pass one of: {}",
            inside
                .iter()
                .map(|m| dir.join(m).display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// What the UNet graph itself says when no config does: its upsampling layers (the depth) and `conv_in`'s input
/// channels. The file is read once, and only when it is small enough to read at start-up (exports keep weights
/// outside model.onnx; a single-file graph of hundreds of MB is not read).
#[derive(Default)]
struct UnetGraphFacts {
    upsamplers: Option<usize>,
    conv_in_channels: Option<usize>,
}

fn unet_graph_facts(graph: &Path) -> UnetGraphFacts {
    const MAX_READ: u64 = 64 << 20;
    let small = std::fs::metadata(graph).is_ok_and(|m| m.len() <= MAX_READ);
    let Some(bytes) = small.then(|| std::fs::read(graph).ok()).flatten() else {
        return UnetGraphFacts::default();
    };
    UnetGraphFacts {
        upsamplers: crate::onnx_proto::count_ops(&bytes, &["Resize", "Upsample"]),
        conv_in_channels: crate::onnx_proto::input_conv_channels(&bytes, "sample"),
    }
}

/// SDXL's second conditioning, when the folder is an SDXL pipeline (refiners refused by name).
fn xl_conditioning(
    dir: &Path,
    index: Option<&Value>,
    class: &str,
) -> Result<Option<XlConditioning>> {
    if !(class.contains("XL") || dir.join("text_encoder_2").is_dir()) {
        return Ok(None);
    }
    // The SDXL refiner conditions on an aesthetic score and has only the second encoder: say so up
    // front instead of failing later on an input the UNet lacks.
    let aesthetic = index
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
    let zeros = index.and_then(|v| v["force_zeros_for_empty_prompt"].as_bool());
    Ok(Some(XlConditioning {
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
    }))
}

/// The VAE's scaling factor and spatial factor, from its config or SD's values.
fn vae_facts(dir: &Path, vae_cfg: Option<&Value>) -> Result<(Sourced<f32>, Sourced<usize>)> {
    let vae_scaling_factor = match vae_cfg.and_then(|c| c["scaling_factor"].as_f64()) {
        Some(v) if !(v.is_finite() && v > 0.0 && v < 1e6) => {
            return Err(Error::model(
                dir.join("vae_decoder").join("config.json"),
                format!("scaling_factor {v} is not a positive number (SD's is 0.18215)"),
            ));
        }
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
        // Stable Diffusion VAEs have 4 levels (factor 8); more than 7 is no image VAE and would overflow sizes.
        Some(n) if n > 7 => {
            return Err(Error::model(
                dir.join("vae_decoder").join("config.json"),
                format!(
                    "block_out_channels has {n} levels (SD's VAE has 4); at most 7 are supported"
                ),
            ));
        }
        Some(n) if n >= 1 => Sourced {
            value: 1 << (n - 1),
            source: "vae config.json block_out_channels".into(),
        },
        _ => Sourced {
            value: 8,
            source: "default (no VAE config.json)".into(),
        },
    };
    Ok((vae_scaling_factor, vae_factor))
}

/// The UNet attends to the text encoders' hidden states: its `cross_attention_dim` must be their width (SDXL:
/// both widths side by side), or a UNet from another model fails at its first step inside ONNX Runtime.
fn check_text_width(unet: &Component, te: &Component, xl: Option<&XlConditioning>) -> Result<()> {
    let get = |c: &Component, key: &str| c.config.as_ref().and_then(|v| v[key].as_u64());
    let (Some(cross), Some(w1)) = (get(unet, "cross_attention_dim"), get(te, "hidden_size")) else {
        return Ok(());
    };
    let width = match xl {
        None => Some(w1),
        Some(x) => get(&x.text_encoder_2, "hidden_size").map(|w2| w1 + w2),
    };
    match width {
        Some(w) if w != cross => Err(Error::model(
            &unet.graph,
            format!(
                "attends to {cross}-wide text (unet/config.json cross_attention_dim) but the text encoder{} give{} \
                 {w}: the UNet and the text encoder come from different models",
                if xl.is_some() { "s" } else { "" },
                if xl.is_some() { "" } else { "s" },
            ),
        )),
        _ => Ok(()),
    }
}

/// What the UNet's config (else its graph) says: the size multiple, latent channels, input channels.
fn unet_facts(
    unet: &Component,
    vae_cfg: Option<&Value>,
    vae_factor: &Sourced<usize>,
) -> (Sourced<usize>, Sourced<usize>, Sourced<usize>) {
    let ucfg = unet.config.as_ref();
    let config_says = |key: &str| ucfg.is_some_and(|c| !c[key].is_null());
    let graph_facts = if config_says("block_out_channels") && config_says("in_channels") {
        UnetGraphFacts::default()
    } else {
        unet_graph_facts(&unet.graph)
    };
    // diffusers' UNet2DConditionModel has one downsampler per block but the last.
    let halvings = match ucfg
        .and_then(|c| c["block_out_channels"].as_array())
        .map(|a| a.len())
    {
        // SD's UNets have 4 levels (SDXL 3); the clamp below keeps a nonsensical config from overflowing.
        Some(n) if n >= 1 => Some((n - 1, "unet/config.json block_out_channels".to_string())),
        _ => graph_facts.upsamplers.map(|n| {
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
        })
        .unwrap_or_else(|| Sourced {
            value: 4,
            source:
                "default (Stable Diffusion's 4; no config says; checked against the UNet graph)"
                    .into(),
        });
    let unet_in_channels = ucfg
        .and_then(|c| c["in_channels"].as_u64())
        .map(|v| Sourced {
            value: v as usize,
            source: "unet/config.json in_channels".into(),
        })
        .or_else(|| {
            graph_facts.conv_in_channels.map(|v| Sourced {
                value: v,
                source: "conv_in weight in unet/model.onnx (no unet config.json)".into(),
            })
        })
        .unwrap_or_else(|| Sourced {
            value: latent_channels.value,
            source: "the latent channels (nothing says otherwise; checked against the UNet graph)"
                .into(),
        });
    (size_multiple, latent_channels, unet_in_channels)
}

impl ModelProfile {
    /// Read a folder: its model_index.json, configs, scheduler and tokenizer; errors name the missing part.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::model(
                dir,
                "not a folder (pass --model DIR, an exported ONNX pipeline)",
            ));
        }
        refuse_folder_of_models(dir)?;
        let index = optional_json(&dir.join("model_index.json"))?;
        let class = index
            .as_ref()
            .and_then(|v| v["_class_name"].as_str())
            .unwrap_or("");
        let xl = xl_conditioning(dir, index.as_ref(), class)?;
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
        let (vae_scaling_factor, vae_factor) = vae_facts(dir, vae_cfg)?;
        check_text_width(&unet, &text_encoder, xl.as_ref())?;
        let (size_multiple, latent_channels, unet_in_channels) =
            unet_facts(&unet, vae_cfg, &vae_factor);
        let ucfg = unet.config.as_ref();
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

    /// What differs for this model's family (SD, SDXL, guidance-distilled): see [`Family`].
    pub fn family(&self) -> Family {
        Family::of(self)
    }

    /// Whether the UNet takes latents + mask + masked-image latents (an inpainting UNet, 9 channels on SD).
    pub fn inpainting_unet(&self) -> bool {
        self.unet_in_channels.value == 2 * self.latent_channels.value + 1
    }

    /// diffusers' default size: `unet.config.sample_size * vae_scale_factor`, else 512.
    pub fn default_size(&self) -> (usize, usize) {
        match self.unet_sample_size {
            Some(s) => (s * self.vae_factor.value, s * self.vae_factor.value),
            None => (512, 512),
        }
    }

    /// Text encoder `index` (0, or 1 for SDXL's second).
    pub fn text_encoder_component(&self, index: usize) -> Option<&Component> {
        match index {
            0 => Some(&self.text_encoder),
            1 => self.xl.as_ref().map(|x| &x.text_encoder_2),
            _ => None,
        }
    }

    /// The `config.json` of text encoder `index`, where the folder has one.
    pub fn text_encoder_config(&self, index: usize) -> Option<&serde_json::Value> {
        self.text_encoder_component(index)?.config.as_ref()
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
        assert_eq!(opt.latent_channels.value, 4);
        assert_eq!(opt.default_scheduler, Some(SchedulerKind::Pndm));
        let conv = ModelProfile::load(Path::new("onnx/sd-tiny-convert")).unwrap();
        assert_eq!(conv.layout, Layout::DiffusersConvert);
        assert!(conv.latent_channels.source.starts_with("default"));
        assert_eq!(conv.unet_in_channels.value, 4);
        assert!(conv.unet_in_channels.source.contains("conv_in"));
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
        // Values no VAE has are refused naming the file.
        for (cfg, want) in [
            (
                r#"{"scaling_factor": 0}"#,
                "scaling_factor 0 is not a positive number",
            ),
            (
                r#"{"scaling_factor": -1.5}"#,
                "scaling_factor -1.5 is not a positive number",
            ),
            (
                r#"{"block_out_channels": [1,1,1,1,1,1,1,1,1,1]}"#,
                "block_out_channels has 10 levels",
            ),
        ] {
            std::fs::write(tmp.join("vae_decoder/config.json"), cfg).unwrap();
            let e = ModelProfile::load(&tmp)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains("vae_decoder/config.json: ") && e.contains(want),
                "{e}"
            );
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
