//! Prompts as people write them: A1111's attention syntax ([`parse`]), its 75-token chunks ([`chunk`]) and its
//! emphasis ([`Emphasis`]), ported from stable-diffusion-webui's `modules/prompt_parser.py`,
//! `modules/sd_hijack_clip.py` and `modules/sd_emphasis.py`. No ONNX Runtime here: the pipeline's conditioning
//! stage runs the text encoder on each chunk and calls [`Emphasis::apply`] on what it returns.

pub mod chunk;
pub mod networks;
pub mod parse;

use crate::error::{Error, Result};
use crate::tokenizer::ClipTokenizer;
use chunk::{Chunk, Item, Specials, Tokenized};
use ndarray::Array3;
use parse::Piece;

/// How prompt text is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PromptSyntax {
    /// A1111's: `(x:1.2)`, `[x]`, `\(`, `BREAK`, prompts of any length in 75-token chunks.
    #[default]
    A1111,
    /// diffusers': the text as it is, cut at 77 tokens.
    Plain,
}

impl PromptSyntax {
    /// Every syntax, by name.
    pub const ALL: [PromptSyntax; 2] = [PromptSyntax::A1111, PromptSyntax::Plain];

    /// The name `--prompt-syntax` takes.
    pub fn name(self) -> &'static str {
        match self {
            PromptSyntax::A1111 => "a1111",
            PromptSyntax::Plain => "plain",
        }
    }

    /// From its name (any case).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// How weights change the text encoder's output (A1111's "Emphasis" setting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Emphasis {
    /// A1111's default, "Original": multiply each token's hidden state by its weight, then scale the chunk
    /// back to its original mean.
    #[default]
    Original,
    /// A1111's "No norm": multiply, without restoring the mean (A1111 suggests it for SDXL).
    NoNorm,
}

impl Emphasis {
    /// Every variant.
    pub const ALL: [Emphasis; 2] = [Emphasis::Original, Emphasis::NoNorm];

    /// The name `--emphasis` takes.
    pub fn name(self) -> &'static str {
        match self {
            Emphasis::Original => "original",
            Emphasis::NoNorm => "no-norm",
        }
    }

    /// A1111's name (its infotext's `Emphasis` value).
    pub fn a1111_name(self) -> &'static str {
        match self {
            Emphasis::Original => "Original",
            Emphasis::NoNorm => "No norm",
        }
    }

    /// From ours or A1111's name, any case.
    pub fn parse(name: &str) -> Option<Self> {
        let n = name.trim();
        Self::ALL
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(n) || e.a1111_name().eq_ignore_ascii_case(n))
    }

    /// Apply `chunk`'s weights to `z`, one chunk's hidden states (1, 77, width), as `sd_emphasis` does in
    /// float32. Unweighted chunks are returned untouched (A1111's arithmetic would give the same values).
    pub fn apply(self, z: &mut Array3<f32>, chunk: &Chunk) -> Result<()> {
        if !chunk.weighted() {
            return Ok(());
        }
        let (_, tokens, _) = z.dim();
        if tokens != chunk.weights.len() {
            return Err(Error::Usage(format!(
                "the text encoder returned {tokens} hidden states for a {}-token chunk",
                chunk.weights.len()
            )));
        }
        let original = mean(z);
        for (mut row, &w) in z.axis_iter_mut(ndarray::Axis(1)).zip(&chunk.weights) {
            row.mapv_inplace(|x| x * w);
        }
        if self == Emphasis::Original {
            let now = mean(z);
            // A chunk whose mean is zero has no mean to restore (A1111 would divide by zero).
            if now != 0.0 && now.is_finite() {
                let ratio = original / now;
                z.mapv_inplace(|x| x * ratio);
            }
        }
        Ok(())
    }
}

/// torch's float32 `mean()`, accumulated in f64 (torch's own reduction order differs below f32's precision).
fn mean(z: &Array3<f32>) -> f32 {
    let n = z.len().max(1) as f64;
    (z.iter().map(|&x| x as f64).sum::<f64>() / n) as f32
}

/// How the text encoders read prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextOptions {
    /// The prompt syntax.
    pub syntax: PromptSyntax,
    /// How weights apply (A1111 syntax only).
    pub emphasis: Emphasis,
    /// A1111's "Clip skip": 1 = the last layer; N = the N-th layer from the end, through the final layer
    /// norm (diffusers' `clip_skip = N - 1`). SDXL: N - 1 layers before its penultimate one. Under
    /// [`PromptSyntax::Plain`] the negative prompt is not skipped, as diffusers' `encode_prompt` does not.
    pub clip_skip: usize,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            syntax: PromptSyntax::A1111,
            emphasis: Emphasis::Original,
            clip_skip: 1,
        }
    }
}

