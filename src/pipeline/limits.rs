//! The bounds a request must stay within, in one place, so that nothing a user types makes the process
//! allocate without bound (an allocation failure in Rust aborts; in ONNX Runtime it fails late). Each is far
//! beyond what any Stable Diffusion model is run at, and each error says which field and the bound.

/// Pixels per image: 4096 x 4096 (16.8 MP; SDXL is trained at 1 MP). The decoded float image alone is 200 MB.
pub const MAX_PIXELS: usize = 4096 * 4096;
/// Longest side of an image, for panoramas within [`MAX_PIXELS`].
pub const MAX_SIDE: usize = 8192;
/// Images per run.
pub const MAX_BATCH: usize = 64;
/// Batches in one request (A1111's UI stops at 100).
pub const MAX_BATCH_COUNT: usize = 10_000;
/// Latent pixels in one run (batch x latent height x latent width): 64 images of 1024 x 1024 on SD's VAE.
pub const MAX_LATENT_PIXELS: usize = 64 * 128 * 128;
/// Input images are decoded only up to this size (and this many bytes), before any resizing.
pub const MAX_INPUT_SIDE: u32 = 16384;
/// Bytes an input image may decode to.
pub const MAX_INPUT_ALLOC: u64 = 1 << 30;
