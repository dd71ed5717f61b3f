#!/usr/bin/env python3
"""Full-size Stable Diffusion 1.5 architecture with random weights, exported like the fixtures, for benchmarks.

    ../pyenv/bin/python scripts/make_bench_model.py [OUT] [--layout optimum|convert]
        (default: bench-model/ with optimum's layout; bench-model-convert/ for diffusers' convert-script
        layout, the one diffusers' OnnxStableDiffusionPipeline can run; both git-ignored)
    --classic-attention exports the UNet with diffusers' AttnProcessor(), which optimize_onnx.py can fuse.
    --diffusers DIR saves the same weights as a diffusers folder (safetensors) instead of exporting: what
        stable-diffusion.cpp loads (scripts/bench_vs_sdcpp.sh).

UNet (860M parameters), VAE and CLIP ViT-L/14 text encoder with SD 1.5's exact configs, seeded random
weights, the real CLIP vocabulary, SD 1.5's PNDM scheduler config; exported with `optimum-cli export onnx`
(the same exporter the tiny optimum fixture uses). About 4 GB on disk. Never committed, never run in CI.
The weights draw noise, not pictures: speed and memory do not depend on what the weights are.
"""
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402


def main():
    diffusers_dir = None
    if "--diffusers" in sys.argv:
        i = sys.argv.index("--diffusers")
        diffusers_dir = Path(sys.argv[i + 1])
        del sys.argv[i : i + 2]
    args = [a for a in sys.argv[1:] if not a.startswith("--layout") and a != "--classic-attention"]
    layout = "convert" if "--layout=convert" in sys.argv or ("--layout" in sys.argv and "convert" in sys.argv) else "optimum"
    args = [a for a in args if a != "convert"]
    out = Path(args[0]) if args else mf.ROOT / ("bench-model-convert" if layout == "convert" else "bench-model")
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5
    if "--classic-attention" in sys.argv:
        # ONNX Runtime's attention fusion (scripts/optimize_onnx.py) only matches the classic pattern.
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    ))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mf.write_clip_vocab(tmp / "vocab")
        tokenizer = CLIPTokenizer(str(tmp / "vocab/vocab.json"), str(tmp / "vocab/merges.txt"),
                                  pad_token="<|endoftext|>", model_max_length=77)
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=PNDMScheduler.from_config(mf.SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
        if diffusers_dir is not None:
            pipe.save_pretrained(diffusers_dir, safe_serialization=True)
            out = diffusers_dir
        elif layout == "convert":
            with torch.no_grad():
                mf.export_convert_layout(pipe, out)
        else:
            pipe.save_pretrained(tmp / "pt")
            del pipe, unet, vae, text_encoder
            mf.export_optimum_layout(tmp / "pt", out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
