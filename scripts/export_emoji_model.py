#!/usr/bin/env python3
"""Export the model scripts/train_emoji_model.py trained as onnx/sd-emoji, and the semantic test's fixtures.

    /work/train/venv/bin/python scripts/export_emoji_model.py     # after `train_emoji_model.py all`

1. The diffusers pipeline (EMA weights) is saved (the training script's `save` phase) and exported by optimum's
   text-to-image exporter, exactly as a user exports a real checkpoint.
2. Every graph is converted to float16 weights with float32 inputs and outputs (ONNX Runtime's float16
   converter, keep_io_types=True): half the size, and the same I/O as the fp32 export. The fp16 UNet and VAE are
   checked against the fp32 export on random inputs first. Budget: onnx/sd-emoji at most 16 MB.
3. docs/emoji/: the README's img2img/inpainting inputs (two training renders, a half mask).
4. tests/fixtures/emoji/: `atlas.png`, every training emoji (the plain render, variant 0) as a 16x16 thumbnail
   (box-filtered from 64x64) in caption order, 40 to a row; `captions.json` (all captions, the held-out ones,
   and the 40 test captions with their seeds).
Needs the training environment (torch, diffusers, optimum-onnx, onnxruntime).
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.transformers.float16 import convert_float_to_float16

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import make_fp16_fixture as f16  # noqa: E402
import train_emoji_model as train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "onnx" / "sd-emoji"
FIX = ROOT / "tests" / "fixtures" / "emoji"
BUDGET = 16 * 1000 * 1000
TEST_CAPTIONS = 40


def fp16(src: Path, dst: Path):
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    for comp in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        path = dst / comp / "model.onnx"
        model = f16.topo_sort(convert_float_to_float16(onnx.load(path.as_posix()), keep_io_types=True))
        onnx.save_model(model, path.as_posix())
        onnx.checker.check_model(path.as_posix())
    rng = np.random.default_rng(0)
    feeds = {
        "unet": {"sample": rng.standard_normal((2, 4, 16, 16), np.float32),
                 "timestep": np.array(601.0, np.float32),
                 "encoder_hidden_states": rng.standard_normal((2, 77, train.TEXT_WIDTH), np.float32)},
        "vae_decoder": {"latent_sample": rng.standard_normal((1, 4, 16, 16), np.float32)},
    }
    for comp, feed in feeds.items():
        a = ort.InferenceSession(str(src / comp / "model.onnx"), providers=["CPUExecutionProvider"])
        b = ort.InferenceSession(str(dst / comp / "model.onnx"), providers=["CPUExecutionProvider"])
        names = {i.name for i in a.get_inputs()}
        feed = {k: v for k, v in feed.items() if k in names}
        x, y = a.run(None, feed)[0], b.run(None, feed)[0]
        print(f"  {comp}: fp16 vs fp32 max |diff| {np.abs(x - y).max():.4f} (output std {x.std():.3f})")


def fixtures():
    from PIL import Image

    images, captions, codepoints = train.load_data()
    FIX.mkdir(parents=True, exist_ok=True)
    n, cols = len(captions), 40
    rows = (n + cols - 1) // cols
    atlas = Image.new("RGB", (cols * 16, rows * 16), (255, 255, 255))
    for i in range(n):
        thumb = Image.fromarray(images[i, 0]).resize((16, 16), Image.BOX)
        atlas.paste(thumb, ((i % cols) * 16, (i // cols) * 16))
    atlas.save(FIX / "atlas.png", optimize=True)
    step = n // TEST_CAPTIONS
    tests = [{"caption": captions[i * step], "index": i * step, "seed": 1000 + i} for i in range(TEST_CAPTIONS)]
    (FIX / "captions.json").write_text(json.dumps({
        "source": "scripts/export_emoji_model.py: the training set of scripts/train_emoji_model.py",
        "thumbnail": "16x16, PIL BOX from the 64x64 plain render (variant 0), 40 per row in caption order",
        "captions": captions, "codepoints": [int(c) for c in codepoints], "holdout": train.HOLDOUT,
        "tests": tests,
    }, indent=1))
    print(f"  {FIX.relative_to(ROOT)}: atlas of {n} emoji, {len(tests)} test captions")
    # The README's img2img and inpainting inputs: two training renders and a mask of their right half.
    docs = ROOT / "docs" / "emoji"
    docs.mkdir(parents=True, exist_ok=True)
    for caption in ("red apple", "grinning face"):
        Image.fromarray(images[captions.index(caption), 0]).save(docs / f"input-{caption.replace(' ', '-')}.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(docs / "mask-right-half.png")


def main():
    train.phase_save()
    exported = train.WORK / "onnx-fp32"
    shutil.rmtree(exported, ignore_errors=True)
    mf.export_optimum_layout(train.WORK / "pipeline", exported)
    for cfg in exported.rglob("*.json"):
        text = cfg.read_text()
        if str(train.WORK) in text:
            cfg.write_text(text.replace(str(train.WORK / "pipeline"), "sd-emoji"))
    fp16(exported, OUT)
    shutil.copy(train.WORK / "pipeline" / "training.json", OUT / "training.json")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{OUT.relative_to(ROOT)}: {size / 1e6:.2f} MB (budget {BUDGET / 1e6:.0f} MB)")
    assert size <= BUDGET, "over the 16 MB budget"
    fixtures()


if __name__ == "__main__":
    main()
