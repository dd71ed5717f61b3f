//! The library API as a program (or the server) uses it: one request resolver, embeddings passed in instead of
//! text, interrupting a run, a pipeline kept in shared state, and sessions with overridden initializers.
//! Needs ORT_DYLIB_PATH (scripts/test sets it).

use sd_onnx::Error;
use sd_onnx::graphs::TextEncoder;
use sd_onnx::pipeline::{Intent, Pipeline, Progress, resolve};
use sd_onnx::profile::ModelProfile;
use sd_onnx::runtime::{Runtime, RuntimeConfig, SessionSpec};
use std::path::Path;
use std::sync::atomic::Ordering;

mod common;

fn intent(prompt: &str, negative: Option<&str>) -> Intent {
    Intent {
        prompt: prompt.into(),
        negative_prompt: negative.map(String::from),
        steps: Some(3),
        seed: Some(7),
        ..Intent::default()
    }
}

/// diffusers' `prompt_embeds`: embeddings from `encode_prompt` passed back give the prompt's run bit for bit
/// (SD, and SDXL with its pooled embeddings); a guided run without an unconditional half is refused by field.
#[test]
fn prompt_embeds_replace_the_text_encoders_exactly() {
    let runtime = common::runtime();
    for dir in ["onnx/sd-tiny-optimum", "onnx/sdxl-tiny-optimum"] {
        let profile = ModelProfile::load(Path::new(dir)).unwrap();
        let mut pipe = Pipeline::load(&runtime, profile.clone()).unwrap();
        let by_text = resolve(&profile, intent("a red cube", Some("blurry"))).unwrap();
        let guidance = by_text.request.guidance;
        let want = pipe.run(by_text, &mut |_| {}).unwrap();
        let embeds = pipe
            .encode_prompt(
                "a red cube",
                Some("blurry"),
                guidance,
                &Default::default(),
                &mut Vec::new(),
            )
            .unwrap();
        assert_eq!(embeds.pooled.is_some(), profile.xl.is_some(), "{dir}");
        let mut by_embeds = intent("ignored", None);
        by_embeds.prompt_embeds = Some(embeds.clone());
        let got = pipe
            .run(resolve(&profile, by_embeds).unwrap(), &mut |_| {})
            .unwrap();
        assert_eq!(got.latents, want.latents, "{dir}");
        assert_eq!(got.images, want.images, "{dir}");

        let mut half = intent("x", None);
        half.prompt_embeds = Some(sd_onnx::pipeline::PromptEmbeds {
            uncond: None,
            ..embeds
        });
        let err = pipe
            .run(resolve(&profile, half).unwrap(), &mut |_| {})
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("prompt_embeds have no unconditional half"),
            "{err}"
        );
    }
}

/// The interrupter stops a run after the current step (A1111's /interrupt), and the next run is unaffected;
/// a pipeline can live in shared state across threads.
#[test]
fn a_run_can_be_interrupted_and_the_pipeline_shared() {
    fn shareable<T: Send>() {}
    shareable::<Pipeline>();
    let runtime = common::runtime();
    let profile = ModelProfile::load(Path::new("onnx/sd-tiny-optimum")).unwrap();
    let state = std::sync::Mutex::new(Pipeline::load(&runtime, profile.clone()).unwrap());
    let stop = state.lock().unwrap().interrupter();
    let mut steps = 0;
    let err = state
        .lock()
        .unwrap()
        .run(resolve(&profile, intent("a", None)).unwrap(), &mut |p| {
            if let Progress::Step { .. } = p {
                steps += 1;
                stop.store(true, Ordering::Relaxed);
            }
        })
        .err();
    assert!(matches!(err, Some(Error::Interrupted)), "{err:?}");
    assert_eq!(steps, 1);
    let ok = std::thread::scope(|s| {
        s.spawn(|| {
            let plan = resolve(&profile, intent("a", None)).unwrap();
            state
                .lock()
                .unwrap()
                .run(plan, &mut |_| {})
                .map(|g| g.images.len())
        })
        .join()
        .unwrap()
    });
    assert_eq!(ok.unwrap(), 1);
}

