#!/usr/bin/env bash
# --cuda-graph check for the lent H200 (issue #6 items 2-3), run through ../shared/device/on-device.sh like
# gpu_check.sh. One call of about 7 minutes (export ~110 s, optimize ~230 s, the rest ~1 min): use timeout_s 600.
# Everything goes under $OUT as it goes, so a cut-short run still says how far it got.
#   0. tiny fixture (dynamic shapes, fp32), --ep cuda --cuda-graph: captured, or refused with the reason shown;
#      the image against the diffusers PyTorch reference the CPU tests use
#   1. the SD 1.5 architecture (random weights, AttnProcessor export), made fused fp16 by optimize_onnx.py
#   2. bare ONNX Runtime (Python, IO binding) on that UNet, without and with enable_cuda_graph
#   3. sd-onnx bench --ep cuda, 512x512, 50 steps, CFG 7.5: without and with --cuda-graph, alternating, twice
#   4. the same seed with and without --cuda-graph: the images must agree (replay runs the same kernels)
# DRY=1 runs the plumbing here on the CPU (tiny fp16 fixture instead of steps 1-2's export, --ep cpu, no
# --cuda-graph): what scripts/test cannot reach is only the GPU itself.
# PHASE=model runs step 1 alone: it needs only the machine's own torch, diffusers and CPU onnxruntime (no staged
# ONNX Runtime GPU), so it can run before the staging calls, or in the background while they travel
# (`setsid nohup env PHASE=model OUT=/tmp/m bash scripts/device/gpu_cuda_graph.sh &`, if the machine keeps
# background processes between calls); PHASE=measure then skips it when /tmp/sd15f exists.
# Carrying: a device call takes the working tree plus what it carries within 64 MiB. The tracked tree is ~85 MB,
# so move the fixtures this script does not use aside first (everything under onnx/ but sd-tiny-optimum and
# sd-tiny-fp16, 61 MB; sd-emoji-dreambooth's links point into sd-emoji, so the two move together):
# `mkdir -p /tmp/aside && mv $(ls -d onnx/*/ | grep -v -e sd-tiny-optimum -e sd-tiny-fp16) /tmp/aside/` (~24 MB left),
# stage ONNX Runtime GPU in parts of <= 24 MB, and move them back afterwards.
set -uo pipefail
BIN=${BIN:-target/release/sd-onnx}
OUT=${OUT:-/tmp/gpu-cuda-graph}
mkdir -p "$OUT"
S="$OUT/summary.txt"
: > "$S"
log() { echo "== $*" | tee -a "$S"; }
if [ "${DRY:-0}" = 1 ]; then
  EP=cpu; GRAPH=(); PROVIDER=CPUExecutionProvider; MODEL=onnx/sd-tiny-fp16; SIZE=128; LATENT=16; STEPS=5
else
  EP=cuda; GRAPH=(--cuda-graph); PROVIDER=CUDAExecutionProvider; MODEL=/tmp/sd15f; SIZE=512; LATENT=64; STEPS=50
