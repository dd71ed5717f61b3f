//! Stage 1: text to UNet conditioning. Tokenize, run the text encoder(s), and lay the embeddings out for the
//! UNet: `[uncond x B, cond x B]` when guiding (as diffusers concatenates them), plus the named 2-D inputs some
//! families add (the guidance embedding of LCM UNets, SDXL's `text_embeds` and `time_ids`).
//!
//! [`PromptEmbeds`] is the seam between the two halves: [`crate::pipeline::Pipeline::encode_prompt`] makes them from text (where prompt
//! weighting and textual inversion will plug in), and a caller may pass its own instead (diffusers'
//! `prompt_embeds`, `negative_prompt_embeds`, `pooled_prompt_embeds`, `negative_pooled_prompt_embeds`).

use crate::error::{Error, Result};
use crate::graphs::Layer;
use crate::pipeline::family::{Family, Guidance, TextConditioning};
use crate::pipeline::limits;
use crate::pipeline::sessions::Sessions;
use crate::profile::ModelProfile;
use crate::prompt::chunk::Chunk;
use crate::prompt::{self, PromptSyntax, TextOptions, Triggers};
use crate::tokenizer::ClipTokenizer;
use ndarray::{Array2, Array3, Axis, concatenate};

/// One prompt's embeddings, as the text encoders give them (batch 1).
#[derive(Clone, Debug)]
pub struct PromptEmbeds {
    /// The prompt's hidden states, (1, 77 x chunks, width).
    pub cond: Array3<f32>,
    /// The negative prompt's (or empty prompt's, or zeros on SDXL), the same width (its own number of
    /// chunks); `None` when the run is not guided.
    pub uncond: Option<Array3<f32>>,
    /// SDXL: the second encoder's pooled projection of the prompt, (1, projection).
    pub pooled: Option<Array2<f32>>,
    /// SDXL: the same for the unconditional half.
    pub uncond_pooled: Option<Array2<f32>>,
}

