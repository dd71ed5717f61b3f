//! A port of `ftfy.fix_text` (ftfy 6.3, default configuration) as transformers' slow `CLIPTokenizer` calls it
//! before BPE, so that our ids are the ones diffusers' SD 1.x/2.x tokenizers give. Why our own: no Rust crate
//! ports ftfy, and parity needs its exact tables (`tables.rs`, generated from ftfy by
//! `scripts/gen_ftfy_tables.py`) and order of steps.
//!
//! Ported, in ftfy's order and repeated until nothing changes, per line: `unescape_html` (off for the rest of
//! the text once a line has `<`, as ftfy's "auto"), `fix_encoding` (the mojibake repair, `encoding.rs`:
//! `cafÃ©` -> `café`), `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width`, `uncurl_quotes`,
//! `fix_line_breaks`, `remove_terminal_escapes`, `remove_control_chars`, NFC. (`fix_surrogates` has nothing to
//! do on Rust strings.)

mod encoding;
mod tables;

pub use encoding::{fix_encoding, is_bad};

use regex::Regex;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

fn entity_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"&#?[0-9A-Za-z]{1,24};").unwrap_or_else(|e| unreachable!("constant regex: {e}"))
    })
}

fn ansi_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\x1b\[[\d;]*[a-zA-Z]").unwrap_or_else(|e| unreachable!("constant regex: {e}"))
    })
}

/// Python's `html.unescape` of a whole `&#...;` reference, or `None` where it would leave a `;` (ftfy then keeps
/// the text as it was).
fn numeric_reference(body: &str) -> Option<String> {
    let (digits, radix) = match body.strip_prefix(['x', 'X']) {
        Some(h) => (h, 16),
        None => (body, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let num = digits
        .chars()
        .try_fold(0u64, |a, c| {
            a.checked_mul(radix as u64)?
                .checked_add(c.to_digit(radix)? as u64)
        })
        .unwrap_or(u64::MAX);
    // html._invalid_charrefs, then surrogates and out-of-range values, then html._invalid_codepoints.
    let c = match num {
        0x00 => Some('\u{fffd}'),
        0x0d => Some('\r'),
        0x80..=0x9f => char::from_u32(num as u32).map(c1_as_1252),
        0xd800..=0xdfff | 0x11_0000.. => Some('\u{fffd}'),
        0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => None,
        n if n & 0xfffe == 0xfffe => None,
        n => char::from_u32(n as u32),
    };
    Some(c.map(String::from).unwrap_or_default())
}

fn unescape_html(text: &str) -> String {
    entity_re()
        .replace_all(text, |m: &regex::Captures| {
            let t = &m[0];
            if let Ok(i) = tables::HTML_ENTITIES.binary_search_by(|(k, _)| (*k).cmp(t)) {
                return tables::HTML_ENTITIES[i].1.to_string();
            }
            match t.strip_prefix("&#").and_then(|b| b.strip_suffix(';')) {
                Some(body) => numeric_reference(body).unwrap_or_else(|| t.to_string()),
                None => t.to_string(),
            }
        })
        .into_owned()
}

/// `fix_c1_controls` for one character: U+0080..U+009F as Windows-1252 reads the byte (ftfy's sloppy codec).
pub(crate) fn c1_as_1252(c: char) -> char {
    match c as u32 {
        n @ 0x80..=0x9f => tables::C1_AS_1252[(n - 0x80) as usize],
        _ => c,
    }
}

fn lookup(table: &[(u32, &'static str)], c: char) -> Option<&'static str> {
    table
        .binary_search_by_key(&(c as u32), |(k, _)| *k)
        .ok()
        .map(|i| table[i].1)
}

/// One pass of the character-level steps, in ftfy's order.
fn char_steps(text: &str) -> String {
    // fix_c1_controls, then per character fix_latin_ligatures, fix_character_width and uncurl_quotes: no
    // ligature's letters are width forms, and what either gives is uncurled, so one pass is ftfy's three.
    let uncurl = |c: char| match c {
        '\u{02bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars().map(c1_as_1252) {
        match lookup(&tables::LIGATURES, c).or_else(|| lookup(&tables::WIDTH_MAP, c)) {
            Some(s) => out.extend(s.chars().map(uncurl)),
            None => out.push(uncurl(c)),
        }
    }
    let text = out;
    // fix_line_breaks
    let text = text
        .replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{0085}'], "\n");
    // remove_terminal_escapes, remove_control_chars
    let text = ansi_re().replace_all(&text, "");
    text.chars()
        .filter(|&c| tables::CONTROL_CHARS.binary_search(&(c as u32)).is_err())
        .collect()
}

fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    // Each pass can only shorten the text or change characters; ftfy loops until a fixed point too. Bounded
    // all the same: an entity can produce another only so many times.
    for _ in 0..16 {
        let orig = text.clone();
        if unescape {
            text = unescape_html(&text);
        }
        text = encoding::fix_encoding(&text);
        text = char_steps(&text);
        text = text.nfc().collect();
        if text == orig {
            break;
        }
    }
    text
}

/// `ftfy.fix_text(text)` with ftfy's default configuration.
pub fn fix_text(text: &str) -> String {
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fix_text;

    /// ftfy's own doctests for the steps ported.
    #[test]
    fn ftfy_doctests() {
        assert_eq!(fix_text("&lt;tag&gt;"), "<tag>");
        assert_eq!(fix_text("&Jscr;ohn &HilbertSpace;ancock"), "𝒥ohn ℋancock");
        assert_eq!(fix_text("&checkmark;"), "✓");
        assert_eq!(fix_text("P&EACUTE;REZ"), "PÉREZ");
        assert_eq!(fix_text("BUNDESSTRA&SZLIG;E"), "BUNDESSTRASSE");
        assert_eq!(
            fix_text("&ntilde; &Ntilde; &NTILDE; &nTILDE;"),
            "ñ Ñ Ñ &nTILDE;"
        );
        assert_eq!(
            fix_text("Broken text&hellip; it&#x2019;s ﬂubberiﬁc!"),
            "Broken text… it's flubberific!"
        );
        assert_eq!(fix_text("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
        assert_eq!(fix_text("ｕﾀｰﾝ"), "uターン");
        assert_eq!(fix_text("\u{1b}[36;44mI'm blue\u{1b}[0m"), "I'm blue");
        assert_eq!(fix_text("a\r\nb\rc\u{2028}d"), "a\nb\nc\nd");
        assert_eq!(fix_text("<b>&amp;</b> &amp;"), "<b>&amp;</b> &amp;");
        assert_eq!(
            fix_text("&#39;&#x1F600;&#12abc;&#0;"),
            "'😀&#12abc;\u{fffd}"
        );
    }
}
