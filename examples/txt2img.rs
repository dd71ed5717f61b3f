//! One image from the bundled model through the library API:
//!
//!     ORT_DYLIB_PATH=$(cat target/ort-lib-path) cargo run --release --example txt2img -- "red apple" out.png
//!
//! (`scripts/test` runs it.) Point the first argument after `--model` at any exported folder to use another.

use sd_onnx::pipeline::{Intent, MemoryMode, Pipeline, Progress, resolve};
use sd_onnx::{infotext, output, profile::ModelProfile, runtime::Runtime};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let prompt = args.next().unwrap_or_else(|| "red apple".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "txt2img-example.png".into()));
    let model = PathBuf::from(args.next().unwrap_or_else(|| "onnx/sd-emoji".into()));

    let runtime = Runtime::load(None)?; // ORT_DYLIB_PATH, else a library next to the executable
    let profile = ModelProfile::load(&model)?;
    let intent = Intent {
        prompt,
        seed: Some(42),
        ..Intent::default() // steps, guidance, size and scheduler: the model's defaults
    };
    let plan = resolve(&profile, intent)?;
    let params = infotext::for_image(
        &plan.request,
        &profile,
        plan.request.seed,
        0,
        None,
        None,
        None,
    );
    let mut pipeline = Pipeline::with_memory(&runtime, profile, MemoryMode::OneShot)?;
    let generated = pipeline.run(plan, &mut |p| {
        if let Progress::Step { done, total } = p {
            eprint!("\rstep {done}/{total}");
        }
    })?;
    eprintln!();
    output::write_image(&out, &generated.images[0], &params)?;
    println!("{} (seed {})", out.display(), generated.seeds[0]);
    Ok(())
}
