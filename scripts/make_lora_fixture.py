#!/usr/bin/env python3
"""LoRA files in the formats people download, and diffusers references for them (issue #14).

    /work/train/venv/bin/python scripts/make_lora_fixture.py   # make_fixtures.py's environment + peft, lycoris-lora

Writes tests/fixtures/loras/ (seeded random low-rank weights sized for the bundled tiny models):
  style.safetensors        kohya-ss LoRA (lora_unet_*/lora_te_*, lora_down/lora_up/alpha = 2, rank 4) on every
                           attention and feed-forward linear, proj_in/proj_out (1x1 convs) and the text
                           encoder's q/k/v/out_proj and fc1/fc2; ss_base_model_version "sd_v1"
  style-peft.safetensors   the same LoRA in diffusers/PEFT keys (unet.…lora_A/lora_B, text_encoder.…), the
                           alpha/rank scale folded into lora_B as diffusers' converter does
  locon.safetensors        LoCon: resnet 3x3 conv1/conv2, 1x1 conv_shortcut, time_emb_proj, the down-sampler's
                           3x3 conv (two of them with a LyCORIS `lora_mid` Tucker core)
  loha.safetensors         LyCORIS LoHa (hada_w1_a/b, hada_w2_a/b, alpha) on attention and two 3x3 convs
  lokr.safetensors         LyCORIS LoKr (lokr_w1 full, lokr_w2_a/b decomposed; one module with both full)
  sd2/sd2-style.safetensors  kohya LoRA for onnx/sd2-tiny-optimum (ss_base_model_version "sd_v2")
  xl/xl-style.safetensors  SDXL kohya LoRA in SGM block names (input_blocks/middle_block/output_blocks),
                           lora_te1_/lora_te2_; ss_base_model_version "sdxl_base_v1-0"
and tests/fixtures/lora/cases.json + per case the image and final latents. References: diffusers'
`load_lora_weights` + `fuse_lora(lora_scale=w)` for kohya/PEFT/LoCon files (the per-component weights with
`fuse_lora(components=[...])`), and for what diffusers cannot load (two LoRAs at once with different weights,
`lora_mid`, LoHa, LoKr) the published merges applied to the PyTorch weights: W += w * ΔW with ΔW from
LyCORIS' own functions (lycoris.functional.loha/lokr.diff_weight). The merge helper is first checked against
diffusers' fuse on the single-LoRA file, so both kinds of reference come from the same definition.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import make_prompt_fixture as mp  # noqa: E402

LORAS = mf.FIX_DIR / "loras"
OUT = mf.FIX_DIR / "lora"
RANK, ALPHA = 4, 2.0

ATTN = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TE = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
CONV = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv")


def targets(model, suffixes):
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and any(name.endswith(s) for s in suffixes):
            out.append((name, m))
    return out


def lora_pair(g, m, rank):
    """(down, up) for one module: Linear (r, in) / (out, r); Conv (r, in, kh, kw) / (out, r, 1, 1)."""
    w = m.weight
    std = float(w.std())
    if w.dim() == 2:
        down = torch.randn(rank, w.shape[1], generator=g) / w.shape[1] ** 0.5
        up = torch.randn(w.shape[0], rank, generator=g) * std * 0.8
    else:
        down = torch.randn(rank, *w.shape[1:], generator=g) / (w[0].numel()) ** 0.5
        up = torch.randn(w.shape[0], rank, 1, 1, generator=g) * std * 0.8
    return down, up


def kohya_name(prefix, path):
    return prefix + path.replace(".", "_")


def delta_lora(down, up, alpha, shape):
    r = down.shape[0]
    return (up.reshape(up.shape[0], r) @ down.reshape(r, -1)).reshape(shape) * (alpha / r)


def merge(modules, deltas, w):
    with torch.no_grad():
        for (name, m), d in zip(modules, deltas):
            m.weight += w * d.to(m.weight.dtype)


def make_sd_loras(pipe):
    """The SD files and, per file, [(component, module path, ΔW)] for the merge references."""
    from lycoris.functional import loha, lokr
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(14)
    meta = {"ss_base_model_version": "sd_v1", "ss_network_dim": str(RANK), "ss_network_alpha": str(ALPHA),
            "ss_network_module": "networks.lora"}
    kohya, peft, deltas = {}, {}, {"style": []}
    for comp, model, kprefix, pprefix, suffixes in (("unet", pipe.unet, "lora_unet_", "unet.", ATTN),
                                                    ("text_encoder", pipe.text_encoder, "lora_te_", "text_encoder.", TE)):
        for name, m in targets(model, suffixes):
            down, up = lora_pair(g, m, RANK)
            k = kohya_name(kprefix, name)
            kohya[f"{k}.lora_down.weight"], kohya[f"{k}.lora_up.weight"] = down, up
            kohya[f"{k}.alpha"] = torch.tensor(ALPHA)
            peft[f"{pprefix}{name}.lora_A.weight"] = down
            peft[f"{pprefix}{name}.lora_B.weight"] = up * (ALPHA / RANK)
            deltas["style"].append((comp, name, delta_lora(down, up, ALPHA, m.weight.shape)))
    save_file({k: v.contiguous() for k, v in kohya.items()}, LORAS / "style.safetensors", metadata=meta)
    save_file({k: v.contiguous() for k, v in peft.items()}, LORAS / "style-peft.safetensors")

    # LoCon: convolutions (3x3 and 1x1), time_emb_proj (a Gemm in the graph), one module with a Tucker core.
    locon, deltas["locon"], tucker = {}, [], 0
    for i, (name, m) in enumerate(targets(pipe.unet, CONV)):
        k = kohya_name("lora_unet_", name)
        down, up = lora_pair(g, m, RANK)
        if i > 0 and tucker < 2 and m.weight.dim() == 4 and m.weight.shape[-1] == 3:
            tucker += 1
            # lora_mid (r, r, kh, kw); lora_down becomes 1x1: ΔW = einsum(mid, down, up) (LyCORIS' rebuild_tucker).
            mid = torch.randn(RANK, RANK, 3, 3, generator=g) / 3.0
            down = down[:, :, :1, :1].contiguous() * 3.0
            locon[f"{k}.lora_mid.weight"] = mid
            d = torch.einsum("i j k l, j r, p i -> p r k l", mid, down.flatten(1), up.flatten(1)) * (ALPHA / RANK)
        else:
            d = delta_lora(down, up, ALPHA, m.weight.shape)
        locon[f"{k}.lora_down.weight"], locon[f"{k}.lora_up.weight"] = down, up
        locon[f"{k}.alpha"] = torch.tensor(ALPHA)
        deltas["locon"].append(("unet", name, d))
    save_file({k: v.contiguous() for k, v in locon.items()}, LORAS / "locon.safetensors",
              metadata={**meta, "ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "locon"}'})

    # LoHa: ΔW = (w1a @ w1b) * (w2a @ w2b) * alpha / rank.
    hada, deltas["loha"] = {}, []
    some = targets(pipe.unet, ("to_q", "to_v", "ff.net.2")) + targets(pipe.unet, ("conv1",))[:2]
    for name, m in some:
        k = kohya_name("lora_unet_", name)
        out, inn = m.weight.shape[0], m.weight[0].numel()
        w = {n: torch.randn(*s, generator=g) * 0.3 for n, s in
             (("hada_w1_a", (out, RANK)), ("hada_w1_b", (RANK, inn)), ("hada_w2_a", (out, RANK)),
              ("hada_w2_b", (RANK, inn)))}
        w["hada_w1_a"] *= float(m.weight.std())
        for n, v in w.items():
            hada[f"{k}.{n}"] = v
        hada[f"{k}.alpha"] = torch.tensor(ALPHA)
        d = loha.diff_weight(w["hada_w1_b"], w["hada_w1_a"], w["hada_w2_b"], w["hada_w2_a"], None, None,
                             gamma=ALPHA / RANK, backend="torch")
        deltas["loha"].append(("unet", name, d.reshape(m.weight.shape)))
    save_file({k: v.contiguous() for k, v in hada.items()}, LORAS / "loha.safetensors",
              metadata={**meta, "ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "loha"}'})

    # LoKr: ΔW = kron(w1, w2) * scale; w2 = w2_a @ w2_b with scale alpha / rank, or both full (scale 1).
    kr, deltas["lokr"] = {}, []
    for i, (name, m) in enumerate(targets(pipe.unet, ("to_k", "to_out.0", "ff.net.0.proj"))):
        k = kohya_name("lora_unet_", name)
        out, inn = m.weight.shape
        f = 2 if out % 2 == 0 and inn % 2 == 0 else 1
        w1 = torch.randn(f, f, generator=g)
        kr[f"{k}.lokr_w1"] = w1
        if i == 0:
            w2 = torch.randn(out // f, inn // f, generator=g) * float(m.weight.std()) * 0.5
            kr[f"{k}.lokr_w2"] = w2
            d = lokr.diff_weight(w1, None, None, w2, None, None, None, gamma=1.0, backend="torch")
        else:
            w2a = torch.randn(out // f, RANK, generator=g) * float(m.weight.std()) * 0.5
            w2b = torch.randn(RANK, inn // f, generator=g) / (inn // f) ** 0.5
            kr[f"{k}.lokr_w2_a"], kr[f"{k}.lokr_w2_b"] = w2a, w2b
            kr[f"{k}.alpha"] = torch.tensor(ALPHA)
            d = torch.kron(w1, w2a @ w2b) * (ALPHA / RANK)
            # LyCORIS' function, in its own (w1, w1a, w1b, w2, w2a, w2b, t) convention with gamma = alpha.
            ly = lokr.diff_weight(w1, None, None, None, w2a, w2b, None, gamma=ALPHA, backend="torch")
            assert torch.allclose(ly, d, atol=1e-6), "LoKr merge differs from lycoris.functional.lokr"
        deltas["lokr"].append(("unet", name, d.reshape(m.weight.shape)))
    save_file({k: v.contiguous() for k, v in kr.items()}, LORAS / "lokr.safetensors",
              metadata={**meta, "ss_network_module": "lycoris.kohya", "ss_network_args": '{"algo": "lokr"}'})
    return deltas


SGM = None  # filled by sgm_name for the tiny SDXL UNet: layers_per_block 1, two blocks


def sgm_name(path):
    """diffusers module path -> kohya's SGM (LDM) spelling for the tiny SDXL UNet (layers_per_block = 1)."""
    p = path.split(".")
    if p[0] == "down_blocks":
        b, kind, j = int(p[1]), p[2], int(p[3])
        i = 1 + b * 2 + j
        inner = {"resnets": 0, "attentions": 1}[kind]
        return ".".join(["input_blocks", str(i), str(inner)] + p[4:])
    if p[0] == "up_blocks":
        b, kind, j = int(p[1]), p[2], int(p[3])
        i = b * 2 + j
        inner = {"resnets": 0, "attentions": 1}[kind]
        return ".".join(["output_blocks", str(i), str(inner)] + p[4:])
    if p[0] == "mid_block":
        return ".".join(["middle_block", "1"] + p[3:])
    raise ValueError(path)


