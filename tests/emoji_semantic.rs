//! The bundled model draws what it is asked (issue 15): for 40 fixed captions of its training set (every 34th
//! caption, so symbols and letters as well as faces and food) and fixed seeds, where its own emoji ranks among
//! the training emoji nearest to the generated image.
//!
//! Metric: both images as 16x16 thumbnails (box filter: the mean of each 4x4 block of the 64x64 image, as PIL's
//! BOX resize does for the committed atlas), squared RGB distance summed over the thumbnail; the rank of the
//! caption's own emoji among all 1386 training emoji (tests/fixtures/emoji/atlas.png,
//! scripts/export_emoji_model.py). Chance would put it in the top 5 for 40 * 5 / 1386 = 0.14 of the captions, and
//! at median rank 693.
//!
//! MEASURED (2026-12-02, onnx/sd-emoji as committed): 20 of 40 in the top 5, median rank 6.
//! The bar is a little below: the model is small and briefly trained (README), and a different CPU may round
//! differently.

use sd_onnx::pipeline::{Intent, Pipeline, resolve};
use sd_onnx::profile::ModelProfile;
use std::path::Path;

mod common;

const MODEL: &str = "onnx/sd-emoji";
/// The bars (see MEASURED): top-5 hits out of 40, and the median rank of the caption's own emoji.
const BAR: usize = 15;
const MEDIAN_BAR: usize = 30;

fn thumb(pixels: &[u8], side: usize) -> Vec<f32> {
    let f = side / 16;
    let mut out = vec![0f32; 16 * 16 * 3];
    for y in 0..side {
        for x in 0..side {
            for c in 0..3 {
                out[((y / f) * 16 + x / f) * 3 + c] += pixels[(y * side + x) * 3 + c] as f32;
            }
        }
    }
    out.iter().map(|v| (v / (f * f) as f32).round()).collect()
}

#[test]
fn the_bundled_model_draws_its_captions() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/emoji/captions.json").unwrap(),
    )
    .unwrap();
    let (aw, _, atlas) = common::read_png(Path::new("tests/fixtures/emoji/atlas.png"));
    let captions = doc["captions"].as_array().unwrap();
    let n = captions.len();
    let cols = aw / 16;
    let cell = |i: usize| -> Vec<f32> {
        let (cx, cy) = ((i % cols) * 16, (i / cols) * 16);
        let mut v = Vec::with_capacity(768);
        for y in 0..16 {
            for x in 0..16 {
                for c in 0..3 {
                    v.push(atlas[((cy + y) * aw + cx + x) * 3 + c] as f32);
                }
            }
        }
        v
    };
    let cells: Vec<Vec<f32>> = (0..n).map(cell).collect();
    let runtime = common::runtime();
    let profile = ModelProfile::load(Path::new(MODEL)).unwrap();
    let mut pipe = Pipeline::load(&runtime, profile.clone()).unwrap();
    let mut hits = 0;
    let mut ranks = Vec::new();
    let mut report = Vec::new();
    let nearest = |img: &[f32]| -> Vec<(f32, usize)> {
        let mut d: Vec<(f32, usize)> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.iter().zip(img).map(|(a, b)| (a - b) * (a - b)).sum(), i))
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        d
    };
    for t in doc["tests"].as_array().unwrap() {
        let caption = t["caption"].as_str().unwrap();
        let own = t["index"].as_u64().unwrap() as usize;
        let plan = resolve(
            &profile,
            Intent {
                prompt: caption.into(),
                seed: t["seed"].as_u64(),
                ..Intent::default()
            },
        )
        .unwrap();
        let out = pipe.run(plan, &mut |_| {}).unwrap();
        let img = &out.images[0];
        let ranked = nearest(&thumb(&img.pixels, img.width));
        let rank = ranked.iter().position(|&(_, i)| i == own).unwrap();
        if rank < 5 {
            hits += 1;
        }
        ranks.push(rank + 1);
        report.push(format!(
            "{caption:>40}: rank {:>4}, nearest {:?}",
            rank + 1,
            captions[ranked[0].1].as_str().unwrap()
        ));
    }
    ranks.sort_unstable();
    let median = ranks[ranks.len() / 2];
    println!("{}", report.join("\n"));
    println!(
        "top-5 hits: {hits} of 40 (bar {BAR}); median rank {median} of {n} (bar {MEDIAN_BAR})"
    );
    assert!(hits >= BAR, "{hits} of 40 in the top 5, bar {BAR}");
    assert!(
        median <= MEDIAN_BAR,
        "median rank {median}, bar {MEDIAN_BAR}"
    );
}

