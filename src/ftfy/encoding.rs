//! ftfy's mojibake repair, `fix_encoding` (ftfy 6.3 `__init__._fix_encoding_one_step_and_explain` and the
//! transcoders of `fixes.py`), repeated until the text stops changing: text that ftfy's badness heuristic
//! flags is encoded back to bytes in each single-byte encoding that can represent it and decoded as UTF-8
//! (restoring spaces that were bytes A0, and sequences a sloppy codec lost); failing that, embedded mojibake is
//! fixed piece by piece, Latin-1 read as Windows-1252, and C1 controls decoded as Windows-1252.

use super::tables;
use regex::Regex;
use regex::bytes::Regex as BytesRegex;
use std::sync::OnceLock;

fn compiled(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| {
        Regex::new(pattern).unwrap_or_else(|e| unreachable!("ftfy table regex: {e}"))
    })
}

fn badness() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    compiled(&RE, tables::BADNESS_RE)
}

fn detector() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    compiled(&RE, tables::UTF8_DETECTOR_RE)
}

fn not_after() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    compiled(&RE, &format!("^{}$", tables::UTF8_DETECTOR_NOT_AFTER))
}

fn bytes_re(cell: &'static OnceLock<BytesRegex>, pattern: &str) -> &'static BytesRegex {
    cell.get_or_init(|| {
        BytesRegex::new(pattern).unwrap_or_else(|e| unreachable!("constant regex: {e}"))
    })
}

/// `chardata.ALTERED_UTF8_RE`: UTF-8 sequences with byte A0 turned into a space.
fn altered_utf8() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    bytes_re(
        &RE,
        r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
    )
}

/// `chardata.LOSSY_UTF8_RE`: UTF-8 sequences a sloppy codec lost bytes of (byte 1A or `?`).
fn lossy_utf8() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    bytes_re(
        &RE,
        r"(?-u)[\xc2-\xdf][\x1a]|[\xc2-\xc3][?]|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]|\x1a",
    )
}

/// `badness.is_bad`.
pub fn is_bad(text: &str) -> bool {
    badness().is_match(text)
}

/// `text.encode(encoding)` for one of `CHARMAP_ENCODINGS`, or `None` where a character has no byte there.
fn encode(text: &str, table: &[char; 256]) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| {
            if (c as u32) < 0x80 && c != '\u{1a}' {
                Some(c as u8)
            } else {
                (0x80..0x100)
                    .chain([0x1a])
                    .find(|&b| table[b] == c)
                    .map(|b| b as u8)
            }
        })
        .collect()
}

