//! A1111's attention syntax: a port of `parse_prompt_attention` (stable-diffusion-webui
//! `modules/prompt_parser.py`), quirks included, so that a prompt pasted from A1111 weighs what it weighed there.
//!
//! `(x)` multiplies x's weight by 1.1, `[x]` divides it by 1.1, `(x:w)` multiplies it by `w`; brackets nest and
//! multiply; brackets left open are closed at the end of the prompt; `\(` `\)` `\[` `\]` `\\` are literal.
//! `BREAK` (a whole word, in capitals) ends the current 75-token chunk. Weights are Python floats (f64) until
//! the chunker hands them to the text encoder's side as f32, as `torch.asarray` does in A1111.

use crate::error::{Error, Result};
use regex::Regex;
use std::sync::OnceLock;

/// One run of prompt text and its weight, or a `BREAK`.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    /// Text (possibly empty) with its weight.
    Text(String, f64),
    /// `BREAK`: start a new chunk.
    Break,
}

// The alternation order is A1111's `re_attention`; Rust's regex, like Python's `re`, takes the first
// alternative that matches at a position.
fn attention() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|\]|[^\\()\[\]:]+|:")
            .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
    })
}

fn break_word() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\s*\bBREAK\b\s*").unwrap_or_else(|e| unreachable!("constant regex: {e}"))
    })
}

/// A1111's sentinel weight for `BREAK`; kept as A1111 keeps it, so that a `BREAK` inside brackets is multiplied
/// like any text and then, no longer weighing exactly -1, is read as the word "BREAK" (as A1111 reads it).
const BREAK_WEIGHT: f64 = -1.0;

/// `text` as (text, weight) runs, adjacent runs of equal weight merged; at least one run.
///
/// A weight that is not a number (`(x:1.2.3)`) is an error naming it; A1111 fails on it too (Python's
/// `float()`).
pub fn parse_attention(text: &str) -> Result<Vec<Piece>> {
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    fn multiply(res: &mut [(String, f64)], from: usize, by: f64) {
        for r in res.iter_mut().skip(from) {
            r.1 *= by;
        }
    }
    for m in attention().captures_iter(text) {
        let part = m.get(0).map_or("", |g| g.as_str());
        let weight = m.get(1).map(|g| g.as_str());
        if let Some(lit) = part.strip_prefix('\\') {
            res.push((lit.to_string(), 1.0));
        } else if part == "(" {
            round.push(res.len());
        } else if part == "[" {
            square.push(res.len());
        } else if let (Some(w), Some(from)) = (weight, round.last().copied()) {
            let w: f64 = w.parse().map_err(|_| Error::Invalid {
                field: "prompt",
                msg: format!("`{part}`: the weight `{w}` is not a number"),
            })?;
            round.pop();
            multiply(&mut res, from, w);
        } else if let (")", Some(from)) = (part, round.last().copied()) {
            round.pop();
            multiply(&mut res, from, 1.1);
        } else if let ("]", Some(from)) = (part, square.last().copied()) {
            square.pop();
            multiply(&mut res, from, 1.0 / 1.1);
        } else {
            for (i, piece) in break_word().split(part).enumerate() {
                if i > 0 {
                    res.push(("BREAK".into(), BREAK_WEIGHT));
                }
                res.push((piece.to_string(), 1.0));
            }
        }
    }
    for from in round {
        multiply(&mut res, from, 1.1);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / 1.1);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (t, w) in res {
        match merged.last_mut() {
            Some(last) if last.1 == w => last.0.push_str(&t),
            _ => merged.push((t, w)),
        }
    }
    // Nested weights multiply: past f32's range the text encoder's output would be inf or NaN.
    if let Some((t, w)) = merged
        .iter()
        .find(|(_, w)| *w != BREAK_WEIGHT && !(*w as f32).is_finite())
    {
        return Err(Error::Invalid {
            field: "prompt",
            msg: format!("the weights of `{t}` multiply to {w:e}, beyond what a float holds"),
        });
    }
    Ok(merged
        .into_iter()
        .map(|(t, w)| {
            if t == "BREAK" && w == BREAK_WEIGHT {
                Piece::Break
            } else {
                Piece::Text(t, w)
            }
        })
        .collect())
}

