#!/usr/bin/env python3
"""A Python port of AUTOMATIC1111's prompt handling, driving diffusers' components: the reference that
sd-onnx's `src/prompt/` is tested against (scripts/make_prompt_fixture.py).

Ported from stable-diffusion-webui (read, not imported: it needs the whole web UI):
  modules/prompt_parser.py  parse_prompt_attention (its doctests are kept below and run by `python a1111_prompt.py`)
  modules/sd_hijack_clip.py FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line / process_tokens / forward
  modules/sd_emphasis.py    EmphasisOriginal ("Original", the default) and EmphasisOriginalNoNorm ("No norm")
with A1111's defaults: comma_padding_backtrack 20, emphasis "Original", CLIP_stop_at_last_layers 1.

What a diffusers folder gives in place of A1111's wrappers: id_start / id_end are the tokenizer's BOS / EOS,
id_pad its pad token (SD 1.x: EOS, as A1111's FrozenCLIPEmbedder; SD 2.x and SDXL's second tokenizer: "!" = 0,
as A1111's open_clip wrappers), and the comma is `,</w>`.
"""
import re

re_attention = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:([+-]?[.\d]+)\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)

re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    """
    >>> parse_prompt_attention('normal text')
    [['normal text', 1.0]]
    >>> parse_prompt_attention('an (important) word')
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    >>> parse_prompt_attention('(unbalanced')
    [['unbalanced', 1.1]]
    >>> parse_prompt_attention('\\(literal\\]')
    [['(literal]', 1.0]]
    >>> parse_prompt_attention('(unnecessary)(parens)')
    [['unnecessaryparens', 1.1]]
    >>> parse_prompt_attention('a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).')
    [['a ', 1.0],
     ['house', 1.5730000000000004],
     [' ', 1.1],
     ['on', 1.0],
     [' a ', 1.1],
     ['hill', 0.55],
     [', sun, ', 1.1],
     ['sky', 1.4641000000000006],
     ['.', 1.1]]
    """
    res = []
    round_brackets = []
    square_brackets = []

    def multiply_range(start, mult):
        for p in range(start, len(res)):
            res[p][1] *= mult

    for m in re_attention.finditer(text):
        part = m.group(0)
        weight = m.group(1)
        if part.startswith('\\'):
            res.append([part[1:], 1.0])
        elif part == '(':
            round_brackets.append(len(res))
        elif part == '[':
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif part == ')' and round_brackets:
            multiply_range(round_brackets.pop(), 1.1)
        elif part == ']' and square_brackets:
            multiply_range(square_brackets.pop(), 1 / 1.1)
        else:
            for i, piece in enumerate(re.split(re_break, part)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([piece, 1.0])
    for pos in round_brackets:
        multiply_range(pos, 1.1)
    for pos in square_brackets:
        multiply_range(pos, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


CHUNK = 75


def find_embedding(embeddings, tokens, position):
    """EmbeddingDatabase.find_embedding_at_position: the longest trigger whose token ids start here."""
    for name, ids, vectors in sorted(embeddings, key=lambda e: -len(e[1])):
        if tokens[position:position + len(ids)] == ids:
            return name, ids, vectors
    return None


def tokenize_line(tokenizer, line, comma_padding_backtrack=20, syntax=True, embeddings=()):
    """A1111's tokenize_line: [(77 token ids, 77 multipliers, fixes)] per chunk. `embeddings`: (name, trigger
    token ids, vectors (n, width)); a fix is (offset in the chunk after BOS, vectors), A1111's PromptChunkFix."""
    parsed = parse_prompt_attention(line) if syntax else [[line, 1.0]]
    tokenized = tokenizer([t for t, _ in parsed], truncation=False, add_special_tokens=False)["input_ids"]
    id_start, id_end = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.get_vocab().get(",</w>")
    chunks = []
    tokens, mults, fixes = [], [], []
    last_comma = -1

    def next_chunk():
        nonlocal tokens, mults, fixes, last_comma
        to_add = CHUNK - len(tokens)
        if to_add > 0:
            tokens += [id_end] * to_add
            mults += [1.0] * to_add
        chunks.append(([id_start] + tokens + [id_end], [1.0] + mults + [1.0], fixes))
        tokens, mults, fixes, last_comma = [], [], [], -1

    for ids, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma:
                last_comma = len(tokens)
            elif (comma_padding_backtrack != 0 and len(tokens) == CHUNK and last_comma != -1
                  and len(tokens) - last_comma <= comma_padding_backtrack):
                at = last_comma + 1
                reloc_t, reloc_m = tokens[at:], mults[at:]
                tokens, mults = tokens[:at], mults[:at]
                next_chunk()
                tokens, mults = reloc_t, reloc_m
            if len(tokens) == CHUNK:
                next_chunk()
            found = find_embedding(embeddings, ids, position)
            if found is None:
                tokens.append(token)
                mults.append(weight)
                position += 1
                continue
            _, trigger, vectors = found
            if len(tokens) + len(vectors) > CHUNK:
                next_chunk()
            fixes.append((len(tokens), vectors))
            tokens += [0] * len(vectors)
            mults += [weight] * len(vectors)
            position += len(trigger)
    if tokens or not chunks:
        next_chunk()
    return chunks


def pad_after_end(tokenizer, ids):
    """process_tokens: where the pad token is not EOS (SD 2.x), everything after the first EOS is pad."""
    id_end, id_pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if id_end == id_pad:
        return list(ids)
    at = ids.index(id_end)
    return ids[:at + 1] + [id_pad] * (len(ids) - at - 1)


def emphasis(z, mults, kind):
    """sd_emphasis: "Original" multiplies and restores the chunk's mean, "No norm" only multiplies."""
    import torch

    m = torch.asarray(mults, dtype=torch.float32).reshape(1, -1, 1)
    if kind == "original":
        original_mean = z.mean()
        z = z * m.expand(z.shape)
        return z * (original_mean / z.mean())
    return z * m.expand(z.shape)


def encode(text_encoder, tokenizer, line, layer="last", clip_skip=1, kind="original", syntax=True, embeddings=()):
    """One prompt through one CLIP encoder, chunk by chunk, as A1111's forward: (1, 77 * chunks, width) and the
    first chunk's pooled projection (`text_embeds`, when the encoder has one).

    layer "last": SD 1.x/2.x, clip_skip N > 1 takes hidden_states[-N] through the final layer norm (A1111's
    CLIP_stop_at_last_layers); "penultimate": SDXL's hidden_states[-2], no final norm, one layer further back per
    step of clip_skip past 1 (diffusers' SDXL `clip_skip = N - 1`; A1111 ignores clip skip on SDXL by default)."""
    import torch

    zs, pooled = [], None
    for ids, mults, fixes in tokenize_line(tokenizer, line, syntax=syntax, embeddings=embeddings):
        ids = torch.tensor([pad_after_end(tokenizer, ids)])

        # sd_hijack.EmbeddingsWithFixes: the token embeddings with each fix's vectors written in after BOS.
        def with_fixes(module, args, out):
            out = out.clone()
            for offset, vectors in fixes:
                out[0, offset + 1:offset + 1 + len(vectors)] = vectors.to(out.dtype)
            return out

        hook = text_encoder.text_model.embeddings.token_embedding.register_forward_hook(with_fixes)
        try:
            with torch.no_grad():
                out = text_encoder(ids, output_hidden_states=True)
        finally:
            hook.remove()
        with torch.no_grad():
            if layer == "penultimate":
                z = out.hidden_states[-1 - clip_skip]
            elif clip_skip > 1:
                z = text_encoder.text_model.final_layer_norm(out.hidden_states[-clip_skip])
            else:
                z = out.last_hidden_state
            if pooled is None and hasattr(out, "text_embeds"):
                pooled = out.text_embeds
            zs.append(emphasis(z, mults, kind) if syntax else z)
    return torch.hstack(zs), pooled


def chunk_count(tokenizer, line):
    return len(tokenize_line(tokenizer, line))


if __name__ == "__main__":
    import doctest

    failed, tried = doctest.testmod(optionflags=doctest.NORMALIZE_WHITESPACE)
    print(f"doctests: {tried - failed}/{tried} pass")
    raise SystemExit(1 if failed else 0)
