#!/usr/bin/env python3
"""References for batches seeded per image (A1111's and sd.cpp's seed + i) on the bundled tiny weights.

    /work/train/venv/bin/python scripts/make_batch_seeds_fixture.py   # the environment make_fixtures.py documents

diffusers gives each image of a batch its own generator when `generator` is a list:
`generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]`; `randn_tensor` then draws
image i's slice (initial latents, every ancestral step's noise, img2img's VAE sample) from generator i, so image i
equals a run of one seeded seed + i. Writes tests/fixtures/batch_seeds/: per case the StableDiffusionPipeline /
StableDiffusionImg2ImgPipeline (PyTorch) images and final latents, and the seeds used.
"""
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

OUT = mf.FIX_DIR / "batch_seeds"
CASES = [
    {"name": "euler-a_seeds_21_22", "scheduler": "euler-a", "seed": 21, "batch": 2, "steps": 10},
    {"name": "dpm++2m-sde_seeds_31_33", "scheduler": "dpm++2m-sde", "seed": 31, "batch": 3, "steps": 8},
    {"name": "img2img_euler-a_seeds_41_42", "scheduler": "euler-a", "seed": 41, "batch": 2, "steps": 10,
     "strength": 0.6, "image": "init-64.png"},
]


def main():
    import diffusers
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        pipe = mf.committed_pipeline(Path(tmp))
    img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    base_cfg = dict(pipe.scheduler.config)

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    manifest = []
    for c in CASES:
        c = {"prompt": mf.PROMPT, "negative_prompt": None, "guidance": 7.5, "rng": "torch", "width": 64,
             "height": 64, "karras": False, **c}
        cls_name, extra = mf.SCHEDULERS[c["scheduler"]]
        sched = getattr(diffusers, cls_name).from_config(base_cfg, **extra)
        c["seeds"] = [c["seed"] + i for i in range(c["batch"])]
        gens = lambda: [torch.Generator("cpu").manual_seed(s) for s in c["seeds"]]
        if "image" in c:
            img2img.scheduler = sched
            image = Image.open(mf.FIX_DIR / "images" / c["image"]).convert("RGB")
            call = lambda output_type: img2img(
                c["prompt"], image=image, strength=c["strength"], num_inference_steps=c["steps"],
                guidance_scale=c["guidance"], num_images_per_prompt=c["batch"], generator=gens(),
                output_type=output_type).images
        else:
            pipe.scheduler = sched
            call = lambda output_type: pipe(
                c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=c["width"],
                height=c["height"], num_images_per_prompt=c["batch"], generator=gens(),
                output_type=output_type).images
        images = call("np")
        latents = call("latent")
        (OUT / f"{c['name']}.latents.bin").write_bytes(latents.numpy().astype("<f4").tobytes())
        c["latents_shape"] = list(latents.shape)
        c["files"] = []
        for i, im in enumerate(images):
            name = f"{c['name']}-{i}.png"
            Image.fromarray((im * 255).round().astype("uint8")).save(OUT / name)
            c["files"].append(name)
        print(f"  {c['name']}: seeds {c['seeds']}")
        manifest.append(c)
    mf.write_manifest(OUT, manifest, "onnx/sd-tiny-optimum")


if __name__ == "__main__":
    main()
