//! A1111's chunking of a parsed prompt into 77-token windows: a port of
//! `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` and the padding of `process_tokens`
//! (stable-diffusion-webui `modules/sd_hijack_clip.py`).
//!
//! Each chunk is BOS + 75 tokens + EOS, padded with EOS to 75 (then, where the tokenizer's pad token is not EOS,
//! as SD 2.x's and SDXL's second tokenizer, everything after the first EOS becomes the pad id). A chunk that
//! fills up while a comma lies within the last [`COMMA_BACKTRACK`] tokens is cut after that comma, and the
//! words after it move to the next chunk. `BREAK` ends a chunk. A textual-inversion embedding's vectors never
//! straddle two chunks.

/// Prompt tokens per chunk (77 with BOS and EOS).
pub const CHUNK_TOKENS: usize = 75;
/// A1111's `comma_padding_backtrack` default.
pub const COMMA_BACKTRACK: usize = 20;

/// What one parsed piece of text became: token ids, and runs of ids that stand for an embedding's vectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// One BPE token.
    Token(i64),
    /// A textual-inversion embedding: its vectors' ids, kept in one chunk.
    Vectors(Vec<i64>),
}

/// The ids that shape chunks.
#[derive(Clone, Copy, Debug)]
pub struct Specials {
    /// Start of text.
    pub bos: i64,
    /// End of text (also what a chunk is filled with before padding).
    pub eos: i64,
    /// The tokenizer's pad token (EOS on SD 1.x).
    pub pad: i64,
    /// `,</w>`, if the vocabulary has it.
    pub comma: Option<i64>,
}

/// 77 ids and their weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// BOS, 75 tokens or fill, EOS; padded as the tokenizer pads.
    pub ids: Vec<i64>,
    /// Each id's weight (1 for BOS, EOS and fill), as f32 as A1111's `torch.asarray` makes them.
    pub weights: Vec<f32>,
}

impl Chunk {
    /// Whether any weight differs from 1 (when none does, emphasis changes nothing).
    pub fn weighted(&self) -> bool {
        self.weights.iter().any(|&w| w != 1.0)
    }
}

/// One piece of a parsed prompt, tokenized: its items and weight, or a `BREAK`.
#[derive(Clone, Debug)]
pub enum Tokenized {
    /// Items with their weight.
    Text(Vec<Item>, f64),
    /// Start a new chunk.
    Break,
}

struct Builder {
    specials: Specials,
    chunks: Vec<Chunk>,
    ids: Vec<i64>,
    weights: Vec<f32>,
    last_comma: Option<usize>,
}

impl Builder {
    fn next_chunk(&mut self) {
        let s = self.specials;
        let fill = CHUNK_TOKENS.saturating_sub(self.ids.len());
        let mut ids = Vec::with_capacity(CHUNK_TOKENS + 2);
        ids.push(s.bos);
        ids.append(&mut self.ids);
        ids.extend(std::iter::repeat_n(s.eos, fill));
        ids.push(s.eos);
        if s.pad != s.eos
            && let Some(end) = ids.iter().position(|&i| i == s.eos)
        {
            ids[end + 1..].fill(s.pad);
        }
        let mut weights = Vec::with_capacity(CHUNK_TOKENS + 2);
        weights.push(1.0);
        weights.append(&mut self.weights);
        weights.extend(std::iter::repeat_n(1.0, fill + 1));
        self.chunks.push(Chunk { ids, weights });
        self.last_comma = None;
    }
}