/// The style LoRA (examples/emoji-pixel-art.safetensors, scripts/train_emoji_lora.py: trained on the training
/// set pixelated into 8x8-pixel cells) makes pixel art of whatever is asked: the colour variance inside each
/// 8x8 cell of the image, averaged over cells and over 6 captions x 2 seeds, falls well below the base model's.
/// MEASURED (2026-12-02, weight 0.7, as in the README): base 1625.9, with the LoRA 641.1 (0.39x); the bar is 0.5x.
#[test]
fn the_style_lora_draws_pixel_art() {
    let cell_variance = |img: &sd_onnx::pipeline::RgbImage| -> f64 {
        let (w, h) = (img.width, img.height);
        let mut total = 0.0;
        let mut cells = 0;
        for cy in (0..h).step_by(8) {
            for cx in (0..w).step_by(8) {
                for c in 0..3 {
                    let v: Vec<f64> = (cy..cy + 8)
                        .flat_map(|y| (cx..cx + 8).map(move |x| (y, x)))
                        .map(|(y, x)| img.pixels[(y * w + x) * 3 + c] as f64)
                        .collect();
                    let mean = v.iter().sum::<f64>() / 64.0;
                    total += v.iter().map(|p| (p - mean) * (p - mean)).sum::<f64>() / 64.0;
                }
                cells += 1;
            }
        }
        total / (cells * 3) as f64
    };
    let runtime = common::runtime();
    let profile = ModelProfile::load(Path::new(MODEL)).unwrap();
    let mut pipe = Pipeline::load(&runtime, profile.clone()).unwrap();
    let file =
        sd_onnx::lora::LoraFile::read(Path::new("examples/emoji-pixel-art.safetensors")).unwrap();
    let lora = sd_onnx::lora::Active {
        file: std::sync::Arc::new(file),
        te: 0.7,
        unet: 0.7,
    };
    let mut mean_var = |with_lora: bool| -> f64 {
        let active = if with_lora {
            vec![lora.clone()]
        } else {
            Vec::new()
        };
        pipe.set_loras(&active).unwrap();
        let mut sum = 0.0;
        let mut n = 0;
        for caption in [
            "red apple",
            "rocket",
            "grinning face",
            "ghost",
            "banana",
            "snowman",
        ] {
            for seed in [1, 2] {
                let intent = Intent {
                    prompt: caption.into(),
                    seed: Some(seed),
                    ..Intent::default()
                };
                let out = pipe
                    .run(resolve(&profile, intent).unwrap(), &mut |_| {})
                    .unwrap();
                sum += cell_variance(&out.images[0]);
                n += 1;
            }
        }
        sum / n as f64
    };
    let (base, styled) = (mean_var(false), mean_var(true));
    println!(
        "within-cell variance: base model {base:.1}, with the pixel-art LoRA at 0.7 {styled:.1}"
    );
    assert!(styled < 0.5 * base, "LoRA {styled:.1} vs base {base:.1}");
}

/// Mean absolute RGB difference of `prompt`'s images to `subject` (64x64 RGB), over seeds 1-4 at guidance 3.
fn distance_to(pipe: &mut Pipeline, profile: &ModelProfile, prompt: &str, subject: &[u8]) -> f64 {
    let mut sum = 0.0;
    for seed in 1..=4 {
        let intent = Intent {
            prompt: prompt.into(),
            seed: Some(seed),
            guidance: Some(3.0),
            ..Intent::default()
        };
        let out = pipe
            .run(resolve(profile, intent).unwrap(), &mut |_| {})
            .unwrap();
        let px = &out.images[0].pixels;
        assert_eq!(px.len(), subject.len());
        sum += px
            .iter()
            .zip(subject)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / px.len() as f64;
    }
    sum / 4.0
}

/// The DreamBooth fine-tune (onnx/sd-emoji-dreambooth, scripts/train_emoji_dreambooth.py) draws the emoji it was
/// shown for its instance prompt. Metric: mean absolute RGB difference to the subject's plain render
/// (docs/emoji/holdout-unicorn-face.png, written by the training script), averaged over seeds 1-4 at guidance 3.
/// MEASURED (2026-12-03): 12.3 for the fine-tune, 61.7 for the base model on the same prompt. Bars: below 25
/// for the fine-tune, and under half of the base model's.
#[test]
fn the_dreambooth_fine_tune_draws_its_subject() {
    let (w, _, subject) = common::read_png(Path::new("docs/emoji/holdout-unicorn-face.png"));
    assert_eq!(w, 64);
    let runtime = common::runtime();
    let distance = |model: &str| -> f64 {
        let profile = ModelProfile::load(Path::new(model)).unwrap();
        let mut pipe = Pipeline::load(&runtime, profile.clone()).unwrap();
        distance_to(&mut pipe, &profile, "sks horse face", &subject)
    };
    let (tuned, base) = (distance("onnx/sd-emoji-dreambooth"), distance(MODEL));
    println!("mean |pixel - subject|: fine-tune {tuned:.1}, base model {base:.1}");
    assert!(
        tuned < 25.0 && tuned < 0.5 * base,
        "fine-tune {tuned:.1} vs base {base:.1}"
    );
}

/// The textual-inversion embedding (examples/embeddings/unicorn-face.pt, scripts/train_emoji_embedding.py) pulls
/// the bundled model towards the emoji it was trained on: the same metric as the DreamBooth test, for the prompt
/// "unicorn-face" (its four vectors) against "horse face" (what they were initialised from), seeds 1-4, guidance 3.
/// MEASURED (2026-12-03): 27.4 against 41.8 (its colours, pink and white, more than its shape). Bar: below 0.8x.
#[test]
fn the_embedding_steers_towards_its_emoji() {
    let (_, _, subject) = common::read_png(Path::new("docs/emoji/holdout-unicorn-face.png"));
    let runtime = common::runtime();
    let profile = ModelProfile::load(Path::new(MODEL)).unwrap();
    let mut pipe = Pipeline::load(&runtime, profile.clone()).unwrap();
    let widths = sd_onnx::graphs::text_widths(&profile).unwrap();
    let (loaded, refused) =
        sd_onnx::embeddings::load_dir(Path::new("examples/embeddings"), &widths).unwrap();
    assert!(refused.is_empty() && loaded.len() == 1);
    pipe.set_embeddings(&loaded).unwrap();
    let embedded = distance_to(&mut pipe, &profile, "unicorn-face", &subject);
    let initial = distance_to(&mut pipe, &profile, "horse face", &subject);
    println!("mean |pixel - subject|: embedding {embedded:.1}, horse face {initial:.1}");
    assert!(
        embedded < 0.8 * initial,
        "embedding {embedded:.1} vs {initial:.1}"
    );
}
