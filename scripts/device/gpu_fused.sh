#!/usr/bin/env bash
# Fused fp16 check on the lent H200 (run through on-device.sh, like gpu_check.sh). Writes under $OUT as it goes.
#   1. SD 1.5 architecture, random weights, UNet exported with diffusers' AttnProcessor() (fusable attention)
#   2. scripts/optimize_onnx.py -> fused fp16 graphs (+ vae_decoder_fp32)
#   3. bare ONNX Runtime (IO binding) and sd-onnx bench --ep cuda on the fused UNet, 512x512
set -uo pipefail
BIN=${BIN:-target/release/sd-onnx}
S="$OUT/summary.txt"
t=$(date +%s)
python3 scripts/make_bench_model.py /tmp/sd15c --layout convert --classic-attention > "$OUT/export.log" 2>&1 || tail -20 "$OUT/export.log" >> "$S"
echo "export $(( $(date +%s) - t )) s" >> "$S"
t=$(date +%s)
python3 scripts/optimize_onnx.py /tmp/sd15c /tmp/sd15f --keep-fp32-vae > "$OUT/optimize.log" 2>&1 || tail -20 "$OUT/optimize.log" >> "$S"
echo "optimize $(( $(date +%s) - t )) s" >> "$S"
grep -E "^(unet|vae|text)" "$OUT/optimize.log" | cut -c1-300 >> "$S"
python3 scripts/ort_unet_baseline.py /tmp/sd15f/unet/model.onnx --size 64 --iters 40 > "$OUT/baseline_fused.json" 2> "$OUT/baseline_fused.err"
cat "$OUT/baseline_fused.json" >> "$S"
"$BIN" bench --model /tmp/sd15f --ep cuda --steps 50 --runs 3 --width 512 --height 512 --json --cache-dir /tmp/c > "$OUT/bench_fused.json" 2> "$OUT/bench_fused.err"
echo "bench rc=$?" >> "$S"; tail -3 "$OUT/bench_fused.err" >> "$S"
python3 - "$OUT/bench_fused.json" >> "$S" 2>&1 <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print({k: b.get(k) for k in ("session_creation_ms", "unet_step_ms", "unet_calls", "unet_calls_io_bound", "scheduler_step_ms", "vae_decode_ms", "text_encoding_ms", "end_to_end_ms", "peak_rss_mib")})
PY
cat "$S"
