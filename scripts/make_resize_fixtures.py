#!/usr/bin/env python3
"""References for input resizing (tests/fixtures/resize): what diffusers' VaeImageProcessor makes of images and
masks whose size is not the generation size (PIL's LANCZOS resize, then normalisation or binarisation).

    python scripts/make_resize_fixtures.py        # needs numpy, Pillow, diffusers (and torch, which diffusers imports)

Writes small source PNGs, and per case the PIL-resized 8-bit pixels (`.pil.bin`) and the processor's float32
tensor (`.f32.bin`, little-endian, (1, C, H, W)), plus cases.json.
"""
import json
from pathlib import Path

import numpy as np
import PIL
import diffusers
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "resize"
IMAGES = OUT.parent / "images"


def noisy_picture(w, h, seed):
    """Gradients, a hard edge and noise: every rounding path of the filter gets exercised."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * (y / max(h - 1, 1)) ** 2
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(w, h) / 3) ** 2, 230.0, 20.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 25, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    noisy_picture(70, 53, 1).save(OUT / "src-70x53.png")
    noisy_picture(200, 37, 2).save(OUT / "src-200x37.png")
    rng = np.random.RandomState(3)
    m = (rng.rand(90, 100) * 255).astype(np.uint8)
    m[20:70, 30:80] = 255
    Image.fromarray(m).save(OUT / "mask-100x90.png")

    image_proc = VaeImageProcessor(vae_scale_factor=8)
    mask_proc = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True,
                                  do_convert_grayscale=True)
    # (name, source, kind, requested width, height): None = the processor's default (rounded down to 8).
    cases = [
        ("down-default", OUT / "src-70x53.png", "image", None, None),
        ("up-both", IMAGES / "init-64.png", "image", 96, 80),
        ("down-x-up-y", IMAGES / "init-80x48.png", "image", 48, 80),
        ("down-3x", OUT / "src-200x37.png", "image", 64, 40),
        ("mask-up", IMAGES / "mask-32-rgb.png", "mask", 64, 64),
        ("mask-down", OUT / "mask-100x90.png", "mask", 64, 64),
    ]
    manifest = []
    for name, src, kind, w, h in cases:
        img = Image.open(src)
        proc = image_proc if kind == "image" else mask_proc
        tensor = proc.preprocess(img, height=h, width=w).numpy().astype("<f4")
        out_h, out_w = tensor.shape[2], tensor.shape[3]
        converted = img.convert("RGB") if kind == "image" else img.convert("L")
        pil = converted.resize((out_w, out_h), resample=Image.LANCZOS)
        (OUT / f"{name}.pil.bin").write_bytes(np.asarray(pil, dtype=np.uint8).tobytes())
        (OUT / f"{name}.f32.bin").write_bytes(tensor.tobytes())
        rel = src.relative_to(OUT.parent.parent.parent)
        manifest.append({"name": name, "source": str(rel), "kind": kind, "width": out_w, "height": out_h,
                         "requested": [w, h], "channels": 3 if kind == "image" else 1})
        print(f"  {name}: {img.size} -> {out_w}x{out_h}")
    (OUT / "cases.json").write_text(json.dumps({"pillow": PIL.__version__, "diffusers": diffusers.__version__,
                                                "cases": manifest}, indent=1))


if __name__ == "__main__":
    main()
