//! Stage 3: the loop over the remaining schedule, exactly diffusers' call sequence: per timestep from
//! `begin`, `scale_model_input`, the UNet (uncond + cond in one call when guiding), guidance (and
//! `guidance_rescale`), `step`, and for 4-channel inpainting the blend outside the mask. The UNet is bound
//! once for the run (IO binding: context uploaded once, latent/timestep/output buffers allocated once); if
//! binding is impossible it runs plain.

use crate::error::{Error, Result};
use crate::graphs::Unet;
use crate::pipeline::conditioning::Conditioning;
use crate::pipeline::latents::{Start, concat4};
use crate::pipeline::{Progress, Timings};
use crate::rng::NoiseSource;
use crate::runtime::GraphCapture;
use crate::schedulers::{Latents, Scheduler};
use ndarray::{Axis, concatenate, s};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What the loop needs besides the UNet.
pub(crate) struct Loop<'a> {
    pub scheduler: &'a mut dyn Scheduler,
    pub noise: &'a mut dyn NoiseSource,
    pub cond: &'a Conditioning,
    pub guided: bool,
    pub guidance: f32,
    pub guidance_rescale: f32,
    pub batch: usize,
    /// The inference steps this run makes (what progress counts), as diffusers' `num_inference_steps`.
    pub steps: usize,
    pub interrupt: &'a AtomicBool,
}

