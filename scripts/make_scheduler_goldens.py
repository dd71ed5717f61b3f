#!/usr/bin/env python3
"""Record diffusers schedulers over a synthetic denoise loop; `cargo test` replays it in Rust.

A fixed function stands in for the UNet:
    model_output = float32(0.5 * tanh(x) + 0.1 * cos(t / 100 + k))     (x: scaled input, k: flat index)
computed in float64 so that both sides evaluate it the same way. The loop is the pipelines' loop:
    sample = randn(shape, generator=torch.Generator().manual_seed(seed)) * init_noise_sigma
    for t in timesteps: out = f(scale_model_input(sample, t), t); sample = step(out, t, sample, generator)

Writes tests/fixtures/scheduler_goldens.json: per case the scheduler, the config overrides, the step count,
timesteps, init_noise_sigma and the sample after every step. Run in the fixture venv (see make_fixtures.py).
"""
import json
from pathlib import Path

import diffusers
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SD15 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
CLASSES = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "dpm++2m-sde": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2-a": "KDPM2AncestralDiscreteScheduler",
    "deis": "DEISMultistepScheduler",
    "lcm": "LCMScheduler",
}
# Constructor arguments the CLI name implies (what `sd-onnx --scheduler NAME` passes to from_config).
NAME_KWARGS = {"dpm++2m-sde": {"algorithm_type": "sde-dpmsolver++"}}
KARRAS = {"euler", "dpm++2m", "dpm++2m-sde", "lms", "heun", "kdpm2", "kdpm2-a", "unipc", "deis"}
EXP_BETA = {"euler", "lms", "heun", "kdpm2", "kdpm2-a", "dpm++2m", "dpm++2m-sde", "unipc", "deis"}
FINAL_SIGMA_MIN = {"euler", "dpm++2m", "dpm++2m-sde", "unipc"}
TRAINED_BETAS = {"ddim", "euler", "dpm++2m", "kdpm2"}
ZERO_SNR = {"ddim", "ddpm", "euler", "euler-a", "dpm++2m", "dpm++2m-sde", "unipc", "lcm"}
THRESHOLDING = {"ddim", "ddpm", "dpm++2m", "unipc", "deis", "lcm"}
SHAPE = (1, 4, 2, 3)  # 24 values: exercises torch.randn's tail recomputation (24 % 16 != 0)


def fake_model(x: torch.Tensor, t) -> torch.Tensor:
    k = np.arange(x.numel()).reshape(x.shape)
    out = 0.5 * np.tanh(x.double().numpy()) + 0.1 * np.cos(float(t) / 100.0 + k)
    return torch.from_numpy(out.astype(np.float32))


def run(name, overrides, steps, seed=0, strength=None):
    """strength=None: txt2img. Otherwise img2img as StableDiffusionImg2ImgPipeline does it: slice the
    timesteps at t_start * order, set_begin_index, and add_noise(x0, noise, first timestep) to a random x0."""
    cfg = {**SD15, **overrides}
    sched = getattr(diffusers, CLASSES[name]).from_config(cfg, **NAME_KWARGS.get(name, {}))
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    timesteps = sched.timesteps
    begin = 0
    if strength is None:
        sample = torch.randn(SHAPE, generator=gen) * sched.init_noise_sigma
    else:
        init_timestep = min(int(steps * strength), steps)
        begin = max(steps - init_timestep, 0) * sched.order
        timesteps = sched.timesteps[begin:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
        x0 = torch.randn(SHAPE, generator=gen)
        noise = torch.randn(SHAPE, generator=gen)
        sample = sched.add_noise(x0, noise, timesteps[:1])
    samples = []
    for t in timesteps:
        inp = sched.scale_model_input(sample, t)
        out = fake_model(inp, t)
        import inspect

        kwargs = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
        sample = sched.step(out, t, sample, **kwargs).prev_sample
        samples.append([float(f"{v:.9g}") for v in sample.flatten().tolist()])  # float32 precision
    return {
        "scheduler": name,
        "config": overrides,
        "steps": steps,
        "seed": seed,
        "strength": strength,
        "begin": begin,
        "timesteps": [float(t) for t in sched.timesteps],
        "init_noise_sigma": float(sched.init_noise_sigma),
        "samples": samples,
    }


def main():
    cases = []
    for name in CLASSES:
        for steps in (1, 2, 7, 25):
            cases.append(run(name, {}, steps))
        cases.append(run(name, {}, 50, seed=3))
        for spacing in ("leading", "linspace", "trailing"):
            cases.append(run(name, {"timestep_spacing": spacing}, 10, seed=1))
        cases.append(run(name, {"prediction_type": "v_prediction"}, 10, seed=2))
        cases.append(run(name, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, 8, seed=4))
        cases.append(run(name, {"beta_schedule": "squaredcos_cap_v2"}, 8, seed=5))
        if name in KARRAS:
            for steps in (7, 25):
                cases.append(run(name, {"use_karras_sigmas": True}, steps, seed=6))
        cases.append(run(name, {}, 10, seed=19, strength=0.6))
        cases.append(run(name, {"timestep_spacing": "leading"}, 7, seed=20, strength=0.3))
        if name in EXP_BETA:
            cases.append(run(name, {"use_exponential_sigmas": True}, 9, seed=15))
            cases.append(run(name, {"use_beta_sigmas": True}, 9, seed=16))
        if name in FINAL_SIGMA_MIN:
            cases.append(run(name, {"final_sigmas_type": "sigma_min"}, 9, seed=17))
        if name in TRAINED_BETAS:
            betas = (np.linspace(0.0001**0.5, 0.015**0.5, 1000) ** 2).round(8).tolist()
            cases.append(run(name, {"trained_betas": betas}, 6, seed=18))
        if name in ZERO_SNR:
            cases.append(run(name, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                    "prediction_type": "v_prediction"}, 10, seed=8))
        if name in THRESHOLDING:
            cases.append(run(name, {"thresholding": True, "sample_max_value": 1.5, "prediction_type": "sample"}, 10, seed=11))
        if name == "ddim":
            cases.append(run(name, {"clip_sample": True, "set_alpha_to_one": True}, 10, seed=9))
            cases.append(run(name, {"prediction_type": "sample"}, 10, seed=10))
    # diffusers itself produces NaN for a few configurations (e.g. KDPM2 with squaredcos_cap_v2: the
    # interpolated sigma's log underflows); nothing to compare against there.
    nan = [c for c in cases if any(v != v for v in c["timesteps"]) or any(v != v for s in c["samples"] for v in s)]
    for c in nan:
        print(f"  skipped (diffusers gives NaN): {c['scheduler']} {c['config']} steps={c['steps']}")
    cases = [c for c in cases if c not in nan]
    out = ROOT / "tests" / "fixtures" / "scheduler_goldens.json"
    doc = {"diffusers": diffusers.__version__, "torch": torch.__version__, "base_config": SD15, "shape": SHAPE,
           "cases": cases}
    out.write_text(json.dumps(doc, separators=(",", ":")))
    print(f"{len(cases)} cases -> {out.relative_to(ROOT)} ({out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
