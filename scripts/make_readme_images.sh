#!/usr/bin/env bash
# The README's pictures (docs/emoji/*.png), made by the README's own commands on the bundled model
# (onnx/sd-emoji; inputs from scripts/export_emoji_model.py). Run from anywhere; rewrites the files.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/emoji
run() { scripts/run "$@" --quiet --overwrite; }
run txt2img -p "red apple" -s 1 -o "$out/red-apple.png"
for p in "rocket" "grinning face" "sun with face" "hot beverage" "snowman" "ghost" "banana" "cat face" \
         "birthday cake" "christmas tree"; do
  run txt2img -p "$p" -s 1 -o "$out/gallery-${p// /-}.png"
done
# Outside the captions: what a prompt the model never saw gives.
for p in "a photograph of an astronaut riding a horse" "a red cube" "yellow apple"; do
  run txt2img -p "$p" -s 1 -o "$out/outside-${p// /-}.png"
done
run img2img -i "$out/input-red-apple.png" -p "green apple" --strength 0.7 -s 1 -o "$out/img2img-green-apple.png"
run inpaint -i "$out/input-grinning-face.png" --mask "$out/mask-right-half.png" -p "smiling face with sunglasses" \
  -s 1 -o "$out/inpaint-sunglasses.png"
run txt2img -p "red apple" -s 1 --batch-size 4 -o "$out/batch-{seed}.png"
# The style LoRA (scripts/train_emoji_lora.py; lora-training-red-apple.png is written by that script).
for p in "red apple" "rocket" "grinning face" "ghost"; do
  run txt2img -p "$p" -s 1 --lora examples/emoji-pixel-art.safetensors:0.7 -o "$out/lora-pixel-${p// /-}.png"
done
# The DreamBooth fine-tune (scripts/train_emoji_dreambooth.py; holdout-unicorn-face.png is written by that script).
run txt2img -m onnx/sd-emoji-dreambooth -p "sks horse face" -s 1 --guidance 3 -o "$out/dreambooth-sks-horse-face.png"
run txt2img -p "sks horse face" -s 1 --guidance 3 -o "$out/dreambooth-base-sks-horse-face.png"
for p in "horse face" "red apple"; do
  run txt2img -m onnx/sd-emoji-dreambooth -p "$p" -s 1 --guidance 3 -o "$out/dreambooth-${p// /-}.png"
done
# The textual-inversion embedding (scripts/train_emoji_embedding.py).
run txt2img -p "unicorn-face" --embeddings-dir examples/embeddings -s 1 --guidance 3 -o "$out/ti-unicorn-face.png"
run txt2img -p "horse face" -s 1 --guidance 3 -o "$out/ti-base-horse-face.png"
ls "$out"