/// What the UNet is conditioned on for a whole run.
pub(crate) struct Conditioning {
    /// `encoder_hidden_states`, batched: `[uncond x B, cond x B]`, or only the cond half when the halves
    /// differ in length (see `uncond_context`).
    pub context: Array3<f32>,
    /// The unconditional half (x B) when it has a different number of chunks than the prompt's: the UNet then
    /// runs on each half separately, as A1111 does by default.
    pub uncond_context: Option<Array3<f32>>,
    /// Named 2-D inputs besides the text embeddings.
    pub extras: Vec<(&'static str, Array2<f32>)>,
}

/// The tokenizers of a model (SDXL has two), and the textual-inversion triggers in each one's ids.
pub(crate) struct Tokenizers {
    pub first: ClipTokenizer,
    pub second: Option<ClipTokenizer>,
    pub triggers: [Triggers; 2],
}

impl Tokenizers {
    pub(crate) fn load(profile: &ModelProfile) -> Result<Self> {
        let first = ClipTokenizer::from_dir(&profile.tokenizer_dir)?;
        fits(&first, &profile.tokenizer_dir, &profile.text_encoder)?;
        let second = match &profile.xl {
            Some(xl) => {
                let t = ClipTokenizer::from_dir(&xl.tokenizer_2_dir)?;
                fits(&t, &xl.tokenizer_2_dir, &xl.text_encoder_2)?;
                Some(t)
            }
            None => None,
        };
        Ok(Tokenizers {
            first,
            second,
            triggers: Default::default(),
        })
    }
}

/// Every id the tokenizer produces must index the encoder's embedding table (`vocab_size` in its config), or
/// ONNX Runtime fails inside the graph on the first prompt that uses one.
fn fits(
    tok: &ClipTokenizer,
    dir: &std::path::Path,
    encoder: &crate::profile::Component,
) -> Result<()> {
    let table = encoder
        .config
        .as_ref()
        .and_then(|c| c["vocab_size"].as_u64());
    match table {
        Some(n) if tok.max_id() >= n as i64 => Err(Error::model(
            dir,
            format!(
                "produces ids up to {} but {} has a {n}-token embedding table (vocab_size): the tokenizer is not \
                 this encoder's",
                tok.max_id(),
                encoder.name
            ),
        )),
        _ => Ok(()),
    }
}

/// What was cut from a long prompt, itself cut to its first 80 characters (a 10,000-word prompt is one
/// line, not 69 KB).
pub(crate) fn truncation_warning(cut: &str) -> String {
    const SHOWN: usize = 80;
    let words = cut.split_whitespace().count();
    match cut.char_indices().nth(SHOWN) {
        None => format!("prompt longer than 77 CLIP tokens; this part was cut: \"{cut}\""),
        Some((at, _)) => format!(
            "prompt longer than 77 CLIP tokens; {words} words were cut, starting \"{}...\"",
            &cut[..at]
        ),
    }
}

/// One text through the family's encoders: (hidden states (1, 77 x chunks, width), pooled projection for
/// SDXL). Plain syntax is diffusers' `encode_prompt` (77 tokens, the rest cut and warned about); A1111 syntax
/// runs each 75-token chunk through the encoder(s), applies its weights and concatenates the chunks along the
/// sequence (SDXL: the pooled projection is the first chunk's, as A1111 takes it).
fn embed(
    sessions: &mut Sessions,
    profile: &ModelProfile,
    tokenizers: &Tokenizers,
    family: Family,
    text: &str,
    opts: &TextOptions,
    warnings: &mut Vec<String>,
) -> Result<(Array3<f32>, Option<Array2<f32>>)> {
    let second_tok = match family.text {
        TextConditioning::Sd => None,
        TextConditioning::Sdxl { .. } => Some(tokenizers.second.as_ref().ok_or_else(|| {
            Error::model(&profile.dir, "has no tokenizer_2 (not an SDXL folder)")
        })?),
    };
    // Per chunk: the first tokenizer's ids and weights, and the second's (SDXL).
    let [triggers, triggers_2] = &tokenizers.triggers;
    let (first, second): (Vec<Chunk>, Vec<Chunk>) = match opts.syntax {
        PromptSyntax::Plain => {
            let (first, cut) = prompt::plain_chunk(&tokenizers.first, text, triggers)?;
            if !cut.is_empty() {
                warnings.push(truncation_warning(&tokenizers.first.decode(&cut)));
            }
            // The second tokenizer cuts the same text: not warned about twice.
            let second = match second_tok {
                Some(t) => vec![prompt::plain_chunk(t, text, triggers_2)?.0],
                None => Vec::new(),
            };
            (vec![first], second)
        }
        PromptSyntax::A1111 => {
            let first = prompt::chunks(&tokenizers.first, text, triggers)?;
            if first.len() > limits::MAX_PROMPT_CHUNKS {
                return Err(Error::Invalid {
                    field: "prompt",
                    msg: format!(
                        "is {} chunks of 75 tokens; sd-onnx's limit is {} ({} tokens)",
                        first.len(),
                        limits::MAX_PROMPT_CHUNKS,
                        limits::MAX_PROMPT_CHUNKS * prompt::chunk::CHUNK_TOKENS
                    ),
                });
            }
            let second = match second_tok {
                Some(t) => prompt::chunks(t, text, triggers_2)?,
                None => Vec::new(),
            };
            (first, second)
        }
    };
    let mut states = Vec::with_capacity(first.len());
    let mut pooled = None;
    for (i, chunk) in first.iter().enumerate() {
        if second_tok.is_none() {
            let mut z = sessions
                .text_encoder(profile, Layer::Sd(opts.clip_skip.max(1)))?
                .encode_skip(&chunk.ids, opts.clip_skip)?;
            opts.emphasis.apply(&mut z, chunk)?;
            states.push(z);
            continue;
        }
        // SDXL: both encoders' penultimate hidden states concatenated (1, 77, w1 + w2), and the second
        // encoder's pooled projection (1, p), as `StableDiffusionXLPipeline.encode_prompt` builds them.
        let chunk_2 = second.get(i).ok_or_else(|| {
            Error::model(
                &profile.dir,
                "the two tokenizers split the prompt into different numbers of chunks",
            )
        })?;
        let (mut a, _) = sessions
            .text_encoder(profile, Layer::Xl(opts.clip_skip.max(1)))?
            .encode_penultimate(&chunk.ids, opts.clip_skip)?;
        let (mut b, p) = sessions
            .text_encoder_2(profile, Layer::Xl(opts.clip_skip.max(1)))?
            .encode_penultimate(&chunk_2.ids, opts.clip_skip)?;
        opts.emphasis.apply(&mut a, chunk)?;
        opts.emphasis.apply(&mut b, chunk_2)?;
        if i == 0 {
            pooled = Some(p.ok_or_else(|| {
                Error::model(
                    profile.dir.join("text_encoder_2"),
                    "has no `text_embeds` output (the pooled projection SDXL's UNet takes)",
                )
            })?);
        }
        states.push(concatenate(Axis(2), &[a.view(), b.view()]).map_err(|e| {
            Error::model(
                &profile.dir,
                format!("the two text encoders' hidden states do not concatenate: {e}"),
            )
        })?);
    }
    let views: Vec<_> = states.iter().map(|z| z.view()).collect();
    let context = concatenate(Axis(1), &views).map_err(|e| {
        Error::model(
            &profile.dir,
            format!("the prompt's chunks do not join: {e}"),
        )
    })?;
    Ok((context, pooled))
}

/// The texts of one run and how to read them.
pub(crate) struct Texts<'a> {
    pub prompt: &'a str,
    pub negative: Option<&'a str>,
    /// Whether the unconditional half is needed.
    pub guided: bool,
    pub opts: &'a TextOptions,
}

