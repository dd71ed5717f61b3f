#!/usr/bin/env python3
"""Textual-inversion embeddings in the three formats people download, and references for them (issue #13).

    /work/train/venv/bin/python scripts/make_ti_fixture.py   # the environment make_fixtures.py documents

Writes tests/fixtures/embeddings/ (the files, seeded random vectors sized for the bundled tiny models):
  tiny-style.pt            A1111 .pt (torch zip + pickle: string_to_token, string_to_param {"*": (2, 16)}, name, step)
  sparkle.safetensors      A1111 .safetensors (emb_params (1, 16))
  cat-toy.bin              diffusers' learned_embeds.bin format ({"<cat-toy>": (3, 16)}, torch zip + pickle)
  glow.safetensors         diffusers' learned_embeds.safetensors format ({"<glow>": (1, 16)})
  xl/xl-style.safetensors  SDXL (clip_l (2, 8), clip_g (2, 8))
  bad/wide.safetensors     emb_params (1, 32): the wrong width for every bundled encoder
and tests/fixtures/ti/: per case the image, the final latents and the case. Unweighted cases are diffusers' own
`load_textual_inversion` (SDXL: clip_l into text_encoder, clip_g into text_encoder_2, as diffusers documents);
weighted ones, and one whose embedding would straddle a chunk, come from scripts/a1111_prompt.py's port of
A1111's embedding handling (EmbeddingDatabase.find_embedding_at_position, EmbeddingsWithFixes).
"""
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import a1111_prompt as a1  # noqa: E402
import make_fixtures as mf  # noqa: E402
import make_prompt_fixture as mp  # noqa: E402

EMB = mf.FIX_DIR / "embeddings"
OUT = mf.FIX_DIR / "ti"


def vectors(seed, n, width):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=g) * 0.7


def write_embeddings():
    from safetensors.torch import save_file

    shutil.rmtree(EMB, ignore_errors=True)
    (EMB / "xl").mkdir(parents=True)
    (EMB / "bad").mkdir()
    e = {
        "tiny-style": vectors(1, 2, 16),
        "sparkle": vectors(2, 1, 16),
        "<cat-toy>": vectors(3, 3, 16),
        "<glow>": vectors(4, 1, 16),
        "xl-style": (vectors(5, 2, 8), vectors(6, 2, 8)),
    }
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": e["tiny-style"]}, "name": "tiny-style",
                "step": 500, "sd_checkpoint": None, "sd_checkpoint_name": None}, EMB / "tiny-style.pt")
    save_file({"emb_params": e["sparkle"].contiguous()}, EMB / "sparkle.safetensors")
    torch.save({"<cat-toy>": e["<cat-toy>"]}, EMB / "cat-toy.bin")
    save_file({"<glow>": e["<glow>"].contiguous()}, EMB / "glow.safetensors")
    save_file({"clip_l": e["xl-style"][0].contiguous(), "clip_g": e["xl-style"][1].contiguous()},
              EMB / "xl" / "xl-style.safetensors")
    save_file({"emb_params": vectors(7, 1, 32).contiguous()}, EMB / "bad" / "wide.safetensors")
    return e


SD_CASES = [
    # diffusers' load_textual_inversion, unweighted.
    {"name": "ti_a1111_pt", "prompt": "a photo of tiny-style on a table", "load": ["tiny-style.pt"]},
    {"name": "ti_a1111_safetensors", "prompt": "a sparkle cube", "load": ["sparkle.safetensors"]},
    {"name": "ti_diffusers_bin", "prompt": "a <cat-toy> in the grass", "load": ["cat-toy.bin"]},
    {"name": "ti_diffusers_safetensors", "prompt": "a <glow> lamp, <cat-toy>",
     "load": ["glow.safetensors", "cat-toy.bin"]},
    # The A1111 port: weighted, and an embedding that would straddle the first chunk's end.
    {"name": "ti_weighted", "prompt": "a (tiny-style:1.3) cube, [sparkle] BREAK (cat-toy)", "port": True},
    {"name": "ti_straddle", "prompt": " ".join(["red"] * 74) + " cat-toy ball", "port": True},
]
XL_CASES = [
    {"name": "xl_ti", "prompt": "a xl-style cube", "load": ["xl/xl-style.safetensors"]},
    {"name": "xl_ti_weighted", "prompt": "a (xl-style:1.2) cube", "port": True},
]


