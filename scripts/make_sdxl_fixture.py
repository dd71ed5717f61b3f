#!/usr/bin/env python3
"""A tiny SDXL pipeline (two text encoders, pooled text embeddings, size/crop time ids), exported by optimum, and
references from diffusers' StableDiffusionXLPipeline (PyTorch).

    ../pyenv/bin/python scripts/make_sdxl_fixture.py      # the environment make_fixtures.py documents

Writes onnx/sdxl-tiny-optimum, tests/fixtures/sdxl/ (txt2img) and tests/fixtures/sdxl-img2img/
(StableDiffusionXLImg2ImgPipeline and StableDiffusionXLInpaintPipeline on the same weights, with their own
default strengths 0.3 and 0.9999). The structure is SDXL's (diffusers' own tiny test
configuration, scaled to the real CLIP vocabulary): UNet with addition_embed_type="text_time", a CLIPTextModel
and a CLIPTextModelWithProjection whose penultimate hidden states are concatenated, tokenizer_2 padding with
"!", VAE scaling factor 0.13025, force_zeros_for_empty_prompt, EulerDiscreteScheduler as SDXL ships it.
"""
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

OUT_MODEL = mf.ONNX_DIR / "sdxl-tiny-optimum"
OUT_REFS = mf.FIX_DIR / "sdxl"
OUT_IMAGE_REFS = mf.FIX_DIR / "sdxl-img2img"
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}
CASES = [
    {"name": "xl_euler", "scheduler": "euler", "seed": 31},
    {"name": "xl_negative", "scheduler": "euler", "negative_prompt": "blurry, low quality", "seed": 32},
    {"name": "xl_dpmpp2m_karras", "scheduler": "dpm++2m", "karras": True, "steps": 12, "seed": 33},
    {"name": "xl_euler-a_nonsquare", "scheduler": "euler-a", "width": 96, "height": 64, "seed": 34},
    {"name": "xl_batch2_noguidance", "scheduler": "euler", "batch": 2, "guidance": 1.0, "seed": 35},
]

IMAGE_CASES = [
    {"name": "xl_img2img_default", "mode": "img2img", "scheduler": "euler", "strength": 0.3, "seed": 41},
    {"name": "xl_img2img_eulera_0.7", "mode": "img2img", "scheduler": "euler-a", "strength": 0.7, "seed": 42},
    {"name": "xl_inpaint_default", "mode": "inpaint", "scheduler": "euler", "strength": 0.9999, "seed": 43},
    {"name": "xl_inpaint_dpmpp2m_full", "mode": "inpaint", "scheduler": "dpm++2m", "strength": 1.0, "seed": 44},
]


def build(work: Path):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    width = 8
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + width,  # time ids embedded + pooled text embeds
        cross_attention_dim=2 * width, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 8, 16, 16], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=64, scaling_factor=0.13025,
    )
    cfg = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=width,
               intermediate_size=2 * width, num_attention_heads=2, num_hidden_layers=3, vocab_size=49408,
               max_position_embeddings=77, hidden_act="gelu", projection_dim=width)
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    with torch.no_grad():
        for module in (unet, vae, text_encoder, text_encoder_2):
            for p in module.parameters():
                if p.abs().max() == 0:
                    p.normal_(0, 0.02)
        # As make_fixtures.py does: give the random UNet's prediction unit-ish variance.
        probe = unet(torch.randn(2, 4, 8, 8), torch.tensor(500.0), torch.randn(2, 77, 2 * width),
                     added_cond_kwargs={"text_embeds": torch.randn(2, width),
                                        "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}).sample.std()
        unet.conv_out.weight.mul_(1.0 / probe)
        unet.conv_out.bias.mul_(1.0 / probe)
    tok_dir = work / "clip_vocab"
    mf.write_clip_vocab(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="<|endoftext|>",
                              model_max_length=77)
    # SDXL's second tokenizer pads with "!" (as SD 2.x's does).
    tokenizer_2 = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="!",
                                model_max_length=77)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
        force_zeros_for_empty_prompt=True,
    )
    pt_dir = work / "pt-xl"
    pipe.save_pretrained(pt_dir)
    disk = StableDiffusionXLPipeline.from_pretrained(pt_dir)
    disk.set_progress_bar_config(disable=True)
    return disk, pt_dir


def render(pipe, out: Path):
    import diffusers

    out.mkdir(parents=True)
    base_cfg = dict(pipe.scheduler.config)
    manifest = []
    for c in CASES:
        c = {"prompt": mf.PROMPT, "negative_prompt": None, "steps": 20, "guidance": 7.5, "rng": "torch", "width": 64,
             "height": 64, "batch": 1, "karras": False, **c}
        cls_name, extra = mf.SCHEDULERS[c["scheduler"]]
        kwargs = dict(extra)
        if c["karras"]:
            kwargs["use_karras_sigmas"] = True
        pipe.scheduler = getattr(diffusers, cls_name).from_config(base_cfg, **kwargs)
        call = lambda output_type: pipe(
            c["prompt"], negative_prompt=c["negative_prompt"], num_inference_steps=c["steps"],
            guidance_scale=c["guidance"], width=c["width"], height=c["height"],
            num_images_per_prompt=c["batch"], generator=torch.Generator("cpu").manual_seed(c["seed"]),
            output_type=output_type).images
        images = call("np")
        latents = call("latent")
        from PIL import Image

        (out / f"{c['name']}.latents.bin").write_bytes(latents.numpy().astype("<f4").tobytes())
        c["files"] = []
        for i, im in enumerate(images):
            name = f"{c['name']}-{i}.png" if c["batch"] > 1 else f"{c['name']}.png"
            Image.fromarray((im * 255).round().astype("uint8")).save(out / name)
            c["files"].append(name)
        c["latents_shape"] = list(latents.shape)
        print(f"  {c['name']}: mean {(images * 255).mean():.1f} std {(images * 255).std():.1f}")
        manifest.append(c)
    mf.write_manifest(out, manifest, "onnx/sdxl-tiny-optimum")


