#!/usr/bin/env python3
"""A seeded differential-fuzz corpus for the CLIP tokenizer (issue #13.4), with transformers' ids.

    /work/train/venv/bin/python scripts/make_tokenizer_fuzz.py   # needs transformers and ftfy

Writes tests/fixtures/tokenizer_fuzz.json (one prompt per line): N prompts drawn from a fixed seed out of the kinds of text people
paste (words, punctuation runs, emoji and ZWJ sequences, CJK, accents and combining marks, half- and full-width
forms, ligatures, curly quotes, HTML entities, control characters, whitespace runs, mojibake-looking
sequences, very long prompts), each with the 77 ids transformers' slow `CLIPTokenizer` gives with ftfy installed
(what diffusers loads for SD 1.x/2.x folders): `tokenizer(text, padding="max_length", max_length=77,
truncation=True)`, stored through the end token. tests/tokenizer_parity.rs checks both of our tokenizer paths (vocab.json + merges.txt, and
tokenizer.json) against every one. Prompts that ftfy's mojibake repair (`fix_encoding`) changes are marked
`"mojibake": true`.
"""
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

N = 3000
SEED = 13
OUT = mf.FIX_DIR / "tokenizer_fuzz.json"

WORDS = ("a photo of an astronaut riding horse red apple masterpiece best quality portrait woman man cat dog "
         "landscape mountains sunset city night neon cyberpunk detailed 8k octane render trending artstation "
         "by greg rutkowski oil painting watercolor sketch anime style highly intricate sharp focus").split()
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "!!", "?!", "::", "(("]
EMOJI = ["😀", "🍎", "🚀", "❤️", "👍🏽", "👨‍👩‍👧", "🇯🇵", "✨", "🔥", "☕", "⭐", "🌸", "🐱", "©", "™", "°"]
CJK = ["猫", "東京", "桜の花", "こんにちは", "カタカナ", "한국어", "中文字符", "日本", "山", "水墨画"]
ACCENTS = ["café", "naïve", "résumé", "Ångström", "Zürich", "São Paulo", "crème brûlée", "Łódź", "façade",
           "e\u0301", "n\u0303", "Ελληνικά", "русский", "ﬁne", "ǅemal", "ﬂower"]
WIDTH = ["ｈｅｌｌｏ", "ＡＢＣ１２３", "ｶﾀｶﾅ", "ﾊﾟﾝ", "　", "！？", "（笑）", "ﾞ"]
QUOTES = ["“quoted”", "‘single’", "it’s", "«guillemets»", "„low“", "′prime″", "`tick´"]
ENTITIES = ["&amp;", "&lt;3", "&gt;", "&quot;x&quot;", "&#39;", "&#x263A;", "&nbsp;", "&eacute;", "&amp;amp;",
            "AT&T", "&copy;", "&hearts;", "&bogus;"]
CONTROL = ["\t", "\n", "\r\n", "\x00", "\x07", "\x1b[31m", "\x7f", "\u200b", "\u200d", "\ufeff", "\u00ad",
           "\u2028", "\x85", "\x9d"]
MOJIBAKE = ["Ã©", "Ã¨", "â€™", "â€œquoteâ€\x9d", "Ã±", "Â£", "Ã¼ber", "cafÃ©", "ÐŸÑ€Ð¸Ð²ÐµÑ‚", "â„¢", "Ã‰"]
SPACES = ["  ", "   ", "\t\t", " \n ", "\u00a0", "\u3000", "\u2003"]


def prompt(rng):
    kinds = [WORDS] * 6 + [PUNCT] * 2 + [EMOJI, CJK, ACCENTS, WIDTH, QUOTES, ENTITIES, CONTROL, MOJIBAKE, SPACES]
    n = rng.choice([1, 2, 3, 5, 8, 12, 20, 40]) if rng.random() > 0.02 else rng.randint(80, 200)
    parts = []
    for _ in range(n):
        pool = rng.choice(kinds)
        parts.append(rng.choice(pool))
        parts.append(rng.choice([" ", " ", " ", "", ", ", "-", "_"]))
    text = "".join(parts)
    if rng.random() < 0.1:
        text = text.upper()
    if rng.random() < 0.05:
        text = " " + text + "  "
    return text


def main():
    from transformers import CLIPTokenizer

    import ftfy  # transformers' CLIPTokenizer uses it when installed

    tok = CLIPTokenizer.from_pretrained(str(mf.ONNX_DIR / "sd-tiny-optimum" / "tokenizer"))
    assert tok.fix_text is not None, "transformers did not pick up ftfy"
    rng = random.Random(SEED)
    cases = []
    for _ in range(N):
        text = prompt(rng)
        ids = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        # Stored through the end token; the rest is padding (the folder's pad token, EOS here).
        ids = ids[:ids.index(tok.eos_token_id) + 1]
        case = {"text": text, "ids": " ".join(map(str, ids))}
        # Where ftfy's mojibake repair (fix_encoding) changes the text: the test checks the corpus exercises it.
        if ftfy.fix_text(text) != ftfy.fix_text(text, fix_encoding=False):
            case["mojibake"] = True
        cases.append(case)
    lines = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
    OUT.write_text(f'{{"tokenizer": "transformers.CLIPTokenizer (slow) with ftfy {__import__("ftfy").__version__}", '
                   f'"seed": {SEED}, "cases": [\n{lines}\n]}}\n')
    print(f"{len(cases)} prompts -> {OUT} ({OUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
