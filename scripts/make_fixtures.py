#!/usr/bin/env python3
"""Build the tiny test models and the diffusers reference images that `cargo test` compares against.

Run it in ONE Python environment outside the repo (torch is several GB; CI never runs this):

    python -m venv ../pyenv
    ../pyenv/bin/pip install "optimum-onnx[onnxruntime]" "transformers<4.58" diffusers torch \
        onnxruntime==1.31.1 ftfy scipy clip-anytorch
    ../pyenv/bin/python scripts/make_fixtures.py

What it writes (all committed):
  onnx/sd-tiny-convert/   the pipeline exported like diffusers' convert_stable_diffusion_checkpoint_to_onnx.py
                          (torch.onnx, int32 input_ids, timestep float[batch], VAE encoder samples inside the
                          graph -> `latent_sample`, UNet weights in external `weights.pb`)
  onnx/sd-tiny-optimum/   the same weights exported by `optimum-cli export onnx --task text-to-image`
                          (int64 input_ids, rank-0 timestep, `latent_parameters`, per-component config.json)
  tests/fixtures/tokenizer_cases.json   ids from transformers' CLIPTokenizer for 200+ prompts
  tests/fixtures/txt2img/*.png + cases.json   diffusers StableDiffusionPipeline (PyTorch) references

Nothing is written before every exported graph has been checked against its PyTorch module.
The weights are random (seeded): these models draw noise, not pictures, which is all a parity test needs.
"""
import gzip
import html
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
ONNX_DIR = ROOT / "onnx"
FIX_DIR = ROOT / "tests" / "fixtures"
OPSET = 14  # what diffusers' convert script uses

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}


