//! The only place the pipeline creates and drops ONNX Runtime sessions. Each graph sits in a lazy [`Slot`];
//! [`MemoryMode`] decides whether they are all opened up front and kept, or opened when first needed and
//! dropped as soon as the run is done with them.

use crate::error::{Error, Result};
use crate::graphs::{EncoderOutput, Layer, TextEncoder, Unet, VaeDecoder, VaeEncoder};
use crate::profile::ModelProfile;
use crate::runtime::{Computed, Runtime, SessionSpec};
use ndarray::Array2;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The embeddings' ids were counted from the table size the folder states; the graph's table must agree.
fn check_ids(enc: &TextEncoder, rows: Option<&(Arc<Array2<f32>>, i64)>) -> Result<()> {
    match (rows, enc.embedding_ids_from) {
        (Some((_, want)), Some(got)) if got != *want => Err(Error::model(
            &enc.graph.path,
            format!(
                "its token table has {got} rows, but the folder's config (vocab_size) or tokenizer says {want}"
            ),
        )),
        _ => Ok(()),
    }
}

/// When graphs are loaded and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryMode {
    /// Keep every session (for reuse across many generations: servers, `bench`).
    #[default]
    KeepAll,
    /// One run: create each session when first needed and drop it as soon as this run no longer needs it
    /// (text encoder after the embeddings, VAE encoder after encoding, UNet after the loop). The same total
    /// load time as loading everything first, a much lower peak. The CLI's default.
    OneShot,
    /// The same order, for `--low-memory`; the CLI also turns off ONNX Runtime's memory-pattern planning.
    Low,
}

/// A session created on first use.
pub(crate) struct Slot<T>(Option<T>);

impl<T> Slot<T> {
    fn empty() -> Self {
        Slot(None)
    }

    /// The value, loaded now if the slot is empty; the time a load takes is added to `created`.
    fn get_or(
        &mut self,
        created: &mut Duration,
        load: impl FnOnce() -> Result<T>,
    ) -> Result<&mut T> {
        match self.0 {
            Some(ref mut v) => Ok(v),
            None => {
                let started = Instant::now();
                let value = load();
                *created += started.elapsed();
                Ok(self.0.insert(value?))
            }
        }
    }

    fn clear(&mut self) {
        self.0 = None;
    }

    /// Drop what the slot holds unless `keep` says it will do.
    fn retain(&mut self, keep: impl FnOnce(&T) -> bool) {
        if self.0.as_ref().is_some_and(|v| !keep(v)) {
            self.0 = None;
        }
    }
}

/// Phases after which a one-shot run drops sessions.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Done {
    Text,
    Encoding,
    Denoising,
    Decoding,
}

/// Every session of one model.
pub(crate) struct Sessions {
    runtime: Runtime,
    memory: MemoryMode,
    text_encoder: Slot<TextEncoder>,
    text_encoder_2: Slot<TextEncoder>,
    /// Textual-inversion vectors appended to each text encoder's token table (`Pipeline::set_embeddings`).
    /// (rows, the id the first row must get: the table's row count).
    token_rows: [Option<(Arc<Array2<f32>>, i64)>; 2],
    /// LoRA-merged weights per graph: text encoder, second text encoder, UNet (`Pipeline::set_loras`).
    loras: [Option<Computed>; 3],
    unet: Slot<Unet>,
    vae_decoder: Slot<VaeDecoder>,
    vae_encoder: Slot<VaeEncoder>,
    encoder_output: Option<EncoderOutput>,
    /// Time spent creating sessions so far (they are created when first needed).
    created: Duration,
}

impl Sessions {
    pub(crate) fn new(runtime: Runtime, memory: MemoryMode) -> Self {
        Sessions {
            runtime,
            memory,
            text_encoder: Slot::empty(),
            text_encoder_2: Slot::empty(),
            token_rows: [None, None],
            loras: [None, None, None],
            unet: Slot::empty(),
            vae_decoder: Slot::empty(),
            vae_encoder: Slot::empty(),
            encoder_output: None,
            created: Duration::ZERO,
        }
    }

    /// Open every graph now (for [`MemoryMode::KeepAll`]).
    pub(crate) fn open_all(&mut self, profile: &ModelProfile) -> Result<()> {
        if profile.xl.is_some() {
            self.text_encoder(profile, Layer::Xl(1))?;
            self.text_encoder_2(profile, Layer::Xl(1))?;
        } else {
            self.text_encoder(profile, Layer::Sd(1))?;
        }
        self.unet(profile)?;
        self.vae_decoder(profile)?;
        if profile.vae_encoder.is_some() {
            self.vae_encoder(profile)?;
        }
        Ok(())
    }

    pub(crate) fn set_memory(&mut self, memory: MemoryMode) {
        self.memory = memory;
    }

