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
/// 75-token chunks in one prompt under A1111 syntax (2,400 tokens): each one is a text-encoder run and 77
/// more tokens every cross-attention of every UNet step attends to. A1111 sets no limit; pasted prompts
/// rarely pass 10 chunks.
pub const MAX_PROMPT_CHUNKS: usize = 32;
/// Input images are decoded only up to this size (and this many bytes), before any resizing.
pub const MAX_INPUT_SIDE: u32 = 16384;
/// Bytes an input image may decode to.
pub const MAX_INPUT_ALLOC: u64 = 1 << 30;

/// Bytes the UNet's largest self-attention needs at this size on the CPU: for each resolution level with
/// attention (a `CrossAttn*` down block), the attention scores and their softmax, float32, for every head and
/// every image of the UNet's batch: `2 x 4 x heads x tokens^2 x unet_batch`, tokens = the level's latent pixels.
/// (SD 1.5 at 1024x1024 with guidance: 34 GB, which is why it is killed on a 24 GB machine; 768x768: 11 GB.)
/// `None` when the UNet's config does not say which levels attend and with how many heads.
pub fn attention_bytes(
    unet_config: &serde_json::Value,
    latent_w: usize,
    latent_h: usize,
    unet_batch: usize,
) -> Option<u64> {
    let blocks = unet_config["down_block_types"].as_array()?;
    // diffusers' `attention_head_dim` is the head count for SD 1.x/2.x/XL (a legacy name);
    // `num_attention_heads`, when set, is.
    let heads_cfg = match &unet_config["num_attention_heads"] {
        serde_json::Value::Null => &unet_config["attention_head_dim"],
        v => v,
    };
    let heads_at = |level: usize| -> Option<u64> {
        match heads_cfg {
            serde_json::Value::Array(a) => a.get(level)?.as_u64(),
            v => v.as_u64(),
        }
    };
    let mut worst = 0u64;
    for (level, b) in blocks.iter().enumerate() {
        if !b.as_str()?.starts_with("CrossAttn") {
            continue;
        }
        let tokens = ((latent_w >> level) * (latent_h >> level)) as u64;
        let bytes = 8u64
            .checked_mul(heads_at(level)?)?
            .checked_mul(tokens.checked_mul(tokens)?)?
            .checked_mul(unet_batch as u64)?;
        worst = worst.max(bytes);
    }
    Some(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_memory_of_sd15_and_sdxl() {
        let sd15 = serde_json::json!({
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "attention_head_dim": 8
        });
        let gb = |b: Option<u64>| b.map(|b| b as f64 / 1e9);
        // 1024x1024 with guidance: 8 heads x 16384^2 tokens x 2 images x 8 bytes.
        assert_eq!(
            attention_bytes(&sd15, 128, 128, 2),
            Some(8 * 8 * 16384 * 16384 * 2)
        );
        assert!(gb(attention_bytes(&sd15, 128, 128, 2)).unwrap() > 34.0);
        assert!(gb(attention_bytes(&sd15, 64, 64, 2)).unwrap() < 2.2);
        // SDXL attends from the second level on, with [5, 10, 20] heads.
        let sdxl = serde_json::json!({
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "attention_head_dim": [5, 10, 20]
        });
        assert_eq!(
            attention_bytes(&sdxl, 128, 128, 2),
            Some(8 * 10 * 4096 * 4096 * 2)
        );
        assert_eq!(attention_bytes(&serde_json::json!({}), 128, 128, 2), None);
    }
}
