//! Stage 2: the latents the loop starts from, drawing from the run's generator in diffusers' order (VAE
//! sample, initial noise, masked-image sample):
//! * txt2img: noise scaled by `init_noise_sigma`;
//! * img2img (`StableDiffusionImg2ImgPipeline`): the encoded image, noised to the first timestep of the run;
//! * inpainting (`StableDiffusionInpaintPipeline`): 9-channel UNets also get the mask and the masked image's
//!   latents as extra input channels; 4-channel UNets keep the original's latents and noise to blend back
//!   outside the mask after every step.

use crate::error::{Error, Result};
use crate::pipeline::request::{Init, Request};
use crate::pipeline::sessions::Sessions;
use crate::profile::ModelProfile;
use crate::rng::NoiseSource;
use crate::schedulers::{Latents, Scheduler};
use ndarray::{Array2, Array4, Axis, concatenate, s};

/// What 4-channel inpainting blends back after each step.
pub(crate) struct Blend {
    pub image_latents: Latents,
    /// (batch, 1, h, w), 1 = repaint.
    pub mask: Latents,
    pub noise: Latents,
}

/// The loop's starting point.
pub(crate) struct Start {
    pub latents: Latents,
    /// The schedule index the loop starts from.
    pub begin: usize,
    /// 9-channel inpainting: (mask, masked-image latents), each at the UNet's batch, concatenated to the
    /// sample's channels every step.
    pub unet_extra_channels: Option<(Latents, Latents)>,
    pub blend: Option<Blend>,
}

pub(crate) fn concat4(parts: &[&Latents]) -> Result<Latents> {
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    concatenate(Axis(0), &views).map_err(|e| Error::Usage(e.to_string()))
}

fn noise(shape: (usize, usize, usize, usize), src: &mut dyn NoiseSource) -> Result<Latents> {
    Latents::from_shape_vec(shape, src.randn(&[shape.0, shape.1, shape.2, shape.3]))
        .map_err(|e| Error::Usage(e.to_string()))
}

/// `batch` copies of one image's latents, stacked.
fn repeat(one: &Latents, batch: usize) -> Result<Latents> {
    concat4(&vec![one; batch])
}

/// Draw or encode the starting latents for `req`.
pub(crate) fn prepare(
    sessions: &mut Sessions,
    profile: &ModelProfile,
    req: &Request,
    scheduler: &dyn Scheduler,
    noise_src: &mut dyn NoiseSource,
) -> Result<Start> {
    let factor = profile.vae_factor.value;
    let shape = (
        req.batch,
        profile.latent_channels.value,
        req.height / factor,
        req.width / factor,
    );
    let steps = scheduler.timesteps().len();
    let begin = if req.strength_in_schedule(profile) {
        0
    } else {
        req.start_index(scheduler.order()).min(steps)
    };
    let mut start = Start {
        latents: Latents::zeros((0, 0, 0, 0)),
        begin,
        unet_extra_channels: None,
        blend: None,
    };
    start.latents = match &req.init {
        None => noise(shape, noise_src)?.mapv(|v| v * scheduler.init_noise_sigma()),
        Some(init) if init.mask.is_none() => {
            let encoded = encode(sessions, profile, &init.image, req.batch, noise_src)?;
            if begin >= steps {
                encoded // strength 0: the input, re-encoded
            } else {
                scheduler.add_noise(&encoded, &noise(shape, noise_src)?, begin)
            }
        }
        Some(init) => {
            let what = Inpainting {
                init,
                shape,
                guided: profile.family().guided(req.guidance),
            };
            inpainting(sessions, profile, what, scheduler, noise_src, &mut start)?
        }
    };
    Ok(start)
}

/// An inpainting run's inputs: the image and mask, the latents' shape, whether the UNet batch is doubled.
struct Inpainting<'a> {
    init: &'a Init,
    shape: (usize, usize, usize, usize),
    guided: bool,
}