/// Lay `pieces` out in chunks (at least one).
pub fn chunks(pieces: &[Tokenized], specials: Specials) -> Vec<Chunk> {
    let mut b = Builder {
        specials,
        chunks: Vec::new(),
        ids: Vec::new(),
        weights: Vec::new(),
        last_comma: None,
    };
    for piece in pieces {
        let (items, weight) = match piece {
            Tokenized::Break => {
                b.next_chunk();
                continue;
            }
            Tokenized::Text(items, w) => (items, *w as f32),
        };
        for item in items {
            let first = match item {
                Item::Token(id) => Some(*id),
                Item::Vectors(v) => v.first().copied(),
            };
            if first.is_some() && first == specials.comma {
                b.last_comma = Some(b.ids.len());
            } else if let Some(comma) = b.last_comma
                && b.ids.len() == CHUNK_TOKENS
                && b.ids.len() - comma <= COMMA_BACKTRACK
            {
                // Move what follows the last comma to the next chunk.
                let at = comma + 1;
                let ids = b.ids.split_off(at);
                let weights = b.weights.split_off(at);
                b.next_chunk();
                b.ids = ids;
                b.weights = weights;
            }
            if b.ids.len() == CHUNK_TOKENS {
                b.next_chunk();
            }
            match item {
                Item::Token(id) => {
                    b.ids.push(*id);
                    b.weights.push(weight);
                }
                Item::Vectors(v) => {
                    if b.ids.len() + v.len() > CHUNK_TOKENS {
                        b.next_chunk();
                    }
                    b.ids.extend_from_slice(v);
                    b.weights.extend(std::iter::repeat_n(weight, v.len()));
                }
            }
        }
    }
    if !b.ids.is_empty() || b.chunks.is_empty() {
        b.next_chunk();
    }
    b.chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Specials = Specials {
        bos: 1,
        eos: 2,
        pad: 2,
        comma: Some(9),
    };

    fn text(ids: &[i64], w: f64) -> Tokenized {
        Tokenized::Text(ids.iter().map(|&i| Item::Token(i)).collect(), w)
    }

    #[test]
    fn short_prompts_are_one_padded_chunk() {
        let c = chunks(&[text(&[5, 6], 1.0)], S);
        assert_eq!(c.len(), 1);
        assert_eq!(&c[0].ids[..4], &[1, 5, 6, 2]);
        assert_eq!(c[0].ids.len(), 77);
        assert!(c[0].ids[3..].iter().all(|&i| i == 2));
        assert!(!c[0].weighted());
        let empty = chunks(&[text(&[], 1.0)], S);
        assert_eq!(empty.len(), 1);
        assert_eq!(&empty[0].ids[..3], &[1, 2, 2]);
    }

    #[test]
    fn sd2_pads_after_the_first_end() {
        let c = chunks(&[text(&[5], 1.0)], Specials { pad: 0, ..S });
        assert_eq!(&c[0].ids[..4], &[1, 5, 2, 0]);
        assert_eq!(c[0].ids[76], 0);
    }

    #[test]
    fn long_prompts_split_at_75_and_backtrack_to_a_comma() {
        let long: Vec<i64> = (0..80).map(|i| 100 + i).collect();
        let c = chunks(&[text(&long, 1.0)], S);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].ids[75], 174);
        assert_eq!(c[1].ids[1], 175);
        // A comma 10 tokens before the end: the 10 tokens after it move on.
        let mut with_comma = long.clone();
        with_comma[64] = 9;
        let c = chunks(&[text(&with_comma, 1.3)], S);
        assert_eq!(c[0].ids[65], 9);
        assert_eq!(&c[0].ids[66..], &[2; 11]);
        assert_eq!(c[0].weights[65], 1.3);
        assert_eq!(c[0].weights[66], 1.0);
        assert_eq!(c[1].ids[1], 165);
        // Further back than 20 tokens: no backtrack.
        with_comma[64] = 164;
        with_comma[40] = 9;
        assert_eq!(chunks(&[text(&with_comma, 1.0)], S)[0].ids[75], 174);
    }

    #[test]
    fn breaks_and_embeddings() {
        let c = chunks(&[text(&[5], 1.0), Tokenized::Break, text(&[6], 1.0)], S);
        assert_eq!(c.len(), 2);
        assert_eq!(&c[1].ids[..3], &[1, 6, 2]);
        let mut items: Vec<Item> = (0..73).map(|i| Item::Token(100 + i)).collect();
        items.push(Item::Vectors(vec![500, 501, 502, 503]));
        let c = chunks(&[Tokenized::Text(items, 0.9)], S);
        assert_eq!(c.len(), 2, "the 4 vectors do not fit in the 2 slots left");
        assert_eq!(&c[1].ids[1..5], &[500, 501, 502, 503]);
        assert_eq!(c[1].weights[1], 0.9);
    }
}