fi
compare() {  # compare A.png B.png label
  python3 - "$1" "$2" "$3" >> "$S" 2>&1 <<'PY'
import sys, numpy as np
from PIL import Image
a = np.asarray(Image.open(sys.argv[1])).astype(float); b = np.asarray(Image.open(sys.argv[2])).astype(float)
d = np.abs(a - b); print(f"{sys.argv[3]}: mean {d.mean():.4f} max {d.max():.0f} levels")
PY
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$S" 2>&1
log "ORT: ${ORT_DYLIB_PATH:-?}"

PHASE=${PHASE:-all}
if ! python3 -c "import diffusers" 2>/dev/null && ls .device-stage/*.whl >/dev/null 2>&1; then
  # Without on-device.sh (PHASE=model before staging): diffusers from the staged wheels (carry .device-stage/*.whl).
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .device-stage/*.whl >> "$S" 2>&1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
if [ "$PHASE" != model ]; then
log "0. tiny fixture, --ep $EP ${GRAPH[*]}"
"$BIN" txt2img --model onnx/sd-tiny-optimum --ep $EP "${GRAPH[@]}" --prompt "a photograph of an astronaut riding a horse" \
  --steps 20 --seed 42 --scheduler pndm --output /tmp/cg-tiny.png --no-graph-cache > "$OUT/tiny.txt" 2>&1
echo "rc=$?" >> "$S"; grep -iE "warning|error|graph" "$OUT/tiny.txt" | cut -c1-400 >> "$S"
compare /tmp/cg-tiny.png tests/fixtures/txt2img/pndm_torch.png "tiny pndm vs diffusers"

fi
if [ "${DRY:-0}" != 1 ] && [ ! -f $MODEL/unet/model.onnx ]; then
  log "1. export + optimize"
  t=$(date +%s)
  python3 scripts/make_bench_model.py /tmp/sd15c --layout convert --classic-attention > "$OUT/export.log" 2>&1 || tail -20 "$OUT/export.log" >> "$S"
  echo "export $(( $(date +%s) - t )) s" >> "$S"; t=$(date +%s)
  python3 scripts/optimize_onnx.py /tmp/sd15c $MODEL --keep-fp32-vae > "$OUT/optimize.log" 2>&1 || tail -20 "$OUT/optimize.log" >> "$S"
  echo "optimize $(( $(date +%s) - t )) s" >> "$S"
fi

if [ "$PHASE" = model ]; then cat "$S"; exit 0; fi
log "2. bare ONNX Runtime, IO binding, without / with enable_cuda_graph"
for g in "" "--cuda-graph"; do
  python3 scripts/ort_unet_baseline.py $MODEL/unet/model.onnx --provider $PROVIDER --size $LATENT --iters 40 $g \
    >> "$OUT/baseline.json" 2>> "$OUT/baseline.err"
done
cat "$OUT/baseline.json" >> "$S"; tail -3 "$OUT/baseline.err" >> "$S"

log "3. sd-onnx bench --ep $EP ${SIZE}x${SIZE}, $STEPS steps, alternating without / with ${GRAPH[*]}"
for round in 1 2; do
  for mode in plain graph; do
    flags=(); [ $mode = graph ] && flags=("${GRAPH[@]}")
    "$BIN" bench --model $MODEL --ep $EP "${flags[@]}" --steps $STEPS --runs 5 --width $SIZE --height $SIZE --json \
      --cache-dir /tmp/c > "$OUT/bench_${mode}_$round.json" 2> "$OUT/bench_${mode}_$round.err"
    echo "bench $mode round $round rc=$?" >> "$S"; tail -2 "$OUT/bench_${mode}_$round.err" | cut -c1-400 >> "$S"
  done
done
python3 - "$OUT" >> "$S" 2>&1 <<'PY'
import glob, json, os, sys
rows = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "bench_*_*.json"))):
    try:
        b = json.load(open(f))
    except Exception as e:  # noqa: BLE001 - report and go on
        print(os.path.basename(f), "unreadable:", e); continue
    mode = os.path.basename(f).split("_")[1]
    rows.setdefault(mode, []).append(b)
    print(os.path.basename(f), {k: b.get(k) for k in ("unet_step_ms", "unet_calls", "unet_calls_io_bound",
          "unet_graph_capture", "unet_host_io_ms", "text_encoding_ms", "vae_decode_ms", "end_to_end_ms", "session_creation_ms")})
med = lambda bs, k: sorted(b[k]["median"] for b in bs)[len(bs) // 2]
if "plain" in rows and "graph" in rows:
    p, g = rows["plain"], rows["graph"]
    print(f"UNet step median ms: plain {med(p, 'unet_step_ms'):.2f}, graph {med(g, 'unet_step_ms'):.2f}")
    print(f"end to end median ms: plain {med(p, 'end_to_end_ms'):.1f}, graph {med(g, 'end_to_end_ms'):.1f}"
          f" (target < 450)")
PY

log "4. same seed without / with ${GRAPH[*]}: images"
for mode in plain graph; do
  flags=(); [ $mode = graph ] && flags=("${GRAPH[@]}")
  "$BIN" txt2img --model $MODEL --ep $EP "${flags[@]}" --prompt "a red bicycle" --steps 10 --seed 3 \
    --width $SIZE --height $SIZE --quiet --output /tmp/cg-$mode.png > "$OUT/same_$mode.txt" 2>&1
  echo "$mode rc=$?" >> "$S"
done
compare /tmp/cg-plain.png /tmp/cg-graph.png "fused model, --cuda-graph vs without"
cat "$S"