/// diffusers' `encode_prompt`: the prompt's embeddings, and when `guided` the negative prompt's (the empty
/// prompt's, or zeros where SDXL's `force_zeros_for_empty_prompt` says so).
pub(crate) fn encode_prompt(
    sessions: &mut Sessions,
    profile: &ModelProfile,
    tokenizers: &Tokenizers,
    texts: Texts<'_>,
    warnings: &mut Vec<String>,
) -> Result<PromptEmbeds> {
    let Texts {
        prompt,
        negative,
        guided,
        opts,
    } = texts;
    let family = profile.family();
    let (cond, pooled) = embed(
        sessions, profile, tokenizers, family, prompt, opts, warnings,
    )?;
    let (uncond, uncond_pooled) = match (guided, negative, family.text) {
        (false, _, _) => (None, None),
        (
            true,
            None,
            TextConditioning::Sdxl {
                zeros_for_empty_negative: true,
            },
        ) => (
            Some(Array3::zeros(cond.raw_dim())),
            pooled.as_ref().map(|p| Array2::zeros(p.raw_dim())),
        ),
        (true, negative, _) => {
            // diffusers' `encode_prompt` applies `clip_skip` to the prompt only; plain syntax keeps that.
            let negative_opts = match opts.syntax {
                PromptSyntax::Plain => TextOptions {
                    clip_skip: 1,
                    ..*opts
                },
                PromptSyntax::A1111 => *opts,
            };
            let (u, p) = embed(
                sessions,
                profile,
                tokenizers,
                family,
                negative.unwrap_or(""),
                &negative_opts,
                warnings,
            )
            .map_err(|e| match e {
                Error::Invalid {
                    field: "prompt",
                    msg,
                } => Error::Invalid {
                    field: "negative_prompt",
                    msg,
                },
                other => other,
            })?;
            (Some(u), p)
        }
    };
    Ok(PromptEmbeds {
        cond,
        uncond,
        pooled,
        uncond_pooled,
    })
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Invalid {
        field: "prompt_embeds",
        msg: msg.into(),
    }
}

/// `[uncond x B, cond x B]` (or `cond x B`), for any rank.
fn batched<D: ndarray::RemoveAxis>(
    uncond: Option<&ndarray::Array<f32, D>>,
    cond: &ndarray::Array<f32, D>,
    batch: usize,
) -> Result<ndarray::Array<f32, D>> {
    let mut views: Vec<_> = Vec::new();
    if let Some(u) = uncond {
        views.extend((0..batch).map(|_| u.view()));
    }
    views.extend((0..batch).map(|_| cond.view()));
    concatenate(Axis(0), &views).map_err(|e| invalid(format!("do not batch: {e}")))
}