/// A session spec's overrides replace named initializers (what LoRA merging needs) and key the optimised-graph
/// cache apart from the plain graph: an inline initializer is replaced in the graph before optimisation, the
/// optimised result cached under the spec's identity, and reopening it from there gives the same values.
#[test]
fn session_specs_override_initializers_and_key_the_cache() {
    let root = std::env::temp_dir().join(format!("sdonnx-spec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let runtime = Runtime::load_with(
        None,
        RuntimeConfig {
            cache_dir: Some(root.clone()),
            ..RuntimeConfig::default()
        },
    )
    .unwrap();
    let profile = ModelProfile::load(Path::new("onnx/sd-tiny-optimum")).unwrap();
    let plain = SessionSpec::plain(&profile.text_encoder);
    let bias: Vec<f32> = vec![5.0; 16];
    let value = ort::value::Tensor::from_array((vec![16i64], bias))
        .unwrap()
        .into_dyn();
    let spec = SessionSpec {
        overrides: vec![(
            "text_model.final_layer_norm.bias".into(),
            std::sync::Arc::new(value),
        )],
        identity: "test:bias=5".into(),
        ..plain.clone()
    };
    let ids: Vec<i64> = std::iter::once(49406)
        .chain(std::iter::repeat_n(49407, 76))
        .collect();
    let base = TextEncoder::load_spec(&runtime, &plain)
        .unwrap()
        .encode(&ids)
        .unwrap();
    let changed = TextEncoder::load_spec(&runtime, &spec)
        .unwrap()
        .encode(&ids)
        .unwrap();
    let shift = (&changed - &base).mean().unwrap_or_default();
    assert!((shift - 5.0).abs() < 0.2, "mean shift {shift}");
    let (a, b) = (
        sd_onnx::runtime::graph_cache_path(&runtime, &plain).unwrap(),
        sd_onnx::runtime::graph_cache_path(&runtime, &spec).unwrap(),
    );
    assert_ne!(a, b);
    // Replaced weights are made before optimisation and baked into their own cache entry.
    assert!(a.is_file() && b.is_file());
    // Opened again (from that entry): the same values.
    let again = TextEncoder::load_spec(&runtime, &spec)
        .unwrap()
        .encode(&ids)
        .unwrap();
    assert_eq!(again, changed);
    let _ = std::fs::remove_dir_all(&root);
}

/// Progress counts inference steps as diffusers' bar does, not UNet calls: PLMS's repeated timestep and
/// Heun's two calls per step are one tick; img2img counts `int(steps * strength)` (issue 12).
#[test]
fn progress_counts_the_steps_asked_for() {
    use sd_onnx::schedulers::SchedulerKind;
    let runtime = common::runtime();
    let profile = ModelProfile::load(Path::new("onnx/sd-tiny-optimum")).unwrap();
    let mut pipe = Pipeline::load(&runtime, profile.clone()).unwrap();
    let image = image::DynamicImage::new_rgb8(64, 64);
    for (scheduler, steps, strength, want) in [
        (SchedulerKind::Pndm, 25, None, 25),
        (SchedulerKind::Heun, 5, None, 5),
        (SchedulerKind::EulerAncestral, 7, None, 7),
        (SchedulerKind::Euler, 10, Some(0.5), 5),
    ] {
        let mut i = intent("a", None);
        (i.scheduler, i.steps) = (Some(scheduler), Some(steps));
        i.init = strength.map(|s| sd_onnx::pipeline::InitIntent {
            image: image.clone(),
            image_name: "x".into(),
            mask: None,
            strength: Some(s),
        });
        let mut ticks = Vec::new();
        pipe.run(resolve(&profile, i).unwrap(), &mut |p| {
            if let Progress::Step { done, total } = p {
                ticks.push((done, total));
            }
        })
        .unwrap();
        let expected: Vec<_> = (1..=want).map(|d| (d, want)).collect();
        assert_eq!(ticks, expected, "{scheduler:?} {steps} steps");
    }
}

/// Clip skip 0 from a library caller is clip skip 1 (the last layer), not a panic.
#[test]
fn clip_skip_zero_is_the_last_layer() {
    let runtime = common::runtime();
    let profile = ModelProfile::load(Path::new("onnx/sd-tiny-optimum")).unwrap();
    let mut pipe = Pipeline::load(&runtime, profile).unwrap();
    let zero = sd_onnx::prompt::TextOptions {
        clip_skip: 0,
        ..Default::default()
    };
    let a = pipe
        .encode_prompt("a cube", None, 7.5, &zero, &mut Vec::new())
        .unwrap();
    let b = pipe
        .encode_prompt("a cube", None, 7.5, &Default::default(), &mut Vec::new())
        .unwrap();
    assert_eq!(a.cond, b.cond);
}

/// Embeddings handed to the library are checked as a folder's are: the wrong width is refused, naming both.
#[test]
fn set_embeddings_refuses_the_wrong_width() {
    let runtime = common::runtime();
    let profile = ModelProfile::load(Path::new("onnx/sd-tiny-optimum")).unwrap();
    let mut pipe = Pipeline::load(&runtime, profile).unwrap();
    let wide = sd_onnx::embeddings::Embedding {
        name: "wide".into(),
        aliases: Vec::new(),
        file: "wide.pt".into(),
        vectors: vec![ndarray::Array2::zeros((1, 32))],
    };
    let e = pipe.set_embeddings(&[wide]).unwrap_err().to_string();
    assert!(
        e.contains("wide.pt") && e.contains("32 wide") && e.contains("16 wide"),
        "{e}"
    );
}
