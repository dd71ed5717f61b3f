#!/usr/bin/env python3
"""References for v-prediction and zero-terminal-SNR schedules (the SD 2.x family) on the bundled tiny weights.

    ../pyenv/bin/python scripts/make_vpred_fixture.py      # the environment make_fixtures.py documents

The UNet weights are onnx/sd-tiny-optimum's (rebuilt here from the same seed and checked against the committed
graph first); only the folder's scheduler_config.json differs per case, as between an SD 1.5 and an SD 2.1
export. Writes tests/fixtures/vpred/: per case the diffusers StableDiffusionPipeline (PyTorch) image, final
latents and the scheduler config the test writes into a copy of the folder.
"""
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

OUT = mf.FIX_DIR / "vpred"
BASE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "prediction_type": "v_prediction"}
CASES = [
    # SD 2.1's own scheduler: DDIM, v-prediction, leading spacing
    {"name": "v_ddim_sd21", "config": {"_class_name": "DDIMScheduler", **BASE}, "steps": 15, "seed": 21},
    # "Common Diffusion Noise Schedules are Flawed": zero terminal SNR + trailing spacing
    {"name": "v_ddim_zero_snr_trailing", "config": {"_class_name": "DDIMScheduler", **BASE,
     "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, "steps": 12, "seed": 22},
    # ... with diffusers' guidance_rescale (the paper's 0.7)
    {"name": "v_ddim_zero_snr_rescale0.7", "config": {"_class_name": "DDIMScheduler", **BASE,
     "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, "steps": 12, "seed": 25,
     "guidance_rescale": 0.7},
    {"name": "v_euler", "config": {"_class_name": "EulerDiscreteScheduler", **BASE}, "steps": 12, "seed": 23},
    {"name": "v_dpmpp2m_karras", "config": {"_class_name": "DPMSolverMultistepScheduler", **BASE,
     "use_karras_sigmas": True}, "steps": 10, "seed": 24},
]


def main():
    import diffusers

    with tempfile.TemporaryDirectory() as tmp:
        pipe = mf.committed_pipeline(Path(tmp))

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    manifest = []
    for c in CASES:
        c = {"prompt": mf.PROMPT, "negative_prompt": None, "guidance": 7.5, "guidance_rescale": 0.0, "rng": "torch",
             "width": 64,
             "height": 64, "batch": 1, "karras": False, **c}
        cfg = dict(c["config"])
        cls = getattr(diffusers, cfg.pop("_class_name"))
        pipe.scheduler = cls.from_config(cfg)
        c["scheduler"] = {"DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler",
                          "DPMSolverMultistepScheduler": "dpm++2m"}[cls.__name__]
        call = lambda output_type: pipe(
            c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
            guidance_rescale=c["guidance_rescale"], width=c["width"], height=c["height"],
            generator=torch.Generator("cpu").manual_seed(c["seed"]),
            output_type=output_type).images
        mf.save_reference(OUT, c, call("np"), call("latent"))
        manifest.append(c)
    mf.write_manifest(OUT, manifest, "onnx/sd-tiny-optimum")


if __name__ == "__main__":
    main()
