#!/usr/bin/env python3
"""sd-onnx against diffusers' OnnxStableDiffusionPipeline on the same graphs, same ONNX Runtime, same machine.

    ../pyenv/bin/python scripts/make_bench_model.py --layout convert     # once: bench-model-convert/ (~4 GB)
    ../pyenv/bin/python scripts/bench_vs_diffusers.py [--model bench-model-convert] [--runs 3]

Each run is a fresh process, timed from process start to PNG written (wall clock and peak RSS from GNU time),
the two tools alternating so that both see the same machine state. Settings as the issue asks: PNDM, 256x256,
10 steps, CFG 7.5; and a 1-step, guidance-1 run where start-up overhead dominates. Both use numpy's RandomState
(the ONNX pipeline's convention) with the same seed. sd-onnx keeps its optimised-graph cache in a scratch folder:
its first (cold) start is reported separately; the alternating runs use the warm cache, as a user's second run
would. diffusers' ONNX pipeline has no such cache.

Prints a table of medians and the ratios sd-onnx / diffusers, plus sd-onnx's time outside Session::run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of an astronaut riding a horse"

DIFFUSERS = r'''
import sys, numpy as np
from diffusers import OnnxStableDiffusionPipeline, PNDMScheduler
model, steps, guidance, size, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
pipe = OnnxStableDiffusionPipeline.from_pretrained(model, provider="CPUExecutionProvider", provider_options=[{}])
pipe.set_progress_bar_config(disable=True)
image = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
             generator=np.random.RandomState(0)).images[0]
image.save(out)
'''.replace("PROMPT", repr(PROMPT))


def timed(cmd, env=None):
    """(wall seconds, peak RSS MiB) of one process, from GNU time."""
    with tempfile.NamedTemporaryFile(suffix=".time") as tf:
        full = ["/usr/bin/time", "-f", "%e %M", "-o", tf.name] + cmd
        r = subprocess.run(full, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
        wall, kb = open(tf.name).read().split()[-2:]
        return float(wall), int(kb) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "bench-model-convert"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "sd-onnx"))
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="sd-onnx-bench-cache-")
    scratch = Path(tempfile.mkdtemp(prefix="sd-onnx-bench-"))
    settings = [("PNDM 256x256, 10 steps, CFG 7.5", 10, 7.5), ("1 step, guidance 1", 1, 1.0)]

    def ours(steps, guidance, tag):
        out, tj = scratch / f"ours-{tag}.png", scratch / f"ours-{tag}.json"
        cmd = [args.binary, "txt2img", "--model", args.model, "--prompt", PROMPT, "--steps", str(steps),
               "--guidance", str(guidance), "--width", "256", "--height", "256", "--scheduler", "pndm",
               "--rng", "numpy", "--seed", "0", "--quiet", "--output", str(out), "--timings-json", str(tj),
               "--cache-dir", cache]
        wall, rss = timed(cmd)
        return wall, rss, json.loads(tj.read_text())

    def theirs(steps, guidance, tag):
        out = scratch / f"diffusers-{tag}.png"
        return timed([sys.executable, "-c", DIFFUSERS, args.model, str(steps), str(guidance), "256", str(out)])

    cold = ours(10, 7.5, "cold")
    print(f"sd-onnx cold start (writes the optimised-graph cache): {cold[0]:.1f} s, {cold[1]:.0f} MiB", flush=True)
    rows = []
    for name, steps, guidance in settings:
        o, t, outside = [], [], []
        for i in range(args.runs):
            wall, rss, tj = ours(steps, guidance, f"{steps}-{i}")
            o.append((wall, rss))
            outside.append(tj["outside_ort_pct"])
            t.append(theirs(steps, guidance, f"{steps}-{i}"))
            print(f"  {name} run {i}: sd-onnx {wall:.1f} s {rss:.0f} MiB | diffusers {t[-1][0]:.1f} s {t[-1][1]:.0f} MiB",
                  flush=True)
        med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
        rows.append((name, med(o, 0), med(t, 0), med(o, 1), med(t, 1), statistics.median(outside)))
    print()
    print("| setting | sd-onnx wall | diffusers wall | wall ratio | sd-onnx peak RSS | diffusers peak RSS | RSS ratio | sd-onnx outside Session::run |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ow, tw, orss, trss, out_pct in rows:
        print(f"| {name} | {ow:.1f} s | {tw:.1f} s | {ow / tw:.2f}x | {orss:.0f} MiB | {trss:.0f} MiB | {orss / trss:.2f}x | {out_pct:.2f}% |")


if __name__ == "__main__":
    main()