/// The ids that shape `tok`'s chunks.
pub fn specials(tok: &ClipTokenizer) -> Specials {
    Specials {
        bos: tok.bos(),
        eos: tok.eos(),
        pad: tok.pad_token().1,
        comma: tok.token_id(",</w>"),
    }
}

/// The words that trigger textual-inversion embeddings, as token ids of one tokenizer, and the ids their
/// vectors take (A1111's `EmbeddingDatabase`: a trigger is found by its token ids in the prompt's, longest first).
#[derive(Clone, Debug, Default)]
pub struct Triggers {
    /// First token id -> the triggers starting with it, longest first.
    by_first: std::collections::HashMap<i64, Vec<Trigger>>,
}

/// (the trigger word's token ids, the ids of the embedding's vectors).
type Trigger = (Vec<i64>, Vec<i64>);

impl Triggers {
    /// `words`: each trigger word and the ids of its vectors.
    pub fn new(tok: &ClipTokenizer, words: &[(String, Vec<i64>)]) -> Result<Self> {
        let mut t = Triggers::default();
        for (word, vector_ids) in words {
            let ids = tok.tokens(word)?;
            let Some(&first) = ids.first() else { continue };
            let list = t.by_first.entry(first).or_default();
            list.push((ids, vector_ids.clone()));
            list.sort_by_key(|(ids, _)| std::cmp::Reverse(ids.len()));
        }
        Ok(t)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_first.is_empty()
    }

    /// `tokens` with every trigger replaced by its vectors.
    pub fn items(&self, tokens: &[i64]) -> Vec<Item> {
        let mut out = Vec::with_capacity(tokens.len());
        let mut i = 0;
        while i < tokens.len() {
            let found = self
                .by_first
                .get(&tokens[i])
                .and_then(|list| list.iter().find(|(ids, _)| tokens[i..].starts_with(ids)));
            match found {
                Some((ids, vectors)) => {
                    out.push(Item::Vectors(vectors.clone()));
                    i += ids.len();
                }
                None => {
                    out.push(Item::Token(tokens[i]));
                    i += 1;
                }
            }
        }
        out
    }
}

/// `text` in A1111's chunks for `tok`: parsed, each piece tokenized on its own (as A1111 calls the tokenizer
/// on the list of pieces), embeddings' triggers replaced by their vectors, laid out 75 tokens at a time.
pub fn chunks(tok: &ClipTokenizer, text: &str, triggers: &Triggers) -> Result<Vec<Chunk>> {
    // Extra-network tags (`<lora:…>`) first, as A1111 takes them out before parsing.
    let (text, _) = networks::extra_networks(text)?;
    let pieces = parse::parse_attention(&text)?;
    let mut tokenized = Vec::with_capacity(pieces.len());
    for p in pieces {
        tokenized.push(match p {
            Piece::Break => Tokenized::Break,
            Piece::Text(t, w) => Tokenized::Text(triggers.items(&tok.tokens(&t)?), w),
        });
    }
    Ok(chunk::chunks(&tokenized, specials(tok)))
}

/// `text` read plainly, as diffusers reads it: one chunk of BOS + the first 75 ids + EOS + padding
/// (embeddings' vectors in place of their triggers, as diffusers' `maybe_convert_prompt` expands them), and the
/// ids cut, if any.
pub fn plain_chunk(
    tok: &ClipTokenizer,
    text: &str,
    triggers: &Triggers,
) -> Result<(Chunk, Vec<i64>)> {
    let ids: Vec<i64> = triggers
        .items(&tok.tokens(text)?)
        .into_iter()
        .flat_map(|item| match item {
            Item::Token(id) => vec![id],
            Item::Vectors(v) => v,
        })
        .collect();
    let keep = ids.len().min(chunk::CHUNK_TOKENS);
    let s = specials(tok);
    let mut out = Vec::with_capacity(chunk::CHUNK_TOKENS + 2);
    out.push(s.bos);
    out.extend_from_slice(&ids[..keep]);
    out.push(s.eos);
    out.resize(chunk::CHUNK_TOKENS + 2, s.pad);
    let weights = vec![1.0; out.len()];
    Ok((Chunk { ids: out, weights }, ids[keep..].to_vec()))
}