/// Lay one prompt's embeddings out for a run of `batch` images at `width` x `height` and this guidance scale.
pub(crate) fn condition(
    family: Family,
    embeds: &PromptEmbeds,
    batch: usize,
    width: usize,
    height: usize,
    guidance: f32,
) -> Result<Conditioning> {
    let guided = family.guided(guidance);
    if embeds.cond.shape()[0] != 1 {
        return Err(invalid(format!(
            "cond has batch {}; one prompt's embeddings are (1, tokens, width)",
            embeds.cond.shape()[0]
        )));
    }
    let uncond = match (&embeds.uncond, guided) {
        (Some(u), true) if u.shape()[0] != 1 || u.shape()[2] != embeds.cond.shape()[2] => {
            return Err(invalid(format!(
                "uncond {:?} and cond {:?} differ in batch or width",
                u.shape(),
                embeds.cond.shape()
            )));
        }
        (Some(u), true) => Some(u),
        (None, true) => {
            return Err(invalid(
                "have no unconditional half, but the run is guided (guidance above 1)",
            ));
        }
        (_, false) => None,
    };
    let mut extras: Vec<(&'static str, Array2<f32>)> = Vec::new();
    if let Guidance::Embedded { dim } = family.guidance {
        extras.push((
            "timestep_cond",
            guidance_scale_embedding(guidance - 1.0, dim, batch),
        ));
    }
    let (context, uncond_context) = match uncond {
        Some(u) if u.shape() != embeds.cond.shape() => (
            batched(None, &embeds.cond, batch)?,
            Some(batched(None, u, batch)?),
        ),
        u => (batched(u, &embeds.cond, batch)?, None),
    };
    if let TextConditioning::Sdxl { .. } = family.text {
        let pooled = embeds
            .pooled
            .as_ref()
            .ok_or_else(|| invalid("have no pooled projection, which SDXL's UNet takes"))?;
        let uncond_pooled = match (guided, &embeds.uncond_pooled) {
            (true, None) => return Err(invalid("have no unconditional pooled projection")),
            (true, Some(p)) => Some(p),
            (false, _) => None,
        };
        let pooled = batched(uncond_pooled, pooled, batch)?;
        let ids = Family::time_ids(width, height);
        let rows = pooled.shape()[0];
        extras.push(("text_embeds", pooled));
        extras.push((
            "time_ids",
            Array2::from_shape_fn((rows, ids.len()), |(_, j)| ids[j]),
        ));
    }
    Ok(Conditioning {
        context,
        uncond_context,
        extras,
    })
}

/// diffusers' `get_guidance_scale_embedding(w)` (LatentConsistencyModelPipeline, StableDiffusionPipeline):
/// sinusoidal features of `w * 1000` at frequencies `10000^(-i / (dim/2 - 1))`, sines then cosines, zero-padded
/// to an odd `dim`; one row per image. In float32, as torch computes it.
pub fn guidance_scale_embedding(w: f32, dim: usize, batch: usize) -> Array2<f32> {
    let w = w * 1000.0;
    let half = dim / 2;
    let step = 10000f32.ln() / (half.max(2) - 1) as f32;
    let mut row = vec![0f32; dim];
    for i in 0..half {
        let x = w * (i as f32 * -step).exp();
        row[i] = x.sin();
        row[half + i] = x.cos();
    }
    Array2::from_shape_fn((batch, dim), |(_, j)| row[j])
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_cuts_are_summarised() {
        let short = super::truncation_warning("a red cube");
        assert!(
            short.ends_with("this part was cut: \"a red cube\""),
            "{short}"
        );
        let long = super::truncation_warning(&"word ".repeat(10_000));
        assert!(long.len() < 200, "{long}");
        assert!(long.contains("10000 words were cut"), "{long}");
    }
}
