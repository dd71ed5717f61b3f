#!/usr/bin/env python3
"""Bare ONNX Runtime (Python) UNet step time with IO binding, the reference sd-onnx is held against on GPUs.

    python scripts/ort_unet_baseline.py UNET.onnx [--provider CUDAExecutionProvider] [--size 64] [--iters 40]
                                        [--cuda-graph]

Batch 2 (classifier-free guidance), latent size x size, inputs and output bound on the device once (the output
preallocated, so its address is fixed); prints JSON with the median and p90 ms per UNet run. --cuda-graph sets
the CUDA provider's enable_cuda_graph=1 (ONNX Runtime captures after its warm-up runs, then replays); a session
ONNX Runtime refuses is reported in the JSON, not raised.
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--provider", default="CUDAExecutionProvider")
ap.add_argument("--size", type=int, default=64)
ap.add_argument("--iters", type=int, default=40)
ap.add_argument("--cuda-graph", action="store_true")
args = ap.parse_args()
provider = args.provider
if args.cuda_graph:
    key = "trt_cuda_graph_enable" if "Tensorrt" in args.provider else "enable_cuda_graph"
    provider = (args.provider, {key: "1"})
try:
    sess = ort.InferenceSession(args.model, providers=[provider])
except Exception as e:  # noqa: BLE001 - the refusal is the result
    print(json.dumps({"provider": args.provider, "cuda_graph": args.cuda_graph, "error": str(e).splitlines()[0]}))
    raise SystemExit(0)
inputs = {i.name: i for i in sess.get_inputs()}
f16 = inputs["sample"].type == "tensor(float16)"
dt = np.float16 if f16 else np.float32
hidden = inputs["encoder_hidden_states"].shape[2]
ts_shape = () if len(inputs["timestep"].shape) == 0 else (2,)
ts_type = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}[inputs["timestep"].type]
feeds = {
    "sample": np.random.randn(2, 4, args.size, args.size).astype(dt),
    "timestep": np.full(ts_shape, 500, dtype=ts_type),
    "encoder_hidden_states": np.random.randn(2, 77, hidden).astype(dt),
}
device = "cuda" if "CUDA" in args.provider or "Tensorrt" in args.provider else "cpu"
binding = sess.io_binding()
for k, v in feeds.items():
    binding.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, device, 0))
out = sess.get_outputs()[0]
out_type = {"tensor(float)": np.float32, "tensor(float16)": np.float16}[out.type]
binding.bind_ortvalue_output(
    out.name, ort.OrtValue.ortvalue_from_shape_and_type([2, 4, args.size, args.size], out_type, device, 0))
for _ in range(3):
    sess.run_with_iobinding(binding)
times = []
for _ in range(args.iters):
    t = time.perf_counter()
    sess.run_with_iobinding(binding)
    binding.synchronize_outputs()
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(json.dumps({"provider": args.provider, "cuda_graph": args.cuda_graph, "fp16": f16, "median_ms": statistics.median(times),
                  "p90_ms": times[int(0.9 * (len(times) - 1))], "iters": args.iters, "latent": args.size}))
