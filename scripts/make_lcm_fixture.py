#!/usr/bin/env python3
"""The guidance-distilled (LCM-style) tiny model and its diffusers references.

    ../pyenv/bin/python scripts/make_lcm_fixture.py      # the environment make_fixtures.py documents

A UNet with `time_cond_proj_dim` (LCM-distilled checkpoints such as LCM Dreamshaper have one) takes the guidance
scale as an embedding (`timestep_cond`) instead of a second, unconditional pass. Writes
  onnx/sd-tiny-lcm-optimum/     the pipeline exported by optimum (text-to-image task: the UNet gets `timestep_cond`)
  tests/fixtures/lcm/           diffusers LatentConsistencyModelPipeline and ...Img2ImgPipeline (PyTorch) images, final
                                latents, cases.json
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

OUT_MODEL = mf.ONNX_DIR / "sd-tiny-lcm-optimum"
OUT_REFS = mf.FIX_DIR / "lcm"
LCM_SCHEDULER = {
    "_class_name": "LCMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "clip_sample": False,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
CASES = [
    {"name": "lcm_4steps_w8.5", "steps": 4, "guidance": 8.5, "seed": 0},
    {"name": "lcm_2steps_w1", "steps": 2, "guidance": 1.0, "seed": 1},
    {"name": "lcm_6steps_w3_batch2", "steps": 6, "guidance": 3.0, "seed": 2, "batch": 2},
    {"name": "lcm_8steps_w5_80x48", "steps": 8, "guidance": 5.0, "seed": 3, "width": 80, "height": 48},
    # img2img: LatentConsistencyModelImg2ImgPipeline, where the strength shapes LCMScheduler's timesteps
    {"name": "lcm_img2img_0.5", "steps": 4, "guidance": 8.5, "seed": 4, "image": "init-64.png", "strength": 0.5},
    {"name": "lcm_img2img_0.8_batch2", "steps": 3, "guidance": 3.0, "seed": 5, "image": "init-64.png",
     "strength": 0.8, "batch": 2},
]


def main():
    import diffusers
    from diffusers import LatentConsistencyModelImg2ImgPipeline, LatentConsistencyModelPipeline, LCMScheduler
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base, _ = mf.build_pipeline(work, name="base", time_cond_proj_dim=8)
        pipe = LatentConsistencyModelPipeline(
            vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
            scheduler=LCMScheduler.from_config(LCM_SCHEDULER), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        img2img = LatentConsistencyModelImg2ImgPipeline(**pipe.components)
        img2img.set_progress_bar_config(disable=True)
        pt_dir = work / "lcm"
        pipe.save_pretrained(pt_dir)
        out = work / "onnx"
        mf.export_optimum_layout(pt_dir, out)
        # The exported UNet must take timestep_cond and agree with PyTorch.
        s = ort.InferenceSession(str(out / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in s.get_inputs()]
        assert "timestep_cond" in names, names
        lat = torch.randn(2, 4, 8, 10)
        emb = torch.randn(2, 77, 16)
        cond = torch.randn(2, 8)
        with torch.no_grad():
            want = pipe.unet(lat, torch.tensor(501.0), emb, timestep_cond=cond).sample.numpy()
        got = s.run(None, {"sample": lat.numpy(), "timestep": np.array(501.0, np.float32),
                           "encoder_hidden_states": emb.numpy(), "timestep_cond": cond.numpy()})[0]
        assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()

        shutil.rmtree(OUT_REFS, ignore_errors=True)
        OUT_REFS.mkdir(parents=True)
        manifest = []
        for c in CASES:
            c = {"prompt": mf.PROMPT, "negative_prompt": None, "seed": 0, "rng": "torch", "width": 64, "height": 64,
                 "batch": 1, "karras": False, "scheduler": "lcm", **c}
            if "image" in c:
                image = Image.open(mf.FIX_DIR / "images" / c["image"]).convert("RGB")
                c["width"], c["height"] = image.size
                call = lambda output_type: img2img(
                    c["prompt"], image=image, strength=c["strength"], num_inference_steps=c["steps"],
                    guidance_scale=c["guidance"], num_images_per_prompt=c["batch"],
                    generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type=output_type).images
            else:
                call = lambda output_type: pipe(
                    c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=c["width"],
                    height=c["height"], num_images_per_prompt=c["batch"],
                    generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type=output_type).images
            images = call("np")
            final = call("latent").numpy().astype("<f4")
            (OUT_REFS / f"{c['name']}.latents.bin").write_bytes(final.tobytes())
            files = []
            for i, im in enumerate(images):
                name = f"{c['name']}-{i}.png" if c["batch"] > 1 else f"{c['name']}.png"
                Image.fromarray((im * 255).round().astype("uint8")).save(OUT_REFS / name)
                files.append(name)
            c["files"] = files
            manifest.append(c)
            print(f"  {c['name']}: mean {(images * 255).mean():.1f} std {(images * 255).std():.1f}")
        (OUT_REFS / "cases.json").write_text(json.dumps(
            {"diffusers": diffusers.__version__, "torch": torch.__version__,
             "pipeline": "LatentConsistencyModelPipeline", "cases": manifest}, indent=1))
        shutil.rmtree(OUT_MODEL, ignore_errors=True)
        shutil.copytree(out, OUT_MODEL)
        print(f"{OUT_MODEL.relative_to(mf.ROOT)}: {mf.dir_size(OUT_MODEL) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
