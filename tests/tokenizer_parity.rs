//! Token ids identical to transformers' `CLIPTokenizer` (with ftfy) for every prompt in
//! tests/fixtures/tokenizer_cases.json (written by scripts/make_fixtures.py), on both bundled layouts and
//! from a `tokenizer.json` (tests/fixtures/tokenizer-json, saved by transformers' CLIPTokenizerFast).

use sd_onnx::tokenizer::ClipTokenizer;
use std::path::Path;

#[test]
fn ids_match_transformers_clip_tokenizer() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/tokenizer_cases.json").unwrap(),
    )
    .unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 200);
    for layout in [
        "onnx/sd-tiny-convert/tokenizer",
        "onnx/sd-tiny-optimum/tokenizer",
    ] {
        let tok = ClipTokenizer::from_dir(Path::new(layout)).unwrap();
        let mut bad = Vec::new();
        for case in cases {
            let prompt = case["prompt"].as_str().unwrap();
            let want: Vec<i64> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            let got = tok.encode(prompt).unwrap().ids;
            if got != want {
                bad.push(format!(
                    "{prompt:?}\n  got  {:?}\n  want {:?}",
                    &got[..12],
                    &want[..12]
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{layout}: {} of {} prompts differ:\n{}",
            bad.len(),
            cases.len(),
            bad.join("\n")
        );
    }
}

#[test]
fn long_prompts_are_truncated_and_reported() {
    let tok = ClipTokenizer::from_dir(Path::new("onnx/sd-tiny-optimum/tokenizer")).unwrap();
    let enc = tok.encode(&"red ".repeat(80)).unwrap();
    assert_eq!(enc.ids.len(), 77);
    assert_eq!(enc.ids[76], 49407);
    assert_eq!(enc.truncated.as_deref(), Some("red red red red red"));
    assert!(tok.encode("a cat").unwrap().truncated.is_none());
}

/// SD 2.x tokenizers pad with `!` (id 0) instead of `<|endoftext|>`; the pad token comes from the folder.
#[test]
fn pad_token_is_read_from_tokenizer_config() {
    let dir = std::env::temp_dir().join(format!("sdonnx-pad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["vocab.json", "merges.txt", "special_tokens_map.json"] {
        std::fs::copy(
            Path::new("onnx/sd-tiny-optimum/tokenizer").join(f),
            dir.join(f),
        )
        .unwrap();
    }
    let cfg =
        std::fs::read_to_string("onnx/sd-tiny-optimum/tokenizer/tokenizer_config.json").unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["pad_token"] = "!".into();
    std::fs::write(dir.join("tokenizer_config.json"), v.to_string()).unwrap();
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.pad_token(), ("!", 0));
    let ids = tok.encode("a cat").unwrap().ids;
    assert_eq!(&ids[..5], &[49406, 320, 2368, 49407, 0]);
    assert!(ids[4..].iter().all(|&i| i == 0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A folder without tokenizer.json whose pad token is `!` (SD 2.x's, SDXL's second tokenizer): transformers'
/// `CLIPTokenizer` splits on every added and special token first, so `!` after a word is the pad token (0), not
/// `!</w>` (256). Expected ids from transformers 4.57.6 `CLIPTokenizer.from_pretrained` on this folder.
#[test]
fn added_tokens_split_first_without_tokenizer_json() {
    let tok = sd_onnx::tokenizer::ClipTokenizer::from_dir(std::path::Path::new(
        "onnx/sdxl-tiny-optimum/tokenizer_2",
    ))
    .unwrap();
    let cases: [(&str, &[i64]); 6] = [
        ("hello!", &[49406, 3306, 0, 49407]),
        (
            "a cat! a dog!!",
            &[49406, 320, 2368, 0, 320, 1929, 0, 0, 49407],
        ),
        ("wow !! ok", &[49406, 2781, 0, 0, 2481, 49407]),
        ("!!!", &[49406, 0, 0, 0, 49407]),
        ("<|endoftext|>x", &[49406, 49407, 343, 49407]),
        ("a<|startoftext|>b", &[49406, 320, 49406, 321, 49407]),
    ];
    for (text, want) in cases {
        let ids = tok.encode(text).unwrap().ids;
        assert_eq!(&ids[..want.len()], want, "{text:?}");
    }
}

/// Differential fuzz (scripts/make_tokenizer_fuzz.py): 3,000 seeded prompts of punctuation, emoji, CJK, accents,
/// width forms, ligatures, quotes, HTML entities, control characters, whitespace runs, mojibake and very long
/// text, against transformers' slow `CLIPTokenizer` with ftfy, on both tokenizer paths (vocab.json +
/// merges.txt, and tokenizer.json). Every prompt must match, the 1,107 that ftfy's mojibake repair changes
/// (flagged `mojibake` in the corpus) included.
#[test]
fn fuzzed_prompts_match_transformers_on_both_paths() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/tokenizer_fuzz.json").unwrap(),
    )
    .unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 3000);
    for layout in [
        "onnx/sd-tiny-optimum/tokenizer",
        "tests/fixtures/tokenizer-json",
    ] {
        let tok = ClipTokenizer::from_dir(Path::new(layout)).unwrap();
        let mut bad = Vec::new();
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<i64> = case["ids"]
                .as_str()
                .unwrap()
                .split(' ')
                .map(|v| v.parse().unwrap())
                .collect();
            let got = tok.encode(text).unwrap().ids;
            if got[..want.len()] != want[..] {
                let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                bad.push(format!(
                    "{text:?}\n  at {at}: got {:?} want {:?}",
                    &got[at..(at + 4).min(77)],
                    &want[at..(at + 4).min(want.len())]
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{layout}: {} of {} prompts differ:\n{}",
            bad.len(),
            cases.len(),
            bad.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}