/// `fixes.restore_byte_a0`.
fn restore_byte_a0(b: &[u8]) -> Vec<u8> {
    // A_GRAVE_WORD_RE: b"\xc3 (?! |quele|quela|quilo|s )" -> b"\xc3\xa0 ".
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0xc3 && b.get(i + 1) == Some(&b' ') {
            let rest = &b[i + 2..];
            let excluded = [&b" "[..], b"quele", b"quela", b"quilo", b"s "]
                .iter()
                .any(|w| rest.starts_with(w));
            if !excluded {
                out.extend_from_slice(b"\xc3\xa0 ");
                i += 2;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    altered_utf8()
        .replace_all(&out, |m: &regex::bytes::Captures| {
            m[0].iter()
                .map(|&x| if x == b' ' { 0xa0 } else { x })
                .collect::<Vec<u8>>()
        })
        .into_owned()
}

/// ftfy's `utf-8-variants` codec: UTF-8, plus CESU-8 surrogate pairs and Java's `C0 80` for NUL.
fn decode_utf8_variants(b: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(b.len());
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        let pair = b.get(i..i + 6).filter(|s| {
            s[0] == 0xed
                && (0xa0..=0xaf).contains(&s[1])
                && (0x80..=0xbf).contains(&s[2])
                && s[3] == 0xed
                && (0xb0..=0xbf).contains(&s[4])
                && (0x80..=0xbf).contains(&s[5])
        });
        if let Some(s) = pair {
            out.push_str(std::str::from_utf8(&b[start..i]).ok()?);
            let hi = 0xd000 + (((s[1] & 0x3f) as u32) << 6) + (s[2] & 0x3f) as u32;
            let lo = 0xd000 + (((s[4] & 0x3f) as u32) << 6) + (s[5] & 0x3f) as u32;
            out.push(char::from_u32(
                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00),
            )?);
            i += 6;
            start = i;
        } else if b[i] == 0xc0 && b.get(i + 1) == Some(&0x80) {
            out.push_str(std::str::from_utf8(&b[start..i]).ok()?);
            out.push('\0');
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push_str(std::str::from_utf8(&b[start..]).ok()?);
    Some(out)
}

/// `fixes.decode_inconsistent_utf8`: mojibake embedded in otherwise fine text, fixed where it is found.
fn decode_inconsistent_utf8(text: &str) -> String {
    let total = text.chars().count();
    let mut out = String::with_capacity(text.len());
    let (mut pos, mut copied) = (0, 0);
    while let Some(m) = detector().find_at(text, pos) {
        // The lookbehind: the match must not follow one of these characters.
        let prev = text[..m.start()].chars().next_back();
        if prev.is_some_and(|c| not_after().is_match(c.encode_utf8(&mut [0; 4]))) {
            pos = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let sub = m.as_str();
        out.push_str(&text[copied..m.start()]);
        if sub.chars().count() < total && is_bad(sub) {
            out.push_str(&fix_encoding(sub));
        } else {
            out.push_str(sub);
        }
        copied = m.end();
        pos = if m.end() > m.start() {
            m.end()
        } else {
            m.end() + 1
        };
        if pos > text.len() {
            break;
        }
    }
    out.push_str(&text[copied.min(text.len())..]);
    out
}

fn one_step(text: &str) -> String {
    if text.is_empty() || text.is_ascii() || !is_bad(text) {
        return text.to_string();
    }
    let mut possible: Vec<&str> = Vec::new();
    for (name, table) in tables::CHARMAP_ENCODINGS.iter() {
        let Some(mut bytes) = encode(text, table) else {
            continue;
        };
        possible.push(name);
        if *name != "macroman" && altered_utf8().is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if name.starts_with("sloppy") {
            bytes = lossy_utf8()
                .replace_all(&bytes, "\u{fffd}".as_bytes())
                .into_owned();
        }
        let fixed = if bytes.contains(&0xed) || bytes.contains(&0xc0) {
            decode_utf8_variants(&bytes)
        } else {
            String::from_utf8(bytes).ok()
        };
        if let Some(fixed) = fixed {
            return fixed;
        }
    }
    if detector().is_match(text) {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return fixed;
        }
    }
    // ftfy asks whether "windows-1252" is among the possible encodings, which lists "sloppy-windows-1252":
    // never, so Latin-1 text is always tried as strict Windows-1252.
    if possible.contains(&"latin-1") {
        let strict: Option<String> = text
            .chars()
            .map(|c| match c as u32 {
                0x81 | 0x8d | 0x8f | 0x90 | 0x9d => None,
                0x80..=0x9f => Some(super::c1_as_1252(c)),
                _ => Some(c),
            })
            .collect();
        if let Some(fixed) = strict
            && fixed != text
        {
            return fixed;
        }
    }
    if text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return text.chars().map(super::c1_as_1252).collect();
    }
    text.to_string()
}

/// `ftfy.fix_encoding`.
pub fn fix_encoding(text: &str) -> String {
    let mut text = text.to_string();
    // Each step either returns its input or changes it; ftfy loops until it stops changing.
    for _ in 0..32 {
        let next = one_step(&text);
        if next == text {
            break;
        }
        text = next;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::fix_encoding;

    /// ftfy's own doctests of fix_encoding.
    #[test]
    fn ftfy_doctests() {
        assert_eq!(fix_encoding("sÃ³"), "só");
        assert_eq!(fix_encoding("voilÃ le travail"), "voilà le travail");
        assert_eq!(fix_encoding("âœ” No problems"), "✔ No problems");
        assert_eq!(fix_encoding("cafÃ© â€œquotedâ€\u{9d}"), "café “quoted”");
        assert_eq!(fix_encoding("plain text"), "plain text");
    }
}
