#!/usr/bin/env python3
"""ONNX Runtime's transformer optimizer over an exported SD folder, then float16: the GPU-fast variant.
Or, with --int8, the CPU variant: int8 weights for the UNet's and text encoder's linear layers.

    python scripts/optimize_onnx.py IN_DIR OUT_DIR [--no-fp16] [--keep-fp32-vae]
    python scripts/optimize_onnx.py IN_DIR OUT_DIR --int8

--int8 (for the CPU provider): `onnxruntime.quantization.quantize_dynamic` on the UNet and the text encoder(s),
MatMuls with a constant weight only (`MatMulConstBOnly`: attention's Q.K^T and P.V stay float32, so sd-onnx still
fuses them), weights int8 per output channel (`per_channel`, symmetric), activations quantized per call
(`DynamicQuantizeLinear` -> `MatMulInteger`). Convolutions stay float32 (dynamic `ConvInteger` is several times
slower than ONNX Runtime's float32 NCHWc convolution on the CPU) and so does the VAE (copied unchanged: it is
what shows quantisation error most). `sd-onnx inspect` reports such graphs as "int8". Measured speed, memory
and image difference against float32: docs/PERFORMANCE.md.

For each graph (unet: model_type "unet", vae_*: "vae", text_encoder: "clip") it runs
`onnxruntime.transformers.optimizer.optimize_model` (attention, GroupNorm, GELU, bias-add fusions), converts to
float16 (inputs and outputs too), and saves with external data. Other files (configs, tokenizer, scheduler,
model_index.json) are copied. `--keep-fp32-vae` also copies the original VAE decoder to `vae_decoder_fp32/`,
which sd-onnx uses when the fp16 decoder overflows to NaN/inf.

Effect, measured on an H200 (docs/PERFORMANCE.md, 2026-11-28; SD 1.5 UNet, batch 2, 64x64 latent, IO binding):
plain fp32 export 26.44 ms/step; this optimizer + fp16 9.95 ms (2.65x); ../shared/device/README.md saw plain
fp16 20.2 ms, fused 10.2 ms, fused + CUDA graph 7.15 ms. The optimizer took 227 s on the full UNet there.

Pitfalls:
  * attention fusion only matches the classic attention pattern: export the UNet with diffusers'
    `AttnProcessor()` set (not the default SDPA processor), or MultiHeadAttention fusion fails;
  * the fused graphs contain ONNX Runtime contrib ops (GroupNorm, NhwcConv, BiasSplitGelu, ...) that only the
    CUDA provider implements: the CPU provider cannot run them (`sd-onnx inspect` says so per graph).
  * the optimizer needs several minutes and a lot of memory on the full UNet (170 s on the H200 machine).
"""
import argparse
import shutil
from pathlib import Path

from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

MODEL_TYPES = {"unet": "unet", "vae_decoder": "vae", "vae_encoder": "vae", "text_encoder": "clip"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--no-fp16", action="store_true")
    ap.add_argument("--keep-fp32-vae", action="store_true")
    ap.add_argument("--int8", action="store_true", help="int8 linear weights for the CPU (see the docstring)")
    a = ap.parse_args()
    src, dst = Path(a.src), Path(a.dst)
    dst.mkdir(parents=True, exist_ok=True)
    if a.int8:
        return int8(src, dst)
    for comp, model_type, graph, out in components(src, dst, MODEL_TYPES):
        options = FusionOptions(model_type)
        try:
            m = optimize_model(str(graph), model_type=model_type, num_heads=0, hidden_size=0,
                               optimization_options=options, opt_level=0, use_gpu=True)
        except Exception as e:  # the attention-fusion pitfall above
            print(f"{comp}: fusion failed ({type(e).__name__}: {e}); retrying without attention fusion "
                  "(export with diffusers' AttnProcessor() to get it)")
            options.enable_attention = False
            m = optimize_model(str(graph), model_type=model_type, num_heads=0, hidden_size=0,
                               optimization_options=options, opt_level=0, use_gpu=True)
        if not a.no_fp16:
            m.convert_float_to_float16(keep_io_types=False)
        m.save_model_to_file(str(out / "model.onnx"), use_external_data_format=True)
        print(f"{comp}: {m.get_fused_operator_statistics()}")
    if a.keep_fp32_vae and (src / "vae_decoder").is_dir():
        shutil.copytree(src / "vae_decoder", dst / "vae_decoder_fp32", dirs_exist_ok=True)


def components(src: Path, dst: Path, rewritten: dict):
    """Copy everything of `src` but the `rewritten` components to `dst`; yield (component, value, its graph,
    its output folder with the component's JSON files copied) for each rewritten one the folder has."""
    for item in src.iterdir():
        if item.name not in rewritten:
            if item.is_dir():
                shutil.copytree(item, dst / item.name, dirs_exist_ok=True)
            else:
                shutil.copy(item, dst / item.name)
    for comp, value in rewritten.items():
        graph = src / comp / "model.onnx"
        if not graph.is_file():
            continue
        out = dst / comp
        out.mkdir(parents=True, exist_ok=True)
        for extra in (src / comp).glob("*.json"):
            shutil.copy(extra, out / extra.name)
        yield comp, value, graph, out


def int8(src: Path, dst: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = {"unet": None, "text_encoder": None, "text_encoder_2": None}
    for comp, _, graph, out in components(src, dst, quantized):
        quantize_dynamic(
            graph, out / "model.onnx", op_types_to_quantize=["MatMul"], per_channel=True,
            weight_type=QuantType.QInt8, use_external_data_format=True,
            extra_options={"MatMulConstBOnly": True},
        )
        print(f"{comp}: int8 linear weights -> {out / 'model.onnx'}")


if __name__ == "__main__":
    main()