    /// Time spent creating sessions since these sessions were made: a run reads it before and after a phase
    /// to keep session creation out of the phase's own time.
    pub(crate) fn created(&self) -> Duration {
        self.created
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The text encoder, able to give `layer` (a session that cannot is replaced by one edited to).
    pub(crate) fn text_encoder(
        &mut self,
        profile: &ModelProfile,
        layer: Layer,
    ) -> Result<&mut TextEncoder> {
        let rt = &self.runtime;
        self.text_encoder.retain(|t| t.has_layer(layer));
        let rows = self.token_rows[0].clone();
        let lora = self.loras[0].clone();
        self.text_encoder.get_or(&mut self.created, || {
            let enc = TextEncoder::load_layer(
                rt,
                &profile.text_encoder,
                layer,
                rows.as_ref().map(|r| &*r.0),
                lora.as_ref(),
            )?;
            check_ids(&enc, rows.as_ref())?;
            Ok(enc)
        })
    }

    pub(crate) fn text_encoder_2(
        &mut self,
        profile: &ModelProfile,
        layer: Layer,
    ) -> Result<&mut TextEncoder> {
        let rt = &self.runtime;
        self.text_encoder_2.retain(|t| t.has_layer(layer));
        let rows = self.token_rows[1].clone();
        let lora = self.loras[1].clone();
        self.text_encoder_2.get_or(&mut self.created, || {
            let c = profile
                .xl
                .as_ref()
                .map(|x| &x.text_encoder_2)
                .ok_or_else(|| {
                    Error::model(&profile.dir, "has no text_encoder_2 (not an SDXL folder)")
                })?;
            let enc =
                TextEncoder::load_layer(rt, c, layer, rows.as_ref().map(|r| &*r.0), lora.as_ref())?;
            check_ids(&enc, rows.as_ref())?;
            Ok(enc)
        })
    }

    pub(crate) fn unet(&mut self, profile: &ModelProfile) -> Result<&mut Unet> {
        let rt = &self.runtime;
        let lora = self.loras[2].clone();
        self.unet.get_or(&mut self.created, || {
            let mut spec = SessionSpec::plain(&profile.unet);
            spec.computed = lora;
            let unet = Unet::load_spec(rt, &spec)?;
            unet.check_against(profile)?;
            Ok(unet)
        })
    }

    pub(crate) fn vae_decoder(&mut self, profile: &ModelProfile) -> Result<&mut VaeDecoder> {
        let rt = &self.runtime;
        self.vae_decoder.get_or(&mut self.created, || {
            VaeDecoder::load(rt, &profile.vae_decoder)
        })
    }

    pub(crate) fn vae_encoder(&mut self, profile: &ModelProfile) -> Result<&mut VaeEncoder> {
        let rt = &self.runtime;
        let encoder = self.vae_encoder.get_or(&mut self.created, || {
            let c = profile.vae_encoder.as_ref().ok_or_else(|| {
                Error::model(
                    &profile.dir,
                    "has no vae_encoder: img2img and inpainting need one (export the pipeline with its VAE encoder)",
                )
            })?;
            VaeEncoder::load(rt, c)
        })?;
        self.encoder_output = Some(encoder.output);
        Ok(encoder)
    }

    /// Append these rows to the text encoders' token tables from now on (the sessions are reopened).
    pub(crate) fn set_token_rows(&mut self, rows: [Option<(Arc<Array2<f32>>, i64)>; 2]) {
        self.token_rows = rows;
        self.text_encoder.clear();
        self.text_encoder_2.clear();
    }

    /// Merge these LoRA weights into the graphs from now on (text encoder, second text encoder, UNet); the
    /// sessions whose weights change are reopened when next needed.
    pub(crate) fn set_loras(&mut self, loras: [Option<Computed>; 3]) {
        let id = |c: &Option<Computed>| c.as_ref().map(|c| c.identity.clone());
        for (i, new) in loras.into_iter().enumerate() {
            if id(&self.loras[i]) != id(&new) {
                match i {
                    0 => self.text_encoder.clear(),
                    1 => self.text_encoder_2.clear(),
                    _ => self.unet.clear(),
                }
            }
            self.loras[i] = new;
        }
    }

    /// What the VAE encoder returns (known once it has been loaded).
    pub(crate) fn encoder_output(&self) -> Option<EncoderOutput> {
        self.encoder_output
    }

    /// A one-shot run is done with a phase: drop the sessions only it used.
    /// [`Sessions::done`] for a batch of a request with several: a one-shot run keeps its sessions until the
    /// last batch (reloading the UNet per batch would cost its load time each), a low-memory run drops them
    /// after every batch, so its peak stays that of one batch.
    pub(crate) fn done_batch(&mut self, phase: Done, last: bool) {
        if last || self.memory == MemoryMode::Low {
            self.done(phase);
        }
    }

    pub(crate) fn done(&mut self, phase: Done) {
        if self.memory == MemoryMode::KeepAll {
            return;
        }
        match phase {
            Done::Text => {
                self.text_encoder.clear();
                self.text_encoder_2.clear();
            }
            Done::Encoding => self.vae_encoder.clear(),
            Done::Denoising => self.unet.clear(),
            Done::Decoding => self.vae_decoder.clear(),
        }
    }
}