def render_images(pt_dir: Path, out: Path):
    import diffusers
    from PIL import Image

    out.mkdir(parents=True)
    pipes = {"img2img": diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(pt_dir),
             "inpaint": diffusers.StableDiffusionXLInpaintPipeline.from_pretrained(pt_dir)}
    manifest = []
    for c in IMAGE_CASES:
        c = {"prompt": mf.PROMPT, "negative_prompt": None, "steps": 20, "guidance": 7.5, "rng": "torch", "batch": 1,
             "karras": False, "image": "init-64.png", "mask": "mask-64.png", **c}
        pipe = pipes[c["mode"]]
        pipe.set_progress_bar_config(disable=True)
        cls_name, extra = mf.SCHEDULERS[c["scheduler"]]
        pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
        image = Image.open(mf.FIX_DIR / "images" / c["image"]).convert("RGB")
        c["width"], c["height"] = image.size
        kwargs = dict(prompt=c["prompt"], image=image, strength=c["strength"], num_inference_steps=c["steps"],
                      guidance_scale=c["guidance"], num_images_per_prompt=c["batch"])
        if c["mode"] == "inpaint":
            kwargs.update(mask_image=Image.open(mf.FIX_DIR / "images" / c["mask"]), width=c["width"],
                          height=c["height"])
        else:
            c["mask"] = None
        res = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="np").images
        lat = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="latent").images
        (out / f"{c['name']}.latents.bin").write_bytes(lat.numpy().astype("<f4").tobytes())
        name = f"{c['name']}.png"
        Image.fromarray((res[0] * 255).round().astype("uint8")).save(out / name)
        c["files"] = [name]
        manifest.append(c)
        print(f"  {c['name']}: mean {(res * 255).mean():.1f}")
    mf.write_manifest(out, manifest, "onnx/sdxl-tiny-optimum")


def check_graphs(pipe, staged: Path):
    """The exported encoders and UNet against the PyTorch modules (optimum checks too, at its own tolerance)."""
    ids = pipe.tokenizer(mf.PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    for name, module in (("text_encoder", pipe.text_encoder), ("text_encoder_2", pipe.text_encoder_2)):
        s = ort.InferenceSession(str(staged / name / "model.onnx"), providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input_ids": ids.numpy()})))
        with torch.no_grad():
            want = module(ids, output_hidden_states=True)
        assert np.abs(got["hidden_states.2"] - want.hidden_states[-2].numpy()).max() < 1e-4, name
        if name == "text_encoder_2":
            assert np.abs(got["text_embeds"] - want.text_embeds.numpy()).max() < 1e-4
    s = ort.InferenceSession(str(staged / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    lat, emb, pooled = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 16), torch.randn(2, 8)
    ids6 = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    with torch.no_grad():
        want = pipe.unet(lat, torch.tensor(601.0), emb,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": ids6}).sample.numpy()
    got = s.run(None, {"sample": lat.numpy(), "timestep": np.array(601.0, np.float32),
                       "encoder_hidden_states": emb.numpy(), "text_embeds": pooled.numpy(),
                       "time_ids": ids6.numpy()})[0]
    print(f"  unet: max |onnx - torch| {np.abs(got - want).max():.2e}")
    assert np.abs(got - want).max() < 2e-3


def main():
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pipe, pt_dir = build(work)
        staged = work / "onnx"
        mf.export_optimum_layout(pt_dir, staged)
        for cfg in staged.rglob("*.json"):
            text = cfg.read_text()
            if "sd-tiny" in text:
                cfg.write_text(text.replace("sd-tiny", "sdxl-tiny"))
        check_graphs(pipe, staged)
        refs = work / "refs"
        render(pipe, refs)
        image_refs = work / "image-refs"
        render_images(pt_dir, image_refs)
        shutil.rmtree(OUT_MODEL, ignore_errors=True)
        shutil.copytree(staged, OUT_MODEL)
        shutil.rmtree(OUT_REFS, ignore_errors=True)
        shutil.copytree(refs, OUT_REFS)
        shutil.rmtree(OUT_IMAGE_REFS, ignore_errors=True)
        shutil.copytree(image_refs, OUT_IMAGE_REFS)
        print(f"{OUT_MODEL.relative_to(mf.ROOT)}: {mf.dir_size(OUT_MODEL) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