fn inpainting(
    sessions: &mut Sessions,
    profile: &ModelProfile,
    what: Inpainting<'_>,
    scheduler: &dyn Scheduler,
    noise_src: &mut dyn NoiseSource,
    start: &mut Start,
) -> Result<Latents> {
    let Inpainting {
        init,
        shape,
        guided,
    } = what;
    let batch = shape.0;
    let inpaint_unet = profile.inpainting_unet();
    let full_strength = init.strength >= 1.0;
    let image_latents = if !inpaint_unet || !full_strength {
        Some(encode(sessions, profile, &init.image, batch, noise_src)?)
    } else {
        None
    };
    let n = noise(shape, noise_src)?;
    let latents = match (&image_latents, full_strength) {
        (Some(il), false) => scheduler.add_noise(il, &n, start.begin),
        _ => n.mapv(|v| v * scheduler.init_noise_sigma()),
    };
    let m = init
        .mask
        .as_ref()
        .map(|m| nearest_resize(m, shape.2, shape.3))
        .unwrap_or_else(|| Array2::zeros((shape.2, shape.3)));
    let mut masked = init.image.clone();
    if let Some(full) = &init.mask {
        ndarray::Zip::indexed(&mut masked).for_each(|(_, _, y, x), v| {
            if full[[y, x]] >= 0.5 {
                *v = 0.0;
            }
        });
    }
    let mi = encode(sessions, profile, &masked, batch, noise_src)?;
    let m4 = Latents::from_shape_fn((batch, 1, shape.2, shape.3), |(_, _, y, x)| m[[y, x]]);
    if inpaint_unet {
        start.unet_extra_channels = Some(if guided {
            (concat4(&[&m4, &m4])?, concat4(&[&mi, &mi])?)
        } else {
            (m4, mi)
        });
    } else if let Some(image_latents) = image_latents {
        start.blend = Some(Blend {
            image_latents,
            mask: m4,
            noise: n,
        });
    }
    Ok(latents)
}

/// `retrieve_latents(vae.encode(image), generator) * scaling_factor` for a batch of `batch` copies of
/// `image`: the latent distribution sampled with the run's generator (`mean + std * randn`), or the graph's own
/// sample for legacy exports. The image is encoded once. With one generator, one sample is drawn and repeated
/// (diffusers encodes the single image, then repeats its latents); with one generator per image, each draws its
/// own sample, as image `i` alone would (diffusers' img2img with a list of generators does the same; its
/// inpainting pipeline instead samples once with `generator[0]`, so there image `i` is reproducible alone only
/// here).
fn encode(
    sessions: &mut Sessions,
    profile: &ModelProfile,
    image: &Array4<f32>,
    batch: usize,
    noise: &mut dyn NoiseSource,
) -> Result<Latents> {
    let c = profile.latent_channels.value;
    let scale = profile.vae_scaling_factor.value;
    let encoder = sessions.vae_encoder(profile)?;
    let out = encoder.encode(image)?;
    let mut latents = if out.shape()[1] == 2 * c {
        let per_image = batch > 1 && noise.streams() == batch;
        let copies = if per_image { batch } else { 1 };
        let mean = repeat(&out.slice(s![.., ..c, .., ..]).to_owned(), copies)?;
        let logvar = repeat(&out.slice(s![.., c.., .., ..]).to_owned(), copies)?;
        let eps = crate::schedulers::noise_like(&mean, noise);
        let mut z = mean;
        ndarray::Zip::from(&mut z)
            .and(&logvar)
            .and(&eps)
            .for_each(|m, &lv, &e| {
                let std = (0.5 * lv.clamp(-30.0, 20.0)).exp();
                *m += std * e;
            });
        if per_image { z } else { repeat(&z, batch)? }
    } else if out.shape()[1] == c {
        repeat(&out, batch)?
    } else {
        return Err(Error::model(
            &encoder.graph.path,
            format!(
                "encoder output has {} channels; expected {c} or {}",
                out.shape()[1],
                2 * c
            ),
        ));
    };
    latents.mapv_inplace(|v| v * scale);
    Ok(latents)
}

/// `torch.nn.functional.interpolate(mode="nearest")` of a (H, W) mask to (h, w): source index
/// floor(dst * H / h).
fn nearest_resize(mask: &Array2<f32>, h: usize, w: usize) -> Array2<f32> {
    let (sh, sw) = (mask.shape()[0], mask.shape()[1]);
    let (ry, rx) = (sh as f32 / h as f32, sw as f32 / w as f32);
    Array2::from_shape_fn((h, w), |(y, x)| {
        let sy = ((y as f32 * ry).floor() as usize).min(sh - 1);
        let sx = ((x as f32 * rx).floor() as usize).min(sw - 1);
        mask[[sy, sx]]
    })
}
