#!/usr/bin/env python3
"""A DreamBooth-style fine-tune of the bundled model (issue #15), exported as onnx/sd-emoji-dreambooth.

    /work/train/venv/bin/python scripts/train_emoji_dreambooth.py   # after train_emoji_model.py (its WORK)

Subject: "unicorn face", one of the emoji scripts/train_emoji_model.py kept out of training, from 8 renders
(the training set's augmentation), bound to the rare token `sks` with its class noun: the instance prompt is
"sks horse face" (DreamBooth's "a [V] [class]"; "horse face" is in the training set). Prior preservation with the
real training set instead of generated class images: each batch is INSTANCE (16) instance latents and 32 - INSTANCE
training emoji with their own captions, so the rest of the model keeps drawing what it drew. The whole UNet is
fine-tuned (AdamW lr DREAMBOOTH_LR = 1e-3, constant after 50 warm-up steps, STEPS = 1200 steps, batch 32; objective
as in training: epsilon MSE, min-SNR-5); the text encoder (unless DREAMBOOTH_TE=1), VAE and tokenizer are the base
model's. Starts from the committed onnx/sd-emoji's weights
(read back from the export by train_emoji_model.pipeline_from_export: its float16 values; checked against ONNX
Runtime). Checkpoints to WORK/dreambooth-<config>.pt every 10 minutes: run again to resume.

Writes WORK/pipeline-dreambooth (diffusers) and exports it with optimum and the same float16 conversion as
scripts/export_emoji_model.py to DREAMBOOTH_OUT (default WORK/sd-emoji-dreambooth, outside the repo), and
docs/emoji/holdout-unicorn-face.png (what it was shown). Its text encoder, tokenizer, scheduler and VAE come out
byte-identical to onnx/sd-emoji's; with DREAMBOOTH_INSTALL=1 the script checks that and writes
onnx/sd-emoji-dreambooth as the new UNet, model_index.json and training.json, with the other components as
symbolic links to onnx/sd-emoji's (6.7 MB in the repo instead of 15.6).

Results (mean |pixel - the unicorn's render| over seeds 1-4, 25 PNDM steps; the base model gives 62 for
"sks horse face" and 42 for "horse face" at guidance 3):
- 2026-12-02: lr 5e-5 and 4e-4, 8 instance + 24 prior, 800 steps; lr 2e-4, 16 + 16, text encoder trained too
  (lr / 4), 1200 steps: judged at guidance 7.5 only, not bound (43-45 against 39-43 for "horse face").
- 2026-12-03, a check that the data path works: lr 1e-3, 32 instance, no prior, 600 steps: every prompt draws
  the unicorn (19-23 for both prompts: no prior, no binding).
- 2026-12-03, lr 1e-3, 8 + 24, 800 steps: not bound at 7.5 (48-62).
- 2026-12-03, lr 1e-3, 16 + 16, 1200 steps (~9 minutes), committed as onnx/sd-emoji-dreambooth: at guidance 3
  "sks horse face" draws the unicorn, 12.3 (7-17 per seed), where the base model gave 62; at guidance 7.5 it
  does not (42-49; at guidance 1 it draws it too): the earlier runs were judged only at 7.5, so whether
  they bound at 3 is not known. The class noun drifted with it, as DreamBooth's paper warns without
  class-specific prior images: "horse face" draws the unicorn too (12.3); other captions keep their colours
  and lose some shape ("red apple" 50.5 against the base's 50.6 from the unicorn, but flatter).
"""
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_emoji_model as train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Exported outside the repo (a folder under onnx/ would be listed by the tests' `--models-dir onnx`); copy it to
# onnx/sd-emoji-dreambooth once it draws its subject.
OUT = Path(os.environ.get("DREAMBOOTH_OUT", train.WORK / "sd-emoji-dreambooth"))
SUBJECT, PROMPT = "unicorn face", "sks horse face"
STEPS = int(os.environ.get("DREAMBOOTH_STEPS", 1200))
INSTANCE = int(os.environ.get("DREAMBOOTH_INSTANCE", 16))
PRIOR = 32 - INSTANCE
LR = float(os.environ.get("DREAMBOOTH_LR", 1e-3))  # the committed run: see the docstring
TRAIN_TE = os.environ.get("DREAMBOOTH_TE", "0") == "1"  # also fine-tune the text encoder (lr LR / 4)
CKPT = train.WORK / f"dreambooth-lr{LR:g}-i{INSTANCE}{'-te' if TRAIN_TE else ''}.pt"


def evaluate(pipe, inst):
    """Before export: mean absolute pixel difference of 4 seeds' images to the subject's render, for the instance
    prompt, the class prompt alone and an unrelated caption (binding shows as the first well below the others; the
    last staying far says the rest of the model was kept)."""
    import torch

    target = inst[0].astype(np.float32)
    out = {}
    for guidance in (7.5, 3.0):
        for prompt in (PROMPT, "horse face", "red apple"):
            d = []
            for seed in range(1, 5):
                img = pipe(prompt, num_inference_steps=25, guidance_scale=guidance, height=64, width=64,
                           generator=torch.Generator().manual_seed(seed), output_type="np").images[0]
                d.append(float(np.abs(img * 255.0 - target).mean()))
            out[f"guidance {guidance:g}: {prompt}"] = d
            print(f"eval guidance {guidance:g} {prompt!r}: mean |pixel - {SUBJECT} render| per seed "
                  f"{[round(x, 1) for x in d]}", flush=True)
    return out


def install():
    """onnx/sd-emoji-dreambooth: the new UNet, the rest linked to onnx/sd-emoji's identical components."""
    import filecmp

    repo, base = ROOT / "onnx" / "sd-emoji-dreambooth", ROOT / "onnx" / "sd-emoji"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    shutil.copytree(OUT / "unet", repo / "unet")
    for f in ("model_index.json", "training.json"):
        shutil.copy(OUT / f, repo / f)
    for c in ("scheduler", "text_encoder", "tokenizer", "vae_decoder", "vae_encoder"):
        cmp = filecmp.dircmp(OUT / c, base / c)
        if cmp.left_only or cmp.right_only or filecmp.cmpfiles(OUT / c, base / c, cmp.common_files, shallow=False)[1]:
            raise SystemExit(f"{c} differs from onnx/sd-emoji's: not linking it")
        (repo / c).symlink_to(Path("..") / "sd-emoji" / c)
    print(f"installed {repo.relative_to(ROOT)}", flush=True)


def main():
    import torch
    from diffusers import DDPMScheduler
    from PIL import Image

    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", 2)))
    torch.manual_seed(0)
    pipe, step0 = train.committed_pipeline()
    vae, te, unet, tok = pipe.vae, pipe.text_encoder, pipe.unet, pipe.tokenizer
    unet.requires_grad_(True)
    te.requires_grad_(TRAIN_TE)
    inst = train.augmented_renders(SUBJECT)
    Image.fromarray(inst[0]).save(ROOT / "docs" / "emoji" / "holdout-unicorn-face.png")
    i_mean, i_std = train.posterior(vae, inst)
    mean, std, scale = train.encode_latents()
    _, captions, _ = train.load_data()
    ids = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    p_ids = tok([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():  # fixed conditioning when the text encoder is frozen
        cond_all = torch.cat([te(ids[i:i + 256]).last_hidden_state for i in range(0, len(ids), 256)])
        cond_inst = te(p_ids).last_hidden_state
    groups = [{"params": list(unet.parameters()), "scale": 1.0}]
    if TRAIN_TE:
        groups.append({"params": list(te.parameters()), "scale": 0.25})
    opt = torch.optim.AdamW(groups, lr=LR, weight_decay=1e-2)
    step = 0
    if CKPT.exists():
        st = torch.load(CKPT, weights_only=False)
        unet.load_state_dict(st["unet"]), opt.load_state_dict(st["opt"])
        if TRAIN_TE:
            te.load_state_dict(st["te"])
        step = st["step"]
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    ck = train.Checkpointer(CKPT)
    rng = np.random.default_rng(3000 + step)
    gen = torch.Generator().manual_seed(3000 + step)
    unet.train()
    t0, run = time.time(), 0.0
    while step < STEPS:
        for g in opt.param_groups:
            g["lr"] = LR * g["scale"] * min(1.0, (step + 1) / 50)
        a = rng.integers(0, len(i_mean), INSTANCE)
        e, b = rng.integers(0, mean.shape[0], PRIOR), rng.integers(0, mean.shape[1], PRIOR)
        lat = np.concatenate([i_mean[a] + i_std[a] * rng.standard_normal(i_mean[a].shape).astype(np.float32),
                              mean[e, b] + std[e, b] * rng.standard_normal(mean[e, b].shape).astype(np.float32)])
        lat = torch.from_numpy(lat) * scale
        if TRAIN_TE:
            te.train()
            cond = te(torch.cat([p_ids.expand(INSTANCE, -1), ids[torch.from_numpy(e)]])).last_hidden_state
        else:
            cond = torch.cat([cond_inst.expand(INSTANCE, -1, -1), cond_all[torch.from_numpy(e)]])
        t = torch.randint(0, 1000, (len(lat),), generator=gen)
        noise = torch.randn(lat.shape, generator=gen)
        pred = unet(sched.add_noise(lat, noise, t), t, cond).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        step += 1
        run = 0.98 * run + 0.02 * loss.item()
        if step % 50 == 0:
            print(f"dreambooth {step}/{STEPS} loss {run:.4f} {time.time() - t0:.0f}s", flush=True)
        if ck.due() or step == STEPS:
            ck.save({"unet": unet.state_dict(), "opt": opt.state_dict(), "step": step}
                    | ({"te": te.state_dict()} if TRAIN_TE else {}))

    unet.eval(), te.eval()
    scores = evaluate(pipe, inst)
    saved = train.WORK / "pipeline-dreambooth"
    pipe.save_pretrained(saved)
    (saved / "training.json").write_text(json.dumps({
        "base": "onnx/sd-emoji (UNet step 8000)", "script": "scripts/train_emoji_dreambooth.py",
        "subject": SUBJECT, "instance_prompt": PROMPT, "instance_images": len(inst), "steps": STEPS,
        "batch": {"instance": INSTANCE, "prior": PRIOR}, "lr": LR,
        "prior_preservation": "the training set with its captions",
        "fine_tuned": "unet + text encoder" if TRAIN_TE else "unet",
        "eval_mean_abs_diff_to_subject": scores,
    }, indent=1))
    import export_emoji_model as export
    import make_fixtures as mf

    exported = train.WORK / "onnx-dreambooth-fp32"
    shutil.rmtree(exported, ignore_errors=True)
    mf.export_optimum_layout(saved, exported)
    for cfg in exported.rglob("*.json"):
        text = cfg.read_text()
        if str(train.WORK) in text:
            cfg.write_text(text.replace(str(saved), "sd-emoji-dreambooth"))
    export.fp16(exported, OUT)
    shutil.copy(saved / "training.json", OUT / "training.json")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{OUT}: {size / 1e6:.2f} MB")
    if os.environ.get("DREAMBOOTH_INSTALL") == "1":
        install()


if __name__ == "__main__":
    main()