def make_xl_lora(pipe):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1414)
    kohya, deltas = {}, []
    for comp, model, prefix, suffixes in (("unet", pipe.unet, "lora_unet_", ATTN),
                                          ("text_encoder", pipe.text_encoder, "lora_te1_", TE),
                                          ("text_encoder_2", pipe.text_encoder_2, "lora_te2_", TE)):
        for name, m in targets(model, suffixes):
            down, up = lora_pair(g, m, RANK)
            k = kohya_name(prefix, sgm_name(name) if comp == "unet" else name)
            kohya[f"{k}.lora_down.weight"], kohya[f"{k}.lora_up.weight"] = down, up
            kohya[f"{k}.alpha"] = torch.tensor(ALPHA)
            deltas.append((comp, name, delta_lora(down, up, ALPHA, m.weight.shape)))
    (LORAS / "xl").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya.items()}, LORAS / "xl" / "xl-style.safetensors",
              metadata={"ss_base_model_version": "sdxl_base_v1-0", "ss_network_dim": str(RANK)})
    return deltas


SD_CASES = [
    # diffusers' load_lora_weights + fuse_lora.
    {"name": "kohya_1", "prompt": "a cube <lora:style:1>", "fuse": ("style.safetensors", 1.0, 1.0)},
    {"name": "peft_1", "prompt": "a cube <lora:style-peft:1>", "fuse": ("style-peft.safetensors", 1.0, 1.0),
     "same_as": "kohya_1"},
    {"name": "kohya_0.6", "prompt": "a cube <lora:style:0.6>", "fuse": ("style.safetensors", 0.6, 0.6)},
    {"name": "kohya_neg", "prompt": "a cube <lora:style:-0.8>", "fuse": ("style.safetensors", -0.8, -0.8)},
    {"name": "te_only", "prompt": "a cube <lora:style:1:0>", "fuse": ("style.safetensors", 1.0, 0.0)},
    {"name": "unet_only", "prompt": "a cube <lora:style:0:1>", "fuse": ("style.safetensors", 0.0, 1.0)},
    {"name": "locon", "prompt": "a cube <lora:locon:1>", "merge": [("locon", 1.0)]},
    # The published merges on the PyTorch weights.
    {"name": "two", "prompt": "a cube <lora:style:0.7> <lora:locon:0.5>", "merge": [("style", 0.7), ("locon", 0.5)]},
    {"name": "loha", "prompt": "a cube <lora:loha:0.8>", "merge": [("loha", 0.8)]},
    {"name": "lokr", "prompt": "a cube <lora:lokr:1>", "merge": [("lokr", 1.0)]},
    # The other export layout, the same reference as kohya_1.
    {"name": "kohya_1_convert", "prompt": "a cube <lora:style:1>", "model": "onnx/sd-tiny-convert",
     "fuse": ("style.safetensors", 1.0, 1.0), "same_as": "kohya_1"},
]
XL_CASES = [
    {"name": "xl_kohya", "prompt": "a cube <lora:xl-style:0.9>", "fuse": ("xl/xl-style.safetensors", 0.9, 0.9)},
]


