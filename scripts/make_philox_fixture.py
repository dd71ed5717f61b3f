#!/usr/bin/env python3
"""txt2img references for `--rng philox` whose noise really came from a CUDA generator (issue #3).

    ../pyenv/bin/python scripts/make_philox_fixture.py      # the environment make_fixtures.py documents

diffusers on a GPU with generator=torch.Generator("cuda").manual_seed(seed) draws its initial latents, and an
ancestral sampler its per-step noise, from that generator. No GPU is needed to reproduce that run exactly: the
draws themselves are committed (tests/fixtures/cuda_randn, from ../shared/rng/cuda_randn_public.npz), so this
script runs diffusers' PyTorch StableDiffusionPipeline on the CPU with those tensors in the generator's place:
`latents=` for the first draw, and the scheduler's `randn_tensor` answering the following draws in order.
  * euler, seed 42 and dpm++2m, seed 0: one draw each (s42_1x4x8x8, s0_1x4x8x8);
  * euler-a, seed 7, 2 steps: three successive draws (seq7_0 initial latents, seq7_1 and seq7_2 step noise).
The weights are onnx/sd-tiny-optimum's (make_fixtures.committed_pipeline).
Writes tests/fixtures/philox/.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

OUT = mf.FIX_DIR / "philox"
CUDA = mf.FIX_DIR / "cuda_randn"
CASES = [
    {"name": "euler_philox", "scheduler": "euler", "seed": 42, "steps": 20, "draws": ["s42_1x4x8x8"]},
    {"name": "dpm++2m_philox", "scheduler": "dpm++2m", "seed": 0, "steps": 20, "draws": ["s0_1x4x8x8"]},
    {"name": "euler-a_philox_seq", "scheduler": "euler-a", "seed": 7, "steps": 2,
     "draws": ["seq7_0", "seq7_1", "seq7_2"]},
]


def cuda_draw(key):
    shape = json.loads((CUDA / "index.json").read_text())["shapes"][key]
    return torch.from_numpy(np.fromfile(CUDA / f"{key}.f32", dtype="<f4").reshape(shape).copy())


def main():
    import diffusers
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a

    with tempfile.TemporaryDirectory() as tmp:
        pipe = mf.committed_pipeline(Path(tmp))

    base_cfg = dict(pipe.scheduler.config)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    manifest = []
    for c in CASES:
        c = {"prompt": mf.PROMPT, "negative_prompt": None, "guidance": 7.5, "rng": "philox", "width": 64,
             "height": 64, "batch": 1, "karras": False, **c}
        cls_name, extra = mf.SCHEDULERS[c["scheduler"]]
        pipe.scheduler = getattr(diffusers, cls_name).from_config(base_cfg, **extra)

        def call(output_type):
            draws = [cuda_draw(k) for k in c["draws"]]
            later = iter(draws[1:])

            def next_draw(shape, generator=None, device=None, dtype=None, layout=None):
                d = next(later)  # StopIteration here = the sampler drew more than the GPU run recorded
                assert tuple(d.shape) == tuple(shape), (d.shape, shape)
                return d.to(dtype=dtype or d.dtype)

            euler_a.randn_tensor = next_draw
            images = pipe(c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                          width=c["width"], height=c["height"], latents=draws[0],
                          output_type=output_type).images
            assert next(later, None) is None, "a recorded draw was not used"
            return images

        mf.save_reference(OUT, c, call("np"), call("latent"))
        manifest.append(c)
    mf.write_manifest(OUT, manifest, "onnx/sd-tiny-optimum")


if __name__ == "__main__":
    main()