/// Run the loop from `start`, returning the final latents.
pub(crate) fn denoise(
    unet: &mut Unet,
    mut start: Start,
    l: Loop<'_>,
    timings: &mut Timings,
    warnings: &mut Vec<String>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Latents> {
    // The configs' widths were compared when the folder was read (`profile::check_text_width`); without
    // configs, the graph's declared width is compared with the embeddings, before the first UNet run.
    let width = l.cond.context.shape()[2];
    if let Some(w) = unet.declared_context_width().filter(|&w| w != width) {
        return Err(crate::Error::model(
            &unet.graph.path,
            format!(
                "attends to {w}-wide text (its encoder_hidden_states input) but the text encoder gives {width}-wide \
                 embeddings: the UNet and text encoder come from different models"
            ),
        ));
    }
    let timesteps = l.scheduler.timesteps().to_vec();
    let begin = start.begin;
    let shape = start.latents.shape().to_vec();
    let in_channels = shape[1]
        + start
            .unet_extra_channels
            .as_ref()
            .map_or(0, |(m, mi)| m.shape()[1] + mi.shape()[1]);
    let unet_batch = if l.guided { 2 * l.batch } else { l.batch };
    let bound_shape = [unet_batch, in_channels, shape[2], shape[3]];
    // Halves of different lengths: the UNet runs on each (unbound), A1111's default for such prompts.
    let split = match &l.cond.uncond_context {
        Some(u) => Some((u, halves(&l.cond.extras, l.batch))),
        None => None,
    };
    if begin < timesteps.len()
        && split.is_none()
        && let Err(e) = unet.bind(&l.cond.context, &l.cond.extras, &bound_shape, shape[1])
    {
        warnings.push(format!(
            "UNet IO binding unavailable, running without it: {e}"
        ));
    }
    let mut latents = std::mem::replace(&mut start.latents, Latents::zeros((0, 0, 0, 0)));
    let order = l.scheduler.order().max(1);
    let warmup = (timesteps.len() - begin).saturating_sub(l.steps * order);
    let mut done = 0;
    for i in begin..timesteps.len() {
        if l.interrupt.load(Ordering::Relaxed) {
            unet.unbind();
            return Err(Error::Interrupted);
        }
        let t0 = Instant::now();
        let input = if l.guided {
            concat4(&[&latents, &latents])?
        } else {
            latents.clone()
        };
        let t1 = Instant::now();
        let mut input = l.scheduler.scale_model_input(input, i);
        let t2 = Instant::now();
        if let Some((m, mi)) = &start.unet_extra_channels {
            input = concatenate(Axis(1), &[input.view(), m.view(), mi.view()])
                .map_err(|e| Error::Usage(e.to_string()))?;
        }
        let bound_before = unet.bound_runs;
        let out = match &split {
            None => unet.run(&input, timesteps[i], &l.cond.context, &l.cond.extras)?,
            Some((uncond, (extras_u, extras_c))) => {
                let b = l.batch;
                let u = input.slice(s![..b, .., .., ..]).to_owned();
                let c = input.slice(s![b.., .., .., ..]).to_owned();
                let u = unet.run(&u, timesteps[i], uncond, extras_u)?;
                let c = unet.run(&c, timesteps[i], &l.cond.context, extras_c)?;
                concat4(&[&u, &c])?
            }
        };
        if unet.bound_runs > bound_before {
            timings.unet_host_io.push(unet.last_host_io);
        }
        let t3 = Instant::now();
        let noise_pred = if l.guided {
            guide(&out, l.batch, l.guidance, l.guidance_rescale)
        } else {
            out
        };
        let t4 = Instant::now();
        latents = l.scheduler.step(&noise_pred, i, &latents, l.noise);
        let t5 = Instant::now();
        if let Some(b) = &start.blend {
            blend(&mut latents, b, &*l.scheduler, i, timesteps.len());
        }
        timings.unet.push(t3 - t2);
        timings.scheduler.push((t2 - t1) + (t5 - t4));
        timings.guidance.push((t1 - t0) + (t4 - t3) + t5.elapsed());
        // diffusers' progress bar: one tick per inference step, not per UNet call (PLMS repeats a timestep,
        // Heun and DPM2 call the UNet twice per step).
        if i + 1 == timesteps.len()
            || (i + 1 - begin > warmup && (i + 1 - begin).is_multiple_of(order))
        {
            done += 1;
            progress(Progress::Step {
                done: done.min(l.steps),
                total: l.steps,
            });
        }
    }
    unet.unbind();
    timings.bound_unet_calls = std::mem::take(&mut unet.bound_runs);
    timings.unet_buffers_reused = unet.reused_binding;
    timings.unet_capture = unet.capture().clone();
    if let GraphCapture::Refused(why) = unet.capture() {
        warnings.push(format!(
            "--cuda-graph: the UNet runs without graph capture: {why}"
        ));
    }
    Ok(latents)
}

type Extras = Vec<(&'static str, ndarray::Array2<f32>)>;

/// The unconditional and conditional rows of the UNet's 2-D inputs (`[uncond x B, cond x B]`).
fn halves(extras: &[(&'static str, ndarray::Array2<f32>)], batch: usize) -> (Extras, Extras) {
    let half = |range: std::ops::Range<usize>| {
        extras
            .iter()
            .map(|(n, a)| (*n, a.slice(s![range.clone(), ..]).to_owned()))
            .collect()
    };
    (half(0..batch), half(batch..2 * batch))
}

/// Classifier-free guidance: `uncond + g * (text - uncond)`, then diffusers' `rescale_noise_cfg` when asked.
fn guide(out: &Latents, batch: usize, g: f32, rescale: f32) -> Latents {
    let uncond = out.slice(s![..batch, .., .., ..]);
    let text = out.slice(s![batch.., .., .., ..]);
    let mut pred = uncond.to_owned();
    pred.zip_mut_with(&text, |u, &c| *u += g * (c - *u));
    if rescale > 0.0 {
        rescale_guided(&mut pred, &text, rescale);
    }
    pred
}

/// 4-channel inpainting: keep the original (noised to the next timestep) outside the mask.
fn blend(
    latents: &mut Latents,
    b: &super::latents::Blend,
    scheduler: &dyn Scheduler,
    i: usize,
    n: usize,
) {
    let proper = if i + 1 < n {
        scheduler.add_noise(&b.image_latents, &b.noise, i + 1)
    } else {
        b.image_latents.clone()
    };
    let m = &b.mask;
    ndarray::Zip::indexed(latents)
        .and(&proper)
        .for_each(|(bi, _, y, x), l, &p| {
            let keep = m[[bi, 0, y, x]];
            *l = (1.0 - keep) * p + keep * *l;
        });
}

/// diffusers' `rescale_noise_cfg`: per image, scale the guided prediction to the text prediction's standard
/// deviation (torch's unbiased `std` over channels and pixels), then mix `phi` of that with `1 - phi` of the
/// guided prediction.
fn rescale_guided(pred: &mut Latents, text: &ndarray::ArrayView4<f32>, phi: f32) {
    fn std(v: ndarray::ArrayView3<f32>) -> f64 {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt()
    }
    for (mut p, t) in pred.outer_iter_mut().zip(text.outer_iter()) {
        let ratio = (std(t) / std(p.view()).max(f64::MIN_POSITIVE)) as f32;
        p.mapv_inplace(|x| phi * (x * ratio) + (1.0 - phi) * x);
    }
}