def main():
    import diffusers
    from safetensors.torch import load_file

    import make_sdxl_fixture as xl

    emb = write_embeddings()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe = mf.committed_pipeline(tmp / "sd")
        xl_pipe, _ = xl.build(tmp / "xl")
        xl.check_graphs(xl_pipe, mf.ONNX_DIR / "sdxl-tiny-optimum")
        sd_dir, xl_dir = tmp / "sd-saved", tmp / "xl-saved"
        pipe.save_pretrained(sd_dir)
        xl_pipe.save_pretrained(xl_dir)
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir(parents=True)
        manifest = []
        for case in SD_CASES + XL_CASES:
            c = mp.defaults(case)
            is_xl = c["name"].startswith("xl_")
            # A fresh pipeline per case: load_textual_inversion changes its tokenizer and encoder.
            cls = diffusers.StableDiffusionXLPipeline if is_xl else diffusers.StableDiffusionPipeline
            p = cls.from_pretrained(xl_dir if is_xl else sd_dir)
            p.set_progress_bar_config(disable=True)
            p.scheduler = getattr(diffusers, mf.SCHEDULERS["euler-a"][0]).from_config(p.scheduler.config)
            if c.get("port"):
                # A1111 triggers: the file stems (and diffusers' own tokens), as sd-onnx reads the folder.
                tok = lambda t, n: t(n, add_special_tokens=False).input_ids
                if is_xl:
                    def enc(text):
                        e1 = [("xl-style", tok(p.tokenizer, "xl-style"), emb["xl-style"][0])]
                        e2 = [("xl-style", tok(p.tokenizer_2, "xl-style"), emb["xl-style"][1])]
                        kw = dict(layer="penultimate", kind=c["emphasis"])
                        a, _ = a1.encode(p.text_encoder, p.tokenizer, text, embeddings=e1, **kw)
                        b, pooled = a1.encode(p.text_encoder_2, p.tokenizer_2, text, embeddings=e2, **kw)
                        return torch.cat([a, b], dim=-1), pooled

                    cond, pooled = enc(c["prompt"])
                    kw = dict(prompt_embeds=cond, pooled_prompt_embeds=pooled)
                else:
                    names = {"tiny-style": emb["tiny-style"], "sparkle": emb["sparkle"],
                             "cat-toy": emb["<cat-toy>"], "<cat-toy>": emb["<cat-toy>"]}
                    e = [(n, tok(p.tokenizer, n), v) for n, v in names.items()]
                    cond = a1.encode(p.text_encoder, p.tokenizer, c["prompt"], embeddings=e)[0]
                    uncond = a1.encode(p.text_encoder, p.tokenizer, "", embeddings=e)[0]
                    c["chunks"] = [cond.shape[1] // 77, uncond.shape[1] // 77]
                    if cond.shape != uncond.shape:
                        images, latents = mp.split_loop(p, cond, uncond, c)
                        kw = None
                    else:
                        kw = dict(prompt_embeds=cond, negative_prompt_embeds=uncond)
                if kw is not None:
                    call = lambda out: p(**kw, num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                                         width=64, height=64, generator=torch.Generator("cpu").manual_seed(c["seed"]),
                                         output_type=out).images
                    images, latents = call("np"), call("latent")
            else:
                for f in c["load"]:
                    path = EMB / f
                    if is_xl:
                        sd = load_file(path)
                        p.load_textual_inversion(sd["clip_l"], token="xl-style", text_encoder=p.text_encoder,
                                                 tokenizer=p.tokenizer)
                        p.load_textual_inversion(sd["clip_g"], token="xl-style", text_encoder=p.text_encoder_2,
                                                 tokenizer=p.tokenizer_2)
                    elif f.endswith(".pt") or f == "sparkle.safetensors":
                        p.load_textual_inversion(str(path), token=Path(f).stem)
                    else:
                        p.load_textual_inversion(str(path))
                call = lambda out: p(c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                                     width=64, height=64, generator=torch.Generator("cpu").manual_seed(c["seed"]),
                                     output_type=out).images
                images, latents = call("np"), call("latent")
            c["model"] = "onnx/sdxl-tiny-optimum" if is_xl else "onnx/sd-tiny-optimum"
            c["embeddings_dir"] = "tests/fixtures/embeddings/xl" if is_xl else "tests/fixtures/embeddings"
            c["latents_shape"] = list(latents.shape)
            mf.save_reference(OUT, c, images, latents)
            manifest.append(c)
    mf.write_manifest(OUT, manifest, "per case")


if __name__ == "__main__":
    main()
