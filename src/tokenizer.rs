//! CLIP tokenization with the `tokenizers` crate, producing the ids transformers' `CLIPTokenizer` gives:
//! `[bos] + bpe(fix_text(prompt)) + [eos]`, truncated to 77 and padded with the folder's pad token.
//!
//! The slow `CLIPTokenizer` that diffusers loads runs `ftfy.fix_text` before BPE; [`fix_text`] runs our port
//! of it ([`crate::ftfy`], mojibake repair included).

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Tokens per prompt, start and end included.
pub const MAX_LENGTH: usize = 77;
const CLIP_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// What the text encoder receives for one prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Exactly [`MAX_LENGTH`] ids.
    pub ids: Vec<i64>,
    /// The text that did not fit, if any (diffusers warns about it too).
    pub truncated: Option<String>,
}

/// A CLIP BPE tokenizer read from a model's tokenizer folder, as transformers' CLIPTokenizer encodes.
pub struct ClipTokenizer {
    inner: Tokenizer,
    vocab: HashMap<u32, String>,
    bos: i64,
    eos: i64,
    pad: i64,
    pad_token: String,
}

impl ClipTokenizer {
    /// Load from a `tokenizer/` folder: `tokenizer.json` if present, else `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let mut inner = if json.is_file() {
            Tokenizer::from_file(&json)
                .map_err(|e| Error::model(&json, format!("unreadable tokenizer: {e}")))?
        } else {
            let mut t = build_bpe(&dir.join("vocab.json"), &dir.join("merges.txt"))?;
            // transformers splits the text on every added and special token before BPE (SD 2.x's pad token
            // `!` included: `hello!` is `hello</w>`, `!`), as `tokenizer.json` folders list them.
            // Only tokens the vocabulary has: an added token with a new id would not index the encoder.
            let added: Vec<AddedToken> = read_added_tokens(dir)?
                .into_iter()
                .filter(|tok| t.token_to_id(tok).is_some())
                .map(|tok| AddedToken::from(tok, true))
                .collect();
            t.add_special_tokens(added)
                .map_err(|e| Error::model(dir, format!("added tokens: {e}")))?;
            t
        };
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::model(dir, format!("tokenizer truncation: {e}")))?;
        let pad_token = read_pad_token(dir)?.unwrap_or_else(|| EOS.to_string());
        let id = |tok: &str, file: &Path| {
            inner.token_to_id(tok).map(i64::from).ok_or_else(|| {
                Error::model(file, format!("token `{tok}` is not in the vocabulary"))
            })
        };
        let (bos, eos, pad) = (
            id(BOS, dir)?,
            id(EOS, dir)?,
            id(&pad_token, &dir.join("tokenizer_config.json"))?,
        );
        let vocab = inner
            .get_vocab(true)
            .into_iter()
            .map(|(k, v)| (v, k))
            .collect();
        Ok(ClipTokenizer {
            inner,
            vocab,
            bos,
            eos,
            pad,
            pad_token,
        })
    }

    /// The largest id the tokenizer can produce (the text encoder's embedding table must be larger).
    pub fn max_id(&self) -> i64 {
        self.vocab.keys().max().map_or(0, |&k| k as i64)
    }

    /// The vocabulary entry of `id` as the BPE has it (`cat</w>`: `</w>` ends a word), if there is one.
    pub fn token(&self, id: i64) -> Option<&str> {
        u32::try_from(id)
            .ok()
            .and_then(|i| self.vocab.get(&i))
            .map(String::as_str)
    }

    /// The start-of-text id.
    pub fn bos(&self) -> i64 {
        self.bos
    }

    /// The id of a vocabulary entry (`,</w>`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    /// `text`'s BPE ids without start, end or padding, however many (A1111 tokenizes each piece of a prompt
    /// this way: `tokenizer(texts, truncation=False, add_special_tokens=False)`).
    pub fn tokens(&self, text: &str) -> Result<Vec<i64>> {
        let cleaned = fix_text(text);
        let enc = self
            .inner
            .encode(cleaned.as_str(), false)
            .map_err(|e| Error::Usage(format!("cannot tokenize prompt: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// The end-of-text id.
    pub fn eos(&self) -> i64 {
        self.eos
    }

    /// The pad token and its id.
    pub fn pad_token(&self) -> (&str, i64) {
        (&self.pad_token, self.pad)
    }

    /// `text` as 77 ids (start, tokens, end, padding), with what was cut if it was longer.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let cleaned = fix_text(text);
        let enc = self
            .inner
            .encode(cleaned.as_str(), false)
            .map_err(|e| Error::Usage(format!("cannot tokenize prompt: {e}")))?;
        let body = enc.get_ids();
        let room = MAX_LENGTH - 2;
        let mut ids = Vec::with_capacity(MAX_LENGTH);
        ids.push(self.bos);
        ids.extend(body.iter().take(room).map(|&i| i as i64));
        ids.push(self.eos);
        ids.resize(MAX_LENGTH, self.pad);
        let truncated = (body.len() > room).then(|| {
            let cut: Vec<i64> = body[room..].iter().map(|&i| i64::from(i)).collect();
            self.decode(&cut)
        });
        Ok(Encoded { ids, truncated })
    }

    /// Token ids back to text (for the truncation warning).
    /// Token ids back to text (ids outside the vocabulary, such as embeddings', are left out).
    pub fn decode(&self, ids: &[i64]) -> String {
        let byte_of: HashMap<char, u8> = bytes_to_unicode()
            .into_iter()
            .map(|(b, c)| (c, b))
            .collect();
        let joined: String = ids
            .iter()
            .filter_map(|&i| u32::try_from(i).ok().and_then(|i| self.vocab.get(&i)))
            .map(|t| t.replace("</w>", " "))
            .collect();
        let bytes: Vec<u8> = joined
            .chars()
            .map(|c| byte_of.get(&c).copied().unwrap_or(b' '))
            .collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

/// The BPE that transformers' `CLIPTokenizerFast` converter builds from `vocab.json` + `merges.txt`.
fn build_bpe(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
    for f in [vocab, merges] {
        if !f.is_file() {
            return Err(Error::model(
                f,
                "missing (a tokenizer needs tokenizer.json, or vocab.json and merges.txt)",
            ));
        }
    }
    // An empty merges file gives character-level ids without any error from the BPE: refuse it.
    let has_merges = std::fs::read_to_string(merges)
        .map_err(|source| Error::Read {
            path: merges.to_path_buf(),
            source,
        })?
        .lines()
        .any(|l| !l.starts_with("#version") && l.split_whitespace().count() == 2);
    if !has_merges {
        return Err(Error::model(
            merges,
            "has no merges (a CLIP tokenizer's merges.txt has ~48,900 `a b` lines)",
        ));
    }
    let bpe = BPE::from_file(&path_str(vocab), &path_str(merges))
        .end_of_word_suffix("</w>".into())
        .unk_token(EOS.into())
        .build()
        .map_err(|e| Error::model(vocab, format!("unreadable BPE vocabulary: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let ws = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
        " ",
    )
    .map_err(|e| Error::model(vocab, e.to_string()))?;
    tok.with_normalizer(Some(NormSeq::new(vec![
        NFC.into(),
        ws.into(),
        Lowercase.into(),
    ])))
    .map_err(|e| Error::model(vocab, e.to_string()))?;
    let split = Split::new(
        SplitPattern::Regex(CLIP_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| Error::model(vocab, e.to_string()))?;
    tok.with_pre_tokenizer(Some(PreSeq::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])));
    tok.add_special_tokens([AddedToken::from(BOS, true), AddedToken::from(EOS, true)])
        .map_err(|e| Error::model(vocab, e.to_string()))?;
    Ok(tok)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `tokenizer_config.json` and `special_tokens_map.json` as JSON, those of them the folder has, in that order.
fn token_configs(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path: PathBuf = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        out.push(
            serde_json::from_str(&text)
                .map_err(|e| Error::model(&path, format!("invalid JSON: {e}")))?,
        );
    }
    Ok(out)
}

/// A token as these files write it: a string, or `{"content": ...}`.
fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

/// The pad token named by `tokenizer_config.json` or `special_tokens_map.json`.
fn read_pad_token(dir: &Path) -> Result<Option<String>> {
    Ok(token_configs(dir)?
        .iter()
        .find_map(|v| token_content(&v["pad_token"])))
}

/// Every added or special token a folder's `tokenizer_config.json` (`added_tokens_decoder`, the `*_token`
/// keys, `additional_special_tokens`) and `special_tokens_map.json` name.
fn read_added_tokens(dir: &Path) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for v in token_configs(dir)? {
        if let Some(o) = v["added_tokens_decoder"].as_object() {
            out.extend(o.values().filter_map(token_content));
        }
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            out.extend(token_content(&v[key]));
        }
        if let Some(a) = v["additional_special_tokens"].as_array() {
            out.extend(a.iter().filter_map(token_content));
        }
    }
    out.retain(|t| !t.is_empty());
    out.sort();
    out.dedup();
    Ok(out)
}

/// CLIP's byte -> printable character table (GPT-2's `bytes_to_unicode`).
fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .filter_map(|(b, c)| Some((b as u8, char::from_u32(c)?)))
        .collect()
}

/// What transformers' `CLIPTokenizer` does to text before BPE: `whitespace_clean(ftfy.fix_text(text))` (runs of
/// Python's whitespace to one space, stripped). Lower-casing is
/// left to the tokenizer's normalizer.
pub fn fix_text(text: &str) -> String {
    crate::ftfy::fix_text(text)
        .split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fix_text_uncurls_and_widens() {
        assert_eq!(
            fix_text("it’s “x” ﬁne ＡＢ  a\tb "),
            "it's \"x\" fine AB a b"
        );
        assert_eq!(fix_text("a &amp; b"), "a & b");
        assert_eq!(fix_text("<a> &amp;"), "<a> &amp;");
    }
}
