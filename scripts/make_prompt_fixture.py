#!/usr/bin/env python3
"""References for A1111 prompt syntax (issue #13): weights, escapes, BREAK, long prompts, clip skip.

    /work/train/venv/bin/python scripts/make_prompt_fixture.py   # the environment make_fixtures.py documents

Each case's embeddings come from scripts/a1111_prompt.py (a port of A1111's parser, chunker and emphasis) run on
diffusers' text encoders, and go into diffusers' pipelines as `prompt_embeds` / `negative_prompt_embeds` (SDXL:
and the pooled ones). When the prompt and the negative prompt have different chunk counts, diffusers' pipeline
cannot take them (it concatenates the two); A1111 then runs the UNet on each half separately (its default,
pad_cond_uncond off), and so does `split_loop` here: StableDiffusionPipeline's own loop with the UNet called
twice per step. The script checks `split_loop` against the pipeline on an equal-length case before using it.

Writes tests/fixtures/prompts/: per case the image, the final latents, and the case in cases.json.
"""
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import a1111_prompt as a1  # noqa: E402
import make_fixtures as mf  # noqa: E402

OUT = mf.FIX_DIR / "prompts"

LONG_COMMAS = ", ".join(
    ["a red cube", "a blue sphere", "green grass", "a wooden table", "soft light", "a tall tree", "white clouds",
     "a small house", "a yellow door", "two windows", "a brick chimney", "grey smoke", "a stone path",
     "purple flowers", "a picket fence", "a black cat", "a sleeping dog", "an old bicycle", "a garden hose",
     "orange sunset", "long shadows", "a distant hill", "a river", "a bridge", "a boat"])
LONG_WORDS = " ".join(
    "the quick brown fox jumps over the lazy dog while a small bird sings in the old oak tree and the farmer "
    "walks slowly across the wide green field carrying a heavy basket of fresh red apples toward the wooden barn "
    "where the horses wait patiently for their evening meal under a sky painted with orange and purple light "
    "as the sun sinks behind the distant blue mountains".split())

SD_CASES = [
    {"name": "weighted", "prompt": "a (red:1.3) cube on a [blue] ((wooden)) table"},
    {"name": "nested_unbalanced", "prompt": "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))). (unbalanced"},
    {"name": "escaped", "prompt": "a \\(literal\\) cube with \\[brackets\\] and a \\\\ backslash: 1.5)"},
    {"name": "break", "prompt": "a red cube BREAK a blue sphere on the grass"},
    {"name": "long_commas", "prompt": LONG_COMMAS},
    {"name": "long_words", "prompt": LONG_WORDS},
    {"name": "weighted_negative", "prompt": mf.PROMPT, "negative_prompt": "(blurry:1.4), [ugly], lowres"},
    {"name": "long_with_negative", "prompt": "(" + LONG_WORDS + ":1.1)", "negative_prompt": "blurry"},
    {"name": "long_negative", "prompt": "a red cube", "negative_prompt": LONG_COMMAS},
    {"name": "no_norm", "prompt": "a (red:1.3) cube on a [blue] ((wooden)) table", "emphasis": "no-norm"},
    {"name": "plain_syntax", "prompt": "a (red:1.3) cube on a [blue] table", "prompt_syntax": "plain"},
    {"name": "clip_skip2_plain", "prompt": mf.PROMPT, "prompt_syntax": "plain", "clip_skip": 2},
    {"name": "clip_skip2_weighted", "prompt": "a (red:1.3) cube on a [blue] table", "clip_skip": 2},
    {"name": "clip_skip2_convert_layout", "prompt": "a (red:1.3) cube", "clip_skip": 2,
     "model": "onnx/sd-tiny-convert"},
    {"name": "sd2_pad", "prompt": "a (red:1.3) cube BREAK on a [blue] table", "tokenizer_pad": "!"},
    {"name": "sd2_pad_long", "prompt": LONG_COMMAS, "negative_prompt": "(blurry:1.2)", "tokenizer_pad": "!"},
]
XL_CASES = [
    {"name": "xl_weighted_negative", "prompt": "a (red:1.3) cube BREAK on a [blue] table",
     "negative_prompt": "(blurry:1.4) BREAK lowres"},
    {"name": "xl_long_zero_negative", "prompt": LONG_COMMAS},
    {"name": "xl_clip_skip2_plain", "prompt": mf.PROMPT, "prompt_syntax": "plain", "clip_skip": 2},
    {"name": "xl_clip_skip2_weighted", "prompt": "a (red:1.3) cube", "clip_skip": 2},
]


def defaults(c):
    return {"negative_prompt": None, "steps": 10, "guidance": 7.5, "rng": "torch", "width": 64, "height": 64,
            "batch": 1, "scheduler": "euler-a", "seed": 50, "prompt_syntax": "a1111", "emphasis": "original",
            "clip_skip": 1, **c}


def split_loop(pipe, cond, uncond, c):
    """StableDiffusionPipeline.__call__'s loop for one image, the UNet run on each half separately."""
    from diffusers.utils.torch_utils import randn_tensor

    sched = pipe.scheduler
    sched.set_timesteps(c["steps"])
    gen = torch.Generator("cpu").manual_seed(c["seed"])
    f = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, c["height"] // f, c["width"] // f)
    latents = randn_tensor(shape, generator=gen, dtype=cond.dtype) * sched.init_noise_sigma
    extra = pipe.prepare_extra_step_kwargs(gen, 0.0)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.scale_model_input(latents, t)
            u = pipe.unet(x, t, encoder_hidden_states=uncond).sample
            e = pipe.unet(x, t, encoder_hidden_states=cond).sample
            noise = u + c["guidance"] * (e - u)
            latents = sched.step(noise, t, latents, **extra, return_dict=False)[0]
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np"), latents