/// Whether `text` uses any of the syntax (what A1111 checks before writing `Emphasis` to the infotext).
pub fn has_syntax(text: &str) -> bool {
    text.contains(['(', '[', '\\']) || break_word().is_match(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Vec<(String, f64)> {
        parse_attention(text)
            .unwrap()
            .into_iter()
            .map(|x| match x {
                Piece::Text(t, w) => (t, w),
                Piece::Break => ("BREAK".into(), -1.0),
            })
            .collect()
    }

    fn t(s: &str, w: f64) -> (String, f64) {
        (s.to_string(), w)
    }

    /// A1111's doctests for `parse_prompt_attention`, with its exact float results.
    #[test]
    fn a1111_doctests() {
        assert_eq!(p("normal text"), vec![t("normal text", 1.0)]);
        assert_eq!(
            p("an (important) word"),
            vec![t("an ", 1.0), t("important", 1.1), t(" word", 1.0)]
        );
        assert_eq!(p("(unbalanced"), vec![t("unbalanced", 1.1)]);
        assert_eq!(p(r"\(literal\]"), vec![t("(literal]", 1.0)]);
        assert_eq!(
            p("(unnecessary)(parens)"),
            vec![t("unnecessaryparens", 1.1)]
        );
        assert_eq!(
            p("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            vec![
                t("a ", 1.0),
                t("house", 1.5730000000000004),
                t(" ", 1.1),
                t("on", 1.0),
                t(" a ", 1.1),
                t("hill", 0.55),
                t(", sun, ", 1.1),
                t("sky", 1.4641000000000006),
                t(".", 1.1),
            ]
        );
    }

    #[test]
    fn breaks_escapes_and_quirks() {
        assert_eq!(
            p("a BREAK b"),
            vec![t("a", 1.0), t("BREAK", -1.0), t("b", 1.0)]
        );
        assert_eq!(
            parse_attention("a BREAK b").unwrap()[1],
            Piece::Break,
            "BREAK is a piece of its own"
        );
        // Not a whole word, or not in capitals: text.
        assert_eq!(p("aBREAK break"), vec![t("aBREAK break", 1.0)]);
        // Inside brackets A1111 multiplies BREAK's sentinel weight, and then reads it as a word.
        assert!(
            parse_attention("(a BREAK b)")
                .unwrap()
                .iter()
                .all(|x| matches!(x, Piece::Text(..)))
        );
        // `\\` is one backslash; a lone backslash escapes nothing and is dropped (A1111's `text[1:]`).
        assert_eq!(p(r"\\ and \ x"), vec![t(r"\ and  x", 1.0)]);
        assert_eq!(p(""), vec![t("", 1.0)]);
        assert_eq!(p("[a]"), vec![t("a", 1.0 / 1.1)]);
        assert_eq!(p("(a:-0.5)"), vec![t("a", -0.5)]);
        // A colon without a closing bracket is text.
        assert_eq!(p("time: 5pm"), vec![t("time: 5pm", 1.0)]);
        // A weight outside brackets is text too.
        assert_eq!(p("a:1.5)"), vec![t("a:1.5)", 1.0)]);
        assert!(parse_attention("(a:1.2.3)").is_err());
        let deep = format!("{}a{}", "(".repeat(20), ":1000)".repeat(20));
        assert!(
            parse_attention(&deep)
                .unwrap_err()
                .to_string()
                .contains("beyond what a float holds")
        );
    }

    #[test]
    fn syntax_is_detected() {
        assert!(!has_syntax("a photograph of an astronaut"));
        assert!(has_syntax("a (red) cube"));
        assert!(has_syntax("a BREAK b"));
        assert!(!has_syntax("BREAKFAST"));
    }
}