def bytes_to_unicode():
    """CLIP's byte -> printable unicode table (same as GPT-2's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_vocab(out: Path):
    """vocab.json + merges.txt exactly as OpenAI's CLIP builds them from bpe_simple_vocab_16e6.txt.gz.
    Where clip-anytorch is not installed (the GPU test machine), copy the ones the fixtures already ship."""
    import importlib.util

    if importlib.util.find_spec("clip") is None:
        out.mkdir(parents=True, exist_ok=True)
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(ONNX_DIR / "sd-tiny-optimum" / "tokenizer" / f, out / f)
        return

    # clip-anytorch ships the real BPE file; importing the package itself needs pkg_resources, so only locate it.
    bpe = Path(importlib.util.find_spec("clip").submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def build_pipeline(work: Path, in_channels: int = 4, text_width: int = 16, name: str = "pt",
                   time_cond_proj_dim=None):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=8,  # 8 latent pixels * VAE factor 8 = 64x64 default image
        in_channels=in_channels,  # 9 for inpainting: latents + mask + masked-image latents
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=2,
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,  # set for guidance-distilled (LCM) UNets: w enters as an embedding
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],  # four levels -> spatial factor 8, like real SD
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=64,
    )
    text_cfg = CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=text_width,
        intermediate_size=2 * text_width,
        num_attention_heads=2,
        num_hidden_layers=2,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
    text_encoder = CLIPTextModel(text_cfg)
    # Random init leaves the UNet's last conv at zero-ish scale in some diffusers versions; make sure every
    # weight is non-trivial so that the graphs really compute something.
    with torch.no_grad():
        for module in (unet, vae, text_encoder):
            for p in module.parameters():
                if p.abs().max() == 0:
                    p.normal_(0, 0.02)
        # A random UNet predicts almost nothing (output std ~0.05), so every scheduler would return nearly
        # the initial noise and a parity test could not tell one sampler from another. Scale its last conv so
        # the prediction has unit-ish variance, like a trained epsilon model.
        probe = unet(torch.randn(2, in_channels, 8, 8), torch.tensor(500.0), torch.randn(2, 77, text_width)).sample.std()
        unet.conv_out.weight.mul_(1.0 / probe)
        unet.conv_out.bias.mul_(1.0 / probe)
    tok_dir = work / "clip_vocab"
    write_clip_vocab(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77)
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if in_channels == 9:
        from diffusers import StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline(**pipe.components, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
    pt_dir = work / name
    pipe.save_pretrained(pt_dir)
    return pipe, pt_dir


def onnx_export(model, args, path: Path, input_names, output_names, dynamic_axes):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        args,
        path.as_posix(),
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
        opset_version=OPSET,
        dynamo=False,
    )


def export_convert_layout(pipe, out: Path):
    """Mirror diffusers/scripts/convert_stable_diffusion_checkpoint_to_onnx.py (same names, dtypes, axes)."""
    try:
        from diffusers import OnnxRuntimeModel, OnnxStableDiffusionInpaintPipeline, OnnxStableDiffusionPipeline
    except ImportError:
        OnnxRuntimeModel = None

    num_tokens = pipe.text_encoder.config.max_position_embeddings
    hidden = pipe.text_encoder.config.hidden_size
    ids = pipe.tokenizer("A sample prompt", padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    onnx_export(
        pipe.text_encoder,
        (ids.input_ids.to(dtype=torch.int32),),
        out / "text_encoder" / "model.onnx",
        ["input_ids"],
        ["last_hidden_state", "pooler_output"],
        {"input_ids": {0: "batch", 1: "sequence"}},
    )
    ss = pipe.unet.config.sample_size
    unet_path = out / "unet" / "model.onnx"
    onnx_export(
        pipe.unet,
        (torch.randn(2, pipe.unet.config.in_channels, ss, ss), torch.randn(2), torch.randn(2, num_tokens, hidden), False),
        unet_path,
        ["sample", "timestep", "encoder_hidden_states", "return_dict"],
        ["out_sample"],
        {
            "sample": {0: "batch", 1: "channels", 2: "height", 3: "width"},
            "timestep": {0: "batch"},
            "encoder_hidden_states": {0: "batch", 1: "sequence"},
        },
    )
    # The convert script re-saves the UNet with its weights in one external file, `weights.pb`.
    m = onnx.load(unet_path.as_posix())
    for f in unet_path.parent.iterdir():
        f.unlink()
    onnx.save_model(m, unet_path.as_posix(), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.pb", convert_attribute=False, size_threshold=0)

    import copy

    # As the convert script does: the VAE module itself with `forward` swapped (on copies: `pipe` renders later).
    enc = copy.deepcopy(pipe.vae)
    enc.forward = lambda sample, return_dict: enc.encode(sample, return_dict)[0].sample()
    onnx_export(enc, (torch.randn(1, 3, 64, 64), False), out / "vae_encoder" / "model.onnx", ["sample", "return_dict"],
                ["latent_sample"], {"sample": {0: "batch", 1: "channels", 2: "height", 3: "width"}})
    dec = copy.deepcopy(pipe.vae)
    dec.forward = dec.decode
    onnx_export(dec, (torch.randn(1, 4, ss, ss), False), out / "vae_decoder" / "model.onnx",
                ["latent_sample", "return_dict"], ["sample"],
                {"latent_sample": {0: "batch", 1: "channels", 2: "height", 3: "width"}})
    if OnnxRuntimeModel is None:
        # diffusers without its ONNX pipeline classes: write what the convert script's save_pretrained writes.
        pipe.scheduler.save_pretrained(out / "scheduler")
        pipe.tokenizer.save_pretrained(out / "tokenizer")
        index = {"_class_name": "OnnxStableDiffusionPipeline", "feature_extractor": [None, None],
                 "requires_safety_checker": False, "safety_checker": [None, None],
                 "scheduler": ["diffusers", type(pipe.scheduler).__name__], "tokenizer": ["transformers", "CLIPTokenizer"]}
        for c in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
            index[c] = ["diffusers", "OnnxRuntimeModel"]
        (out / "model_index.json").write_text(json.dumps(index, indent=2))
        return
    cls = OnnxStableDiffusionInpaintPipeline if pipe.unet.config.in_channels == 9 else OnnxStableDiffusionPipeline
    onnx_pipe = cls(
        vae_encoder=OnnxRuntimeModel.from_pretrained(out / "vae_encoder", provider_options=None),
        vae_decoder=OnnxRuntimeModel.from_pretrained(out / "vae_decoder", provider_options=None),
        text_encoder=OnnxRuntimeModel.from_pretrained(out / "text_encoder", provider_options=None),
        tokenizer=pipe.tokenizer,
        unet=OnnxRuntimeModel.from_pretrained(out / "unet", provider_options=None),
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    onnx_pipe.save_pretrained(out)


def export_optimum_layout(pt_dir: Path, out: Path, task: str = "text-to-image"):
    cmd = [sys.executable, "-m", "optimum.exporters.onnx", "--model", str(pt_dir), "--task", task, str(out)]
    subprocess.run(cmd, check=True)
    # optimum records the temporary source path; keep the committed configs stable between regenerations.
    for cfg in out.rglob("*.json"):
        text = cfg.read_text()
        if str(pt_dir) in text:
            cfg.write_text(text.replace(str(pt_dir), "sd-tiny"))


def check_graphs(pipe, layout: Path):
    """Every exported graph must agree with its PyTorch module before anything is kept."""

    def sess(name):
        return ort.InferenceSession(str(layout / name / "model.onnx"), providers=["CPUExecutionProvider"])

    def feed(s, values):
        out = {}
        for i in s.get_inputs():
            v = values[i.name]
            if i.type == "tensor(int32)":
                v = v.astype(np.int32)
            elif i.type == "tensor(int64)":
                v = v.astype(np.int64)
            elif i.type == "tensor(float)":
                v = v.astype(np.float32)
            if len(i.shape) == 0:
                v = v.reshape(())
            out[i.name] = v
        return out

    torch.manual_seed(1)
    ids = pipe.tokenizer(["a red cube", ""], padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    with torch.no_grad():
        want = pipe.text_encoder(torch.from_numpy(ids))[0].numpy()
    s = sess("text_encoder")
    got = s.run(None, feed(s, {"input_ids": ids}))[0]
    assert np.abs(got - want).max() < 1e-4, f"{layout.name} text_encoder differs by {np.abs(got - want).max()}"

    lat = torch.randn(2, pipe.unet.config.in_channels, 8, 10)
    emb = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        want = pipe.unet(lat, torch.tensor(501.0), emb).sample.numpy()
    s = sess("unet")
    ts_rank = len([i for i in s.get_inputs() if i.name == "timestep"][0].shape)
    t = np.array([501.0, 501.0]) if ts_rank == 1 else np.array(501.0)
    got = s.run(None, feed(s, {"sample": lat.numpy(), "timestep": t, "encoder_hidden_states": emb.numpy()}))[0]
    assert np.abs(got - want).max() < 1e-4, f"{layout.name} unet differs by {np.abs(got - want).max()}"

    lat = lat[:, :4]
    with torch.no_grad():
        want = pipe.vae.decode(lat[:1]).sample.numpy()
    s = sess("vae_decoder")
    got = s.run(None, feed(s, {"latent_sample": lat[:1].numpy()}))[0]
    assert np.abs(got - want).max() < 1e-4, f"{layout.name} vae_decoder differs by {np.abs(got - want).max()}"

    img = torch.rand(1, 3, 64, 80) * 2 - 1
    with torch.no_grad():
        dist = pipe.vae.encode(img).latent_dist
    s = sess("vae_encoder")
    out_name = s.get_outputs()[0].name
    got = s.run(None, {"sample": img.numpy()})[0]
    if out_name == "latent_parameters":
        want = dist.parameters.numpy()
        assert np.abs(got - want).max() < 1e-4, f"{layout.name} vae_encoder differs by {np.abs(got - want).max()}"
    else:
        # latent_sample draws its own noise inside the graph; only the mean is comparable, loosely.
        assert got.shape == tuple(dist.mean.shape), f"{layout.name} vae_encoder shape {got.shape}"
    print(f"  {layout.name}: all graphs match PyTorch")


# ---------------------------------------------------------------------------------------------------------
# Tokenizer cases
def tokenizer_prompts():
    base = [
        "",
        " ",
        "a photograph of an astronaut riding a horse",
        "A PHOTOGRAPH OF AN ASTRONAUT RIDING A HORSE",
        "  extra   spaces\tand\ttabs\nand newlines  ",
        "it's a dog's life, isn't it? they're here; we've seen; I'm ok; you'll see; he'd go",
        "It'S LOUD'S",
        "numbers 1234567890 3.14159 1,000,000 2nd 3rd 42x",
        "punctuation!!! ??? ... --- ;;; ::: ((())) [[[ ]]] {{{ }}} <<< >>>",
        "(masterpiece:1.2), best quality, [bad hands], {detailed}",
        "emoji 😀🎉🚀 and 👩‍👩‍👧‍👦 family, ❤️ heart",
        "unicode: café naïve façade résumé coöperate Ångström",
        "日本語のテキスト、中文文本, 한국어 텍스트",
        "Ελληνικά κείμενα και русский текст",
        "עברית ועربية",
        "curly ‘quotes’ and “double quotes” it’s",
        "ligatures ﬁne ﬂow",
        "fullwidth ＡＢＣ１２３",
        "tab\tseparated\tvalues",
        "a-b_c/d\\e|f@g#h$i%j^k&l*m+n=o~p`q",
        "hello<|endoftext|>world",
        "<|startoftext|> inside",
        "html &amp; entities &lt;tag&gt;",
        "mixed CamelCase WordsAndMore",
        "trailing space ",
        "don't stop believin'",
        "o'clock rock'n'roll",
        "e.g. i.e. etc. U.S.A.",
        "#hashtag @mention http://example.com/path?q=1",
        "ℌ𝔢𝔩𝔩𝔬 math letters",
        "zero\u200bwidth\u200bspace",
        "non\u00a0breaking\u00a0space",
        "combining e\u0301 accents",
    ]
    words = ("portrait landscape cyberpunk city neon rain oil painting watercolor sketch highly detailed 8k "
             "trending artstation octane render volumetric lighting cinematic bokeh golden hour fantasy castle "
             "dragon forest misty mountains sunset ocean waves").split()
    rng = np.random.RandomState(1234)
    extras = []
    for i in range(180):
        n = rng.randint(1, 30)
        toks = [words[j] for j in rng.randint(0, len(words), n)]
        seps = [", ", " ", ", ", " and ", "; ", " -- ", "  "]
        s = toks[0]
        for t in toks[1:]:
            s += seps[rng.randint(0, len(seps))] + t
        if i % 5 == 0:
            s = s.upper()
        if i % 7 == 0:
            s += f" {rng.randint(0, 100000)}"
        if i % 11 == 0:
            s = "(" + s + ":1.3)"
        extras.append(s)
    long = ", ".join(words * 6)  # over 77 tokens: truncated
    extras += [long, long.upper(), " ".join(["word"] * 100), "a " * 80]
    return base + extras


def write_tokenizer_cases(tokenizer, path: Path):
    cases = []
    for p in tokenizer_prompts():
        ids = tokenizer(p, padding="max_length", max_length=77, truncation=True).input_ids
        cases.append({"prompt": p, "ids": ids})
    assert len(cases) >= 200
    path.write_text(json.dumps({"generator": "transformers.CLIPTokenizer (ftfy installed)", "cases": cases},
                               ensure_ascii=False, indent=0))


# ---------------------------------------------------------------------------------------------------------
# Reference images
SCHEDULERS = {
    "pndm": ("PNDMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
    "kdpm2-a": ("KDPM2AncestralDiscreteScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}

PROMPT = "a photograph of an astronaut riding a horse"
CASES = [
    {"name": f"{s}_torch", "scheduler": s} for s in SCHEDULERS
] + [
    {"name": "pndm_numpy", "scheduler": "pndm", "rng": "numpy"},
    {"name": "euler_numpy", "scheduler": "euler", "rng": "numpy", "seed": 7},
    {"name": "euler_negative", "scheduler": "euler", "negative_prompt": "blurry, low quality"},
    {"name": "dpm++2m_nonsquare", "scheduler": "dpm++2m", "width": 80, "height": 48, "seed": 3},
    {"name": "euler-a_batch2", "scheduler": "euler-a", "batch": 2, "seed": 11},
    {"name": "ddim_noguidance", "scheduler": "ddim", "guidance": 1.0, "seed": 5},
    {"name": "dpm++2m_karras", "scheduler": "dpm++2m", "karras": True, "steps": 15},
    {"name": "lms_karras", "scheduler": "lms", "karras": True, "steps": 15, "seed": 9},
    {"name": "heun_karras", "scheduler": "heun", "karras": True, "steps": 10, "seed": 12},
    {"name": "dpm++2m-sde_karras", "scheduler": "dpm++2m-sde", "karras": True, "steps": 12, "seed": 13},
    {"name": "kdpm2-a_batch2", "scheduler": "kdpm2-a", "batch": 2, "steps": 10, "seed": 14},
    {"name": "lcm_4steps", "scheduler": "lcm", "steps": 4, "guidance": 1.0, "seed": 15},
]


def render_references(pipe, out: Path):
    import diffusers

    out.mkdir(parents=True, exist_ok=True)
    base_cfg = dict(pipe.scheduler.config)
    manifest = []
    for c in CASES:
        c = {"prompt": PROMPT, "negative_prompt": None, "steps": 20, "guidance": 7.5, "seed": 42, "rng": "torch",
             "width": 64, "height": 64, "batch": 1, "karras": False, **c}
        cls_name, extra = SCHEDULERS[c["scheduler"]]
        kwargs = dict(extra)
        if c["karras"]:
            kwargs["use_karras_sigmas"] = True
        pipe.scheduler = getattr(diffusers, cls_name).from_config(base_cfg, **kwargs)
        gen = torch.Generator("cpu").manual_seed(c["seed"])
        latents = None
        if c["rng"] == "numpy":
            shape = (c["batch"], 4, c["height"] // 8, c["width"] // 8)
            latents = torch.from_numpy(np.random.RandomState(c["seed"]).randn(*shape).astype(np.float32))
        call = lambda output_type, gen: pipe(
            c["prompt"],
            negative_prompt=c["negative_prompt"],
            num_inference_steps=c["steps"],
            guidance_scale=c["guidance"],
            width=c["width"],
            height=c["height"],
            num_images_per_prompt=c["batch"],
            generator=gen,
            latents=latents,
            output_type=output_type,
        ).images
        images = call("np", gen)
        # The final latents too (before the VAE): far more sensitive to a scheduler slip than 8-bit pixels.
        final = call("latent", torch.Generator("cpu").manual_seed(c["seed"])).numpy().astype("<f4")
        (out / f"{c['name']}.latents.bin").write_bytes(final.tobytes())
        c["latents_shape"] = list(final.shape)
        files = []
        for i, im in enumerate(images):
            from PIL import Image

            name = f"{c['name']}-{i}.png" if c["batch"] > 1 else f"{c['name']}.png"
            Image.fromarray((im * 255).round().astype("uint8")).save(out / name)
            files.append(name)
        arr = (images * 255).round()
        print(f"  {c['name']}: mean {arr.mean():.1f} std {arr.std():.1f}")
        c["files"] = files
        manifest.append(c)
    (out / "cases.json").write_text(json.dumps({"diffusers": diffusers.__version__, "torch": torch.__version__,
                                                "cases": manifest}, indent=1))


def make_images(out: Path):
    """Small deterministic inputs: a picture-like RGB image (gradient, disc, bars), a non-square one, a mask
    (white = repaint) and a mask of another size (to exercise resizing)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)

    def picture(w, h):
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        r = 255 * x / (w - 1)
        g = 255 * y / (h - 1)
        b = 255 * (((x - w * 0.6) ** 2 + (y - h * 0.4) ** 2) < (min(w, h) * 0.25) ** 2)
        img = np.stack([r, g, np.maximum(b, 40 * ((x // 8) % 2))], -1)
        return Image.fromarray(img.round().astype(np.uint8))

    picture(64, 64).save(out / "init-64.png")
    picture(80, 48).save(out / "init-80x48.png")
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 20:52] = 255
    Image.fromarray(m).save(out / "mask-64.png")
    m2 = np.zeros((32, 32), np.uint8)
    m2[4:20, 8:28] = 255
    Image.fromarray(m2).convert("RGB").save(out / "mask-32-rgb.png")


IMG2IMG_CASES = [
    {"name": "img2img_euler-a_0.6", "mode": "img2img", "scheduler": "euler-a", "strength": 0.6},
    {"name": "img2img_dpm++2m_0.3", "mode": "img2img", "scheduler": "dpm++2m", "strength": 0.3, "seed": 2},
    {"name": "img2img_ddim_0.8", "mode": "img2img", "scheduler": "ddim", "strength": 0.8, "seed": 3},
    {"name": "img2img_heun_0.5", "mode": "img2img", "scheduler": "heun", "strength": 0.5, "seed": 4, "steps": 10},
    {"name": "img2img_pndm_1.0", "mode": "img2img", "scheduler": "pndm", "strength": 1.0, "seed": 5},
    {"name": "img2img_euler_batch2", "mode": "img2img", "scheduler": "euler", "strength": 0.7, "batch": 2, "seed": 6},
    {"name": "img2img_nonsquare", "mode": "img2img", "scheduler": "dpm++2m-sde", "strength": 0.75, "seed": 7,
     "image": "init-80x48.png"},
    {"name": "inpaint4_euler-a_1.0", "mode": "inpaint", "scheduler": "euler-a", "strength": 1.0, "seed": 8},
    {"name": "inpaint4_ddim_0.7", "mode": "inpaint", "scheduler": "ddim", "strength": 0.7, "seed": 9},
    {"name": "inpaint4_dpm++2m_0.5", "mode": "inpaint", "scheduler": "dpm++2m", "strength": 0.5, "seed": 10},
    {"name": "inpaint9_euler-a_1.0", "mode": "inpaint9", "scheduler": "euler-a", "strength": 1.0, "seed": 11},
    {"name": "inpaint9_dpm++2m_0.75", "mode": "inpaint9", "scheduler": "dpm++2m", "strength": 0.75, "seed": 12},
    {"name": "inpaint9_ddim_1.0", "mode": "inpaint9", "scheduler": "ddim", "strength": 1.0, "seed": 13},
    {"name": "inpaint9_lms_0.6_batch2", "mode": "inpaint9", "scheduler": "lms", "strength": 0.6, "seed": 14, "batch": 2},
]


def render_image_references(pt_dir: Path, inpaint_dir: Path, images: Path, out: Path):
    import diffusers
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    pipes = {
        "img2img": diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(pt_dir, safety_checker=None, requires_safety_checker=False),
        "inpaint": diffusers.StableDiffusionInpaintPipeline.from_pretrained(pt_dir, safety_checker=None, requires_safety_checker=False),
        "inpaint9": diffusers.StableDiffusionInpaintPipeline.from_pretrained(inpaint_dir, safety_checker=None, requires_safety_checker=False),
    }
    manifest = []
    for c in IMG2IMG_CASES:
        c = {"prompt": PROMPT, "negative_prompt": None, "steps": 20, "guidance": 7.5, "seed": 1, "rng": "torch",
             "batch": 1, "karras": False, "image": "init-64.png", "mask": "mask-64.png", **c}
        pipe = pipes[c["mode"]]
        pipe.set_progress_bar_config(disable=True)
        cls_name, extra = SCHEDULERS[c["scheduler"]]
        pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
        image = Image.open(images / c["image"]).convert("RGB")
        c["width"], c["height"] = image.size
        kwargs = dict(prompt=c["prompt"], image=image, strength=c["strength"], num_inference_steps=c["steps"],
                      guidance_scale=c["guidance"], num_images_per_prompt=c["batch"])
        if c["mode"] != "img2img":
            kwargs.update(mask_image=Image.open(images / c["mask"]), width=c["width"], height=c["height"])
        else:
            c["mask"] = None
        res = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="np").images
        lat = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="latent").images
        (out / f"{c['name']}.latents.bin").write_bytes(lat.numpy().astype("<f4").tobytes())
        files = []
        for i, im in enumerate(res):
            name = f"{c['name']}-{i}.png" if c["batch"] > 1 else f"{c['name']}.png"
            Image.fromarray((im * 255).round().astype("uint8")).save(out / name)
            files.append(name)
        c["files"] = files
        c["model"] = "sd-tiny-inpaint" if c["mode"] == "inpaint9" else "sd-tiny"
        manifest.append(c)
        print(f"  {c['name']}")
    (out / "cases.json").write_text(json.dumps({"diffusers": diffusers.__version__, "cases": manifest}, indent=1))


def dir_size(p: Path):
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def committed_pipeline(work: Path):
    """The PyTorch pipeline behind onnx/sd-tiny-optimum, rebuilt from its seed, its UNet checked against the
    committed graph (or nothing is written), and loaded back from the saved folder as users load one: the saved
    scheduler_config.json states every key, and they carry over when a case switches scheduler classes."""
    from diffusers import StableDiffusionPipeline

    pipe, pt_dir = build_pipeline(work)
    s = ort.InferenceSession(str(ONNX_DIR / "sd-tiny-optimum" / "unet" / "model.onnx"),
                             providers=["CPUExecutionProvider"])
    lat, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 16)
    with torch.no_grad():
        want = pipe.unet(lat, torch.tensor(601.0), emb).sample.numpy()
    got = s.run(None, {"sample": lat.numpy(), "timestep": np.array(601.0, np.float32),
                       "encoder_hidden_states": emb.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4, f"rebuilt UNet differs from the committed one: {np.abs(got - want).max()}"
    disk = StableDiffusionPipeline.from_pretrained(pt_dir, safety_checker=None, requires_safety_checker=False)
    disk.set_progress_bar_config(disable=True)
    return disk


def save_reference(out: Path, c: dict, images, latents):
    """One single-image case: final latents, the PNG, and its file name in the case."""
    from PIL import Image

    (out / f"{c['name']}.latents.bin").write_bytes(latents.numpy().astype("<f4").tobytes())
    name = f"{c['name']}.png"
    Image.fromarray((images[0] * 255).round().astype("uint8")).save(out / name)
    c["files"] = [name]
    print(f"  {c['name']}: mean {(images * 255).mean():.1f} std {(images * 255).std():.1f}")


def write_manifest(out: Path, manifest: list, model: str):
    import diffusers

    (out / "cases.json").write_text(json.dumps({"diffusers": diffusers.__version__, "torch": torch.__version__,
                                               "model": model, "cases": manifest}, indent=1))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pipe, pt_dir = build_pipeline(work)
        staged = work / "onnx"
        print("exporting (convert-script layout)")
        with torch.no_grad():
            export_convert_layout(pipe, staged / "sd-tiny-convert")
        print("exporting (optimum layout)")
        export_optimum_layout(pt_dir, staged / "sd-tiny-optimum")
        for layout in sorted(staged.iterdir()):
            check_graphs(pipe, layout)
        tok_cases = work / "tokenizer_cases.json"
        write_tokenizer_cases(pipe.tokenizer, tok_cases)
        refs = work / "txt2img"
        # Render from the pipeline as saved to disk, the way users load a folder. (An in-memory pipeline's
        # scheduler config carries `_use_default_values`, and diffusers drops those keys when switching
        # classes; a folder's scheduler_config.json states them, and they are carried over.)
        from diffusers import StableDiffusionPipeline

        disk_pipe = StableDiffusionPipeline.from_pretrained(pt_dir, safety_checker=None, requires_safety_checker=False)
        disk_pipe.set_progress_bar_config(disable=True)
        render_references(disk_pipe, refs)

        print("inpainting model (9-channel UNet)")
        inpaint_pipe, inpaint_pt = build_pipeline(work, in_channels=9, text_width=8, name="pt-inpaint")
        with torch.no_grad():
            export_convert_layout(inpaint_pipe, staged / "sd-tiny-inpaint-convert")
        export_optimum_layout(inpaint_pt, staged / "sd-tiny-inpaint-optimum", task="inpainting")
        for layout in ("sd-tiny-inpaint-convert", "sd-tiny-inpaint-optimum"):
            check_graphs(inpaint_pipe, staged / layout)
        images = work / "images"
        make_images(images)
        img_refs = work / "img2img"
        render_image_references(pt_dir, inpaint_pt, images, img_refs)

        # Everything checked: now replace what the repo holds.
        ONNX_DIR.mkdir(exist_ok=True)
        for layout in staged.iterdir():
            dst = ONNX_DIR / layout.name
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(layout, dst)
            print(f"  {dst.relative_to(ROOT)}: {dir_size(dst) / 1e6:.1f} MB")
        FIX_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(tok_cases, FIX_DIR / "tokenizer_cases.json")
        # The same vocabulary as a tokenizer.json (the other way folders ship a tokenizer).
        from transformers import CLIPTokenizerFast

        tj = FIX_DIR / "tokenizer-json"
        shutil.rmtree(tj, ignore_errors=True)
        CLIPTokenizerFast.from_pretrained(staged / "sd-tiny-optimum" / "tokenizer").save_pretrained(tj)
        for extra in ("vocab.json", "merges.txt"):
            (tj / extra).unlink(missing_ok=True)
        shutil.rmtree(FIX_DIR / "txt2img", ignore_errors=True)
        shutil.copytree(refs, FIX_DIR / "txt2img")
        for sub, src in (("images", images), ("img2img", img_refs)):
            shutil.rmtree(FIX_DIR / sub, ignore_errors=True)
            shutil.copytree(src, FIX_DIR / sub)
        print(f"onnx/ holds {dir_size(ONNX_DIR) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
