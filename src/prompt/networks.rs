//! A1111's extra networks in prompt text (`modules/extra_networks.py`: `parse_prompt`, `ExtraNetworkParams`;
//! `extensions-builtin/Lora/extra_networks_lora.py`: `activate`): `<lora:NAME:TE[:UNET]>` tags (also `<lyco:…>`,
//! A1111's alias) are taken out of the text before anything else reads it. The tag regex is A1111's,
//! `<(\w+):([^>]+)>`: every such tag is removed, and kinds sd-onnx does not run (hypernetworks) are refused
//! rather than silently ignored.

use crate::error::{Error, Result};
use regex::Regex;
use std::sync::OnceLock;

/// One `<lora:…>` tag.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTag {
    /// The file's stem.
    pub name: String,
    /// Text-encoder multiplier (A1111's `te`, the first number; default 1).
    pub te: f32,
    /// UNet multiplier (A1111's `unet`, the second number; default: the first).
    pub unet: f32,
}

fn tag_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"<(\w+):([^>]+)>").unwrap_or_else(|_| unreachable!()))
}

fn number(tag: &str, v: &str) -> Result<f32> {
    match v.trim().parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(Error::Invalid {
            field: "prompt",
            msg: format!("{tag}: `{v}` is not a number"),
        }),
    }
}

/// The text without its extra-network tags, and its LoRA tags in order (A1111's `parse_prompt` + the Lora
/// extension's `activate`: positional `NAME:TE:UNET`, or named `te=`, `unet=`; `dyn=` is refused).
pub fn extra_networks(text: &str) -> Result<(String, Vec<LoraTag>)> {
    let mut tags = Vec::new();
    for m in tag_re().captures_iter(text) {
        let (whole, kind, args) = (&m[0], &m[1], &m[2]);
        if !matches!(kind, "lora" | "lyco") {
            return Err(Error::Invalid {
                field: "prompt",
                msg: format!(
                    "{whole}: `{kind}` networks are not supported (sd-onnx runs <lora:NAME:WEIGHT>)"
                ),
            });
        }
        let mut parts = args.split(':');
        let name = parts.next().unwrap_or_default().to_string();
        if name.trim().is_empty() {
            return Err(Error::Invalid {
                field: "prompt",
                msg: format!("{whole}: no LoRA name"),
            });
        }
        let (mut positional, mut te, mut unet) = (Vec::new(), None, None);
        for p in parts {
            match p.split_once('=') {
                Some(("te", v)) => te = Some(number(whole, v)?),
                Some(("unet", v)) => unet = Some(number(whole, v)?),
                Some((k, _)) => {
                    return Err(Error::Invalid {
                        field: "prompt",
                        msg: format!("{whole}: `{k}=` is not supported (te=, unet=)"),
                    });
                }
                None => positional.push(number(whole, p)?),
            }
        }
        if positional.len() > 2 {
            return Err(Error::Invalid {
                field: "prompt",
                msg: format!("{whole}: at most two weights (text encoder, UNet)"),
            });
        }
        let te = te.or(positional.first().copied()).unwrap_or(1.0);
        let unet = unet.or(positional.get(1).copied()).unwrap_or(te);
        tags.push(LoraTag { name, te, unet });
    }
    Ok((tag_re().replace_all(text, "").into_owned(), tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_taken_out_as_a1111_does() {
        let (text, tags) =
            extra_networks("a cat <lora:style:0.6>, <lyco:b:1:0.5> (x:1.1)").unwrap();
        // A1111 removes the tags and nothing else (the spaces around them stay).
        assert_eq!(text, "a cat ,  (x:1.1)");
        assert_eq!(
            tags,
            vec![
                LoraTag {
                    name: "style".into(),
                    te: 0.6,
                    unet: 0.6
                },
                LoraTag {
                    name: "b".into(),
                    te: 1.0,
                    unet: 0.5
                },
            ]
        );
        let (_, t) = extra_networks("<lora:a>").unwrap();
        assert_eq!((t[0].te, t[0].unet), (1.0, 1.0));
        let (_, t) = extra_networks("<lora:a:te=0.2:unet=-1>").unwrap();
        assert_eq!((t[0].te, t[0].unet), (0.2, -1.0));
        assert!(extra_networks("<hypernet:h:1>").is_err());
        assert!(extra_networks("<lora:a:x>").is_err());
        assert!(extra_networks("<lora:a:nan>").is_err());
        assert!(extra_networks("<lora:a:1:2:3>").is_err());
        // Not tags: no colon, or an embedding's angle-bracket name.
        assert_eq!(extra_networks("a <cat-toy>").unwrap().0, "a <cat-toy>");
    }
}
