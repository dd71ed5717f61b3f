#!/usr/bin/env python3
"""Derive onnx/sd-tiny-fp16 from onnx/sd-tiny-optimum: the shapes of export that the two main fixtures do not
cover, in one folder.

  * every graph converted to float16, inputs and outputs included (ONNX Runtime's float16 converter, as
    `optimum-cli export onnx --dtype fp16` and Olive produce), so the runtime must cast by metadata;
  * the UNet takes an int64 `timestep`, as older optimum exports did;
  * the UNet's weights live in external data `model.onnx_data`, as optimum writes for graphs over 2 GB.

Needs only onnx and onnxruntime (no torch). Run from the repo root: python scripts/make_fp16_fixture.py
"""
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnxruntime.transformers.float16 import convert_float_to_float16

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "onnx" / "sd-tiny-optimum"
DST = ROOT / "onnx" / "sd-tiny-fp16"


def int64_timestep(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make the `timestep` input int64 and cast it to what the graph used before (float16 here)."""
    g = model.graph
    ts = next(i for i in g.input if i.name == "timestep")
    old_type = ts.type.tensor_type.elem_type
    ts.type.tensor_type.elem_type = TensorProto.INT64
    for node in g.node:
        node.input[:] = ["timestep_cast" if x == "timestep" else x for x in node.input]
    g.node.insert(0, helper.make_node("Cast", ["timestep"], ["timestep_cast"], to=old_type, name="timestep_to_float"))
    return model


def topo_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float16 converter appends the casts it adds around Resize at the end; put nodes back in order."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            (ordered if all(x in ready for x in n.input) else rest).append(n)
            if ordered and ordered[-1] is n:
                ready.update(n.output)
        if len(rest) == len(pending):
            raise RuntimeError(f"cycle or missing input near {rest[0].name}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model


def main():
    shutil.rmtree(DST, ignore_errors=True)
    shutil.copytree(SRC, DST)
    for comp in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        path = DST / comp / "model.onnx"
        model = topo_sort(convert_float_to_float16(onnx.load(path.as_posix()), keep_io_types=False))
        if comp == "unet":
            model = int64_timestep(model)
            path.unlink()
            onnx.save_model(model, path.as_posix(), save_as_external_data=True, all_tensors_to_one_file=True,
                            location="model.onnx_data", size_threshold=0)
        else:
            onnx.save_model(model, path.as_posix())
        onnx.checker.check_model(path.as_posix())
    size = sum(f.stat().st_size for f in DST.rglob("*") if f.is_file())
    print(f"{DST.relative_to(ROOT)}: {size / 1e6:.1f} MB")
    overflowing_vae()


def overflowing_vae():
    """tests/fixtures/nan-vae/vae_decoder/model.onnx: the fp16 VAE decoder with its output multiplied by
    65504 twice, so that it overflows to inf as SD's fp16 VAE does on some latents. Tests swap it into a copy
    of sd-tiny-fp16 to exercise the NaN/inf detection and the fp32 retry."""
    from onnx import numpy_helper

    m = onnx.load((DST / "vae_decoder" / "model.onnx").as_posix())
    g = m.graph
    out = g.output[0].name
    for n in g.node:
        n.output[:] = [out + "_pre" if x == out else x for x in n.output]
    big = numpy_helper.from_array(np.array(65504.0, dtype=np.float16), "overflow_scale")
    g.initializer.append(big)
    g.node.append(helper.make_node("Mul", [out + "_pre", "overflow_scale"], [out + "_mid"], name="overflow1"))
    g.node.append(helper.make_node("Mul", [out + "_mid", "overflow_scale"], [out], name="overflow2"))
    dst = ROOT / "tests" / "fixtures" / "nan-vae" / "vae_decoder"
    dst.mkdir(parents=True, exist_ok=True)
    onnx.save_model(m, (dst / "model.onnx").as_posix())
    onnx.checker.check_model((dst / "model.onnx").as_posix())
    print(f"{dst.relative_to(ROOT)}/model.onnx")


if __name__ == "__main__":
    main()
