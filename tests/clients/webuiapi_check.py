"""The `webuiapi` package (PyPI: a client for AUTOMATIC1111's API) driving `sd-onnx serve`.

    python tests/clients/webuiapi_check.py PORT OUTDIR

Run by tests/server.rs against a server started with `--api-auth user:pass` on 127.0.0.1:PORT. Writes
OUTDIR/webuiapi-txt2img.png (the response's PNG bytes as sent, which the Rust test compares with the CLI's file)
and fails (non-zero exit, with the reason) when anything webuiapi returns is not what A1111 would return.
"""
import base64
import sys
from pathlib import Path

import webuiapi
from PIL import Image

port, out = int(sys.argv[1]), Path(sys.argv[2])
api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
api.set_auth("user", "pass")

models = api.get_sd_models()
assert models[0]["model_name"] == "sd-emoji", models
samplers = [s["name"] for s in api.get_samplers()]
assert "Euler a" in samplers and "DPM++ 2M" in samplers, samplers
options = api.get_options()
assert options["sd_model_checkpoint"] == "sd-emoji", options
assert api.get_scripts() == {"txt2img": [], "img2img": []}
assert api.get_upscalers() == []

# txt2img with webuiapi's own defaults for everything not given (cfg_scale 7, eta 1, ...).
r = api.txt2img(prompt="red apple", seed=1, steps=8, width=64, height=64, sampler_name="Euler a")
assert len(r.images) == 1 and r.images[0].size == (64, 64), r.images
assert r.info["all_seeds"] == [1], r.info
assert "eta" in r.info["not_honoured"], r.info  # webuiapi sends eta=1.0; DDIM's eta is not built
(out / "webuiapi-txt2img.png").write_bytes(base64.b64decode(r.json["images"][0]))

# A batch: image i has seed + i.
r = api.txt2img(prompt="rocket", seed=20, steps=4, width=64, height=64, batch_size=2)
assert r.info["all_seeds"] == [20, 21], r.info
assert "Seed: 21" in r.info["infotexts"][1]

# img2img and inpainting (webuiapi sends data: URLs, mask_blur 4, inpainting_fill 0, inpaint_full_res True).
init = Image.open(Path(__file__).resolve().parents[2] / "docs" / "emoji" / "input-red-apple.png").convert("RGB")
r = api.img2img(images=[init], prompt="grinning face", seed=3, steps=8, denoising_strength=0.6, width=64, height=64)
assert r.images[0].size == (64, 64)
assert abs(r.info["denoising_strength"] - 0.6) < 1e-9, r.info
mask = Image.new("L", (64, 64), 0)
mask.paste(255, (32, 0, 64, 64))
r = api.img2img(images=[init], mask_image=mask, prompt="rocket", seed=4, steps=8, width=64, height=64)
assert r.images[0].size == (64, 64)
assert r.info["is_using_inpainting_conditioning"] is True
assert "inpaint_full_res" in r.info["not_honoured"], r.info

# Options round-trip; progress and interrupt answer.
api.set_options({"CLIP_stop_at_last_layers": 2})
assert api.get_options()["CLIP_stop_at_last_layers"] == 2
r = api.txt2img(prompt="ghost", seed=5, steps=2, width=64, height=64)
assert r.info["clip_skip"] == 2, r.info
assert "Clip skip: 2" in r.info["infotexts"][0]
progress = api.get_progress()
assert progress["state"]["job_count"] == 0, progress
api.interrupt()
print("webuiapi: ok")
