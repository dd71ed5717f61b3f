#!/usr/bin/env python3
"""Random LoRAs of realistic size for `sd-onnx bench --lora` on the full-size benchmark model (issue #14).

    python scripts/make_bench_lora.py bench-model [OUT_DIR] [COUNT]   # numpy, onnx, safetensors; no torch

Writes COUNT (default 3) kohya-format files, rank 32, alpha 16, fp16 (as trainers save them), with a module on
every attention projection (to_q/k/v/out.0), feed-forward layer (ff.net.0.proj, ff.net.2) and transformer
projection (proj_in/proj_out) of the UNet, and every q/k/v/out_proj and fc1/fc2 of the text encoder: what a
civitai SD 1.5 LoRA of rank 32 holds (~36 MiB). The shapes come from the exported graphs' node names, as
sd-onnx maps them.
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from safetensors.numpy import save_file

RANK, ALPHA = 32, 16.0
UNET = ("to_q", "to_k", "to_v", "to_out.0", "ff/net.0/proj", "ff/net.2", "proj_in", "proj_out")
TE = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def modules(graph_path, suffixes):
    m = onnx.load(str(graph_path), load_external_data=False)
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type not in ("MatMul", "Conv", "Gemm") or not n.name.startswith("/"):
            continue
        path = n.name.strip("/").rsplit("/", 1)[0]
        if not any(path.endswith(s) for s in suffixes) or len(n.input) < 2 or n.input[1] not in dims:
            continue
        d = dims[n.input[1]]
        out_f, in_f = (d[1], d[0]) if n.op_type == "MatMul" else (d[0], int(np.prod(d[1:])))
        out[path.replace("/", "_").replace(".", "_")] = (out_f, in_f, d[2:] if n.op_type == "Conv" else [])
    return out


def main():
    model = Path(sys.argv[1])
    out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else model / "loras"
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    out_dir.mkdir(parents=True, exist_ok=True)
    unet = modules(model / "unet" / "model.onnx", UNET)
    te = modules(model / "text_encoder" / "model.onnx", TE)
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        tensors = {}
        for prefix, mods in (("lora_unet_", unet), ("lora_te_", te)):
            for path, (o, n, k) in mods.items():
                key = prefix + path
                tail = [1, 1] if k else []
                tensors[f"{key}.lora_down.weight"] = (rng.standard_normal((RANK, n, *k)) / np.sqrt(n)).astype(np.float16)
                tensors[f"{key}.lora_up.weight"] = (rng.standard_normal((o, RANK, *tail)) * 1e-3).astype(np.float16)
                tensors[f"{key}.alpha"] = np.array(ALPHA, np.float16)
        path = out_dir / f"bench-{i + 1}.safetensors"
        save_file(tensors, str(path), metadata={"ss_base_model_version": "sd_v1", "ss_network_dim": str(RANK),
                                                "ss_network_alpha": str(ALPHA)})
        print(f"{path}: {len(tensors) // 3} modules, {path.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