def run_plain(pipe, c):
    """diffusers' own reading of the prompt (and its clip_skip, which counts one less than A1111's)."""
    call = lambda out: pipe(c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
                            guidance_scale=c["guidance"], width=c["width"], height=c["height"],
                            clip_skip=(c["clip_skip"] - 1) or None,
                            generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type=out).images
    return call("np"), call("latent")


def run_sd(pipe, c):
    if c["prompt_syntax"] == "plain":
        return run_plain(pipe, c)
    enc = lambda text: a1.encode(pipe.text_encoder, pipe.tokenizer, text, clip_skip=c["clip_skip"],
                                 kind=c["emphasis"])[0]
    cond, uncond = enc(c["prompt"]), enc(c["negative_prompt"] or "")
    c["chunks"] = [cond.shape[1] // 77, uncond.shape[1] // 77]
    if cond.shape != uncond.shape:
        return split_loop(pipe, cond, uncond, c)
    call = lambda out: pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=c["steps"],
                            guidance_scale=c["guidance"], width=c["width"], height=c["height"],
                            generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type=out).images
    return call("np"), call("latent")


def run_xl(pipe, c):
    if c["prompt_syntax"] == "plain":
        return run_plain(pipe, c)

    def enc(text):
        kw = dict(layer="penultimate", clip_skip=c["clip_skip"], kind=c["emphasis"])
        a, _ = a1.encode(pipe.text_encoder, pipe.tokenizer, text, **kw)
        b, pooled = a1.encode(pipe.text_encoder_2, pipe.tokenizer_2, text, **kw)
        return torch.cat([a, b], dim=-1), pooled

    cond, pooled = enc(c["prompt"])
    kw = dict(prompt_embeds=cond, pooled_prompt_embeds=pooled)
    if c["negative_prompt"] is not None:
        uncond, upooled = enc(c["negative_prompt"])
        assert uncond.shape == cond.shape, "SDXL cases keep the halves the same length"
        kw.update(negative_prompt_embeds=uncond, negative_pooled_prompt_embeds=upooled)
    c["chunks"] = [cond.shape[1] // 77]
    call = lambda out: pipe(**kw, num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=c["width"],
                            height=c["height"], generator=torch.Generator("cpu").manual_seed(c["seed"]),
                            output_type=out).images
    return call("np"), call("latent")


def main():
    import diffusers
    from transformers import CLIPTokenizer

    import make_sdxl_fixture as xl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe = mf.committed_pipeline(tmp / "sd")
        xl_pipe, _ = xl.build(tmp / "xl")
        xl.check_graphs(xl_pipe, mf.ONNX_DIR / "sdxl-tiny-optimum")
        vocab = tmp / "sd" / "clip_vocab"
        sd2_tok = CLIPTokenizer(str(vocab / "vocab.json"), str(vocab / "merges.txt"), pad_token="!",
                                model_max_length=77)
    euler_a = getattr(diffusers, mf.SCHEDULERS["euler-a"][0])
    pipe.scheduler = euler_a.from_config(pipe.scheduler.config)
    xl_pipe.scheduler = euler_a.from_config(xl_pipe.scheduler.config)
    sd1_tok = pipe.tokenizer

    # split_loop is the pipeline's loop: check it on equal-length embeddings first.
    c = defaults({"name": "check", "prompt": "a (red:1.3) cube"})
    cond = a1.encode(pipe.text_encoder, pipe.tokenizer, c["prompt"])[0]
    uncond = a1.encode(pipe.text_encoder, pipe.tokenizer, "")[0]
    _, mine = split_loop(pipe, cond, uncond, c)
    theirs = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=c["steps"],
                  guidance_scale=c["guidance"], width=64, height=64,
                  generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="latent").images
    # Not bit-equal: a batch of 2 and two batches of 1 round differently in the UNet (~4e-6 per call here).
    gap = ((mine - theirs).abs().max() / theirs.abs().max()).item()
    assert gap < 1e-5, f"split_loop differs from StableDiffusionPipeline by {gap} (relative)"
    print(f"split_loop vs pipeline: max latent difference {gap:.2e} of the largest latent")

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    manifest = []
    for case in SD_CASES + XL_CASES:
        c = defaults(case)
        if c["name"].startswith("xl_"):
            images, latents = run_xl(xl_pipe, c)
            c["model"] = "onnx/sdxl-tiny-optimum"
        else:
            pipe.tokenizer = sd2_tok if c.get("tokenizer_pad") == "!" else sd1_tok
            images, latents = run_sd(pipe, c)
            c.setdefault("model", "onnx/sd-tiny-optimum")
        c["latents_shape"] = list(latents.shape)
        mf.save_reference(OUT, c, images, latents)
        manifest.append(c)
    pipe.tokenizer = sd1_tok
    mf.write_manifest(OUT, manifest, "per case")
    assert np.isfinite(latents.numpy()).all()


if __name__ == "__main__":
    main()
