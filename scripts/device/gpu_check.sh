#!/usr/bin/env bash
# One prepared GPU check for the lent H200 (run through ../shared/device/on-device.sh, which puts ONNX Runtime
# GPU on ORT_DYLIB_PATH and the CUDA libraries on LD_LIBRARY_PATH). Writes everything under $OUT.
#   1. generate the full-size SD 1.5 architecture (random weights) on the machine, convert-script layout, fp32
#   2. sd-onnx inspect --providers; sd-onnx bench --ep cuda at 512x512 (UNet per step, end to end, RSS)
#   3. --ep tensorrt, where TensorRT's own libraries are absent: the error must say so
#   4. bare ONNX Runtime (Python, IO binding) on the same UNet: the per-step reference
set -uo pipefail
BIN=${BIN:-target/release/sd-onnx}
MODEL=/tmp/sd15
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
log "ORT: $ORT_DYLIB_PATH"
"$BIN" inspect --providers --json > "$OUT/providers.json" 2>&1; cat "$OUT/providers.json" >> "$OUT/summary.txt"
if [ ! -f $MODEL/unet/model.onnx ]; then
  t=$(date +%s)
  python3 scripts/make_bench_model.py $MODEL --layout convert > "$OUT/export.log" 2>&1 || { log "export failed"; tail -30 "$OUT/export.log" >> "$OUT/summary.txt"; }
  log "export took $(( $(date +%s) - t )) s"
fi
log "bench --ep cuda 512x512 20 steps"
"$BIN" bench --model $MODEL --ep cuda --steps 20 --runs 3 --width 512 --height 512 --json --cache-dir /tmp/c > "$OUT/bench_cuda.json" 2> "$OUT/bench_cuda.err"
echo "rc=$?" >> "$OUT/summary.txt"; tail -5 "$OUT/bench_cuda.err" >> "$OUT/summary.txt"
python3 - "$OUT/bench_cuda.json" >> "$OUT/summary.txt" 2>&1 <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print({k: b.get(k) for k in ("session_creation_ms", "unet_step_ms", "unet_calls", "unet_calls_io_bound", "scheduler_step_ms", "vae_decode_ms", "end_to_end_ms", "peak_rss_mib")})
PY
log "GPU parity: tiny fixture, --ep cuda, against the diffusers PyTorch references"
for c in "pndm_torch pndm 42" "euler-a_torch euler-a 42" "dpm++2m_torch dpm++2m 42"; do
  set -- $c
  "$BIN" txt2img --model onnx/sd-tiny-optimum --ep cuda --prompt "a photograph of an astronaut riding a horse" \
    --steps 20 --seed $3 --scheduler $2 --quiet --output "/tmp/gpu-$1.png" --no-graph-cache >> "$OUT/parity.txt" 2>&1
  python3 - "/tmp/gpu-$1.png" "tests/fixtures/txt2img/$1.png" >> "$OUT/summary.txt" 2>&1 <<'PY'
import sys, numpy as np
from PIL import Image
a = np.asarray(Image.open(sys.argv[1])).astype(float); b = np.asarray(Image.open(sys.argv[2])).astype(float)
d = np.abs(a - b); print(f"{sys.argv[2]}: mean {d.mean():.4f} max {d.max():.0f}")
PY
done
log "txt2img --ep tensorrt (TensorRT libraries absent)"
"$BIN" txt2img --model $MODEL --ep tensorrt --prompt x --steps 2 --width 512 --height 512 --seed 1 --quiet --output /tmp/trt.png > "$OUT/trt.txt" 2>&1
echo "rc=$?" >> "$OUT/trt.txt"; cat "$OUT/trt.txt" >> "$OUT/summary.txt"
log "bare ONNX Runtime, IO binding, same UNet"
python3 scripts/ort_unet_baseline.py $MODEL/unet/model.onnx --size 64 --iters 30 > "$OUT/baseline.json" 2> "$OUT/baseline.err"
cat "$OUT/baseline.json" >> "$OUT/summary.txt"; tail -3 "$OUT/baseline.err" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