def check_merge_matches_fuse(sd_dir, deltas):
    """The merge helper against diffusers' fuse_lora on the same file: the same weights."""
    import diffusers

    a = diffusers.StableDiffusionPipeline.from_pretrained(sd_dir)
    a.load_lora_weights(str(LORAS / "style.safetensors"))
    a.fuse_lora(lora_scale=0.7)
    b = diffusers.StableDiffusionPipeline.from_pretrained(sd_dir)
    apply(b, deltas["style"], 0.7, 0.7)
    worst = 0.0
    for comp in ("unet", "text_encoder"):
        pa = dict(getattr(a, comp).named_parameters())
        for n, p in getattr(b, comp).named_parameters():
            head, _, leaf = n.rpartition(".")
            key = n if n in pa else f"{head}.base_layer.{leaf}"
            worst = max(worst, float((pa[key] - p).abs().max()))
    print(f"  merge helper vs diffusers fuse_lora: max |dW| {worst:.2e}")
    assert worst < 1e-5


def apply(pipe, deltas, te, unet):
    with torch.no_grad():
        for comp, name, d in deltas:
            model = getattr(pipe, comp)
            m = dict(model.named_modules())[name]
            m.weight += (unet if comp == "unet" else te) * d


def build_sd2(work: Path):
    """A tiny SD 2.x-shaped pipeline: linear proj_in/proj_out (`use_linear_projection`), per-block head counts,
    a GELU text encoder (OpenCLIP in transformers' CLIPTextModel form) and a tokenizer padding with "!", as
    stabilityai/stable-diffusion-2-1-base has them; exported by optimum to onnx/sd2-tiny-optimum (no VAE encoder:
    txt2img only)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(2)
    width = 16
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=[8, 8, 16, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=64)
    te = CLIPTextModel(CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=0, hidden_size=width,
                                      intermediate_size=2 * width, num_attention_heads=2, num_hidden_layers=2,
                                      vocab_size=49408, max_position_embeddings=77, hidden_act="gelu"))
    with torch.no_grad():
        for module in (unet, vae, te):
            for p in module.parameters():
                if p.abs().max() == 0:
                    p.normal_(0, 0.02)
        probe = unet(torch.randn(2, 4, 8, 8), torch.tensor(500.0), torch.randn(2, 77, width)).sample.std()
        unet.conv_out.weight.mul_(1.0 / probe)
        unet.conv_out.bias.mul_(1.0 / probe)
    tok_dir = work / "clip_vocab"
    mf.write_clip_vocab(tok_dir)
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="!", model_max_length=77)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=PNDMScheduler.from_config(mf.SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pt_dir = work / "pt-sd2"
    pipe.save_pretrained(pt_dir)
    return pt_dir


def make_sd2(tmp: Path):
    """onnx/sd2-tiny-optimum, its LoRA and one reference (`python scripts/make_lora_fixture.py --sd2`)."""
    import diffusers
    from safetensors.torch import save_file

    pt_dir = build_sd2(tmp)
    out = mf.ONNX_DIR / "sd2-tiny-optimum"
    shutil.rmtree(out, ignore_errors=True)
    mf.export_optimum_layout(pt_dir, out)
    shutil.rmtree(out / "vae_encoder", ignore_errors=True)
    p = diffusers.StableDiffusionPipeline.from_pretrained(pt_dir)
    p.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(2014)
    kohya = {}
    for comp, model, prefix, suffixes in (("unet", p.unet, "lora_unet_", ATTN),
                                          ("text_encoder", p.text_encoder, "lora_te_", TE)):
        for name, m in targets(model, suffixes):
            down, up = lora_pair(g, m, RANK)
            k = kohya_name(prefix, name)
            kohya[f"{k}.lora_down.weight"], kohya[f"{k}.lora_up.weight"] = down, up
            kohya[f"{k}.alpha"] = torch.tensor(ALPHA)
    (LORAS / "sd2").mkdir(parents=True, exist_ok=True)
    f = LORAS / "sd2" / "sd2-style.safetensors"
    save_file({k: v.contiguous() for k, v in kohya.items()}, f, metadata={"ss_base_model_version": "sd_v2"})
    c = mp.defaults({"name": "sd2_kohya", "prompt": "a cube <lora:sd2-style:0.8>"})
    c["scheduler"] = "euler"
    p.scheduler = diffusers.EulerDiscreteScheduler.from_config(p.scheduler.config)
    p.load_lora_weights(str(f))
    p.fuse_lora(lora_scale=0.8)
    p.unload_lora_weights()
    call = lambda o: p("a cube", num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=64, height=64,
                       generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type=o).images
    images, latents = call("np"), call("latent")
    c["model"], c["lora_dir"] = "onnx/sd2-tiny-optimum", "tests/fixtures/loras/sd2"
    c["latents_shape"] = list(latents.shape)
    mf.save_reference(OUT, c, images, latents)
    doc = json.loads((OUT / "cases.json").read_text())
    doc["cases"] = [x for x in doc["cases"] if x["name"] != "sd2_kohya"] + [c]
    (OUT / "cases.json").write_text(json.dumps(doc, indent=1))


def main():
    import diffusers

    if "--sd2" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            make_sd2(Path(tmp))
        return

    import make_sdxl_fixture as xl

    shutil.rmtree(LORAS, ignore_errors=True)
    LORAS.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pipe = mf.committed_pipeline(tmp / "sd")
        xl_pipe, _ = xl.build(tmp / "xl")
        xl.check_graphs(xl_pipe, mf.ONNX_DIR / "sdxl-tiny-optimum")
        sd_dir, xl_dir = tmp / "sd-saved", tmp / "xl-saved"
        pipe.save_pretrained(sd_dir)
        xl_pipe.save_pretrained(xl_dir)
        deltas = make_sd_loras(pipe)
        xl_deltas = make_xl_lora(xl_pipe)
        check_merge_matches_fuse(sd_dir, deltas)
        shutil.rmtree(OUT, ignore_errors=True)
        OUT.mkdir(parents=True)
        manifest, done = [], {}
        for case in SD_CASES + XL_CASES:
            c = mp.defaults({**case})
            c["scheduler"] = "euler"
            is_xl = c["name"].startswith("xl_")
            cls = diffusers.StableDiffusionXLPipeline if is_xl else diffusers.StableDiffusionPipeline
            p = cls.from_pretrained(xl_dir if is_xl else sd_dir)
            p.set_progress_bar_config(disable=True)
            p.scheduler = getattr(diffusers, mf.SCHEDULERS["euler"][0]).from_config(p.scheduler.config)
            if "fuse" in c:
                f, te, unet = c.pop("fuse")
                p.load_lora_weights(str(LORAS / f))
                if te == unet:
                    p.fuse_lora(lora_scale=te)
                else:
                    tes = ["text_encoder", "text_encoder_2"] if is_xl else ["text_encoder"]
                    p.fuse_lora(components=tes, lora_scale=te)
                    p.fuse_lora(components=["unet"], lora_scale=unet)
                p.unload_lora_weights()  # the fused weights stay
            else:
                for name, w in c.pop("merge"):
                    apply(p, deltas[name], w, w)
            clean = mp.defaults({"prompt": c["prompt"]})["prompt"].split(" <")[0]
            call = lambda out: p(clean, num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=64,
                                 height=64, generator=torch.Generator("cpu").manual_seed(c["seed"]),
                                 output_type=out).images
            images, latents = call("np"), call("latent")
            if c.get("same_as"):
                ref = done[c["same_as"]]
                assert (latents - ref).abs().max() < 1e-4, f"{c['name']} differs from {c['same_as']}"
            done[c["name"]] = latents
            c.setdefault("model", "onnx/sdxl-tiny-optimum" if is_xl else "onnx/sd-tiny-optimum")
            c["lora_dir"] = "tests/fixtures/loras/xl" if is_xl else "tests/fixtures/loras"
            c["latents_shape"] = list(latents.shape)
            mf.save_reference(OUT, c, images, latents)
            manifest.append(c)
        mf.write_manifest(OUT, manifest, "per case")
        make_sd2(tmp)
        print("  xl deltas:", len(xl_deltas), "sd files:", sorted(p.name for p in LORAS.rglob("*.safetensors")))


if __name__ == "__main__":
    main()
