//! The command line as the user gave it, checked, plus defaults from a TOML config file.
//!
//! The file (`--config FILE`, else `$SD_ONNX_CONFIG`) holds option names without their dashes: top-level keys
//! apply to every subcommand that has that option, a `[txt2img]` (or any subcommand's) table to that one only.
//!
//! ```toml
//! model = "/models/sd15-onnx"
//! scheduler = "DPM++ 2M"
//! schedule = "karras"
//! steps = 30
//! output = "out/{seed}.png"
//! [img2img]
//! strength = 0.6
//! ```
//!
//! Each entry becomes the option it names (in key order), placed before the user's own arguments; an option the user gives
//! on the command line is not taken from the file. Booleans turn flags on (`low_memory = true`); arrays repeat
//! an option (`ep_option = ["a=1", "b=2"]`). An entry that is no option of the subcommand it applies to is an
//! error naming the file and the key. Relative paths are taken from the working directory, as on the command
//! line.

use clap::CommandFactory;
use sd_onnx::error::{Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The process's arguments with the config file's defaults added; an argument that is not UTF-8 is refused
/// naming its position (clap would only say that one is not).
pub fn argv() -> Result<Vec<String>> {
    let raw: Vec<OsString> = std::env::args_os().collect();
    let mut args = Vec::with_capacity(raw.len());
    for (i, a) in raw.into_iter().enumerate() {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(bad) => {
                return Err(Error::Usage(format!(
                    "argument {i} (`{}`) is not valid UTF-8",
                    bad.to_string_lossy()
                )));
            }
        }
    }
    let file = config_file(&args)
        .or_else(|| std::env::var_os("SD_ONNX_CONFIG").map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty());
    match file {
        Some(f) => with_config(args, &f),
        None => Ok(args),
    }
}

/// `--config FILE` / `--config=FILE` anywhere on the line.
fn config_file(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// `args` with `file`'s entries for the subcommand inserted right after its name.
pub fn with_config(mut args: Vec<String>, file: &Path) -> Result<Vec<String>> {
    let bad = |msg: String| Error::Usage(format!("config {}: {msg}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|source| Error::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        bad(e.message().to_string()
            + &e.span().map_or(String::new(), |s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!(" (line {line})")
            }))
    })?;
    let cli = super::Cli::command();
    let names: Vec<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for (key, value) in &table {
        if value.is_table() && !names.contains(key) {
            return Err(bad(format!(
                "[{key}] is not a subcommand ({})",
                names.join(", ")
            )));
        }
    }
    // The subcommand: the first argument that names one.
    let Some(at) = args
        .iter()
        .skip(1)
        .position(|a| names.contains(a))
        .map(|i| i + 1)
    else {
        return Ok(args);
    };
    let Some(sub) = cli.find_subcommand(&args[at]) else {
        return Ok(args);
    };
    let given = &args[at + 1..];
    let mut extra = Vec::new();
    let section = table.get(&args[at]).and_then(|v| v.as_table());
    let entries = table
        .iter()
        .filter(|(_, v)| !v.is_table())
        .map(|(k, v)| (k, v, false))
        .chain(section.into_iter().flatten().map(|(k, v)| (k, v, true)));
    for (key, value, in_section) in entries {
        if key == "config" {
            continue;
        }
        let long = key.replace('_', "-");
        let Some(arg) = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            let anywhere = cli.get_subcommands().any(|c| {
                c.get_arguments()
                    .any(|a| a.get_long() == Some(long.as_str()))
            });
            if in_section || !anywhere {
                return Err(bad(format!(
                    "`{key}` is not an option of {}",
                    if in_section {
                        sub.get_name().to_string()
                    } else {
                        "any subcommand".to_string()
                    }
                )));
            }
            continue;
        };
        // The user's own flag wins.
        let mut spellings: Vec<String> = vec![format!("--{long}")];
        spellings.extend(
            arg.get_all_aliases()
                .unwrap_or_default()
                .iter()
                .map(|a| format!("--{a}")),
        );
        spellings.extend(arg.get_short().map(|c| format!("-{c}")));
        let on_line = given.iter().take_while(|a| *a != "--").any(|a| {
            spellings.iter().any(|s| {
                a == s
                    || a.starts_with(&format!("{s}="))
                    || (s.len() == 2 && a.starts_with(s.as_str()) && !s.starts_with("--"))
            })
        });
        if on_line {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if !takes_value => {
                    if *b {
                        extra.push(format!("--{long}"));
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(bad(format!(
                        "`{key}`: a {} is not an option value",
                        other.type_str()
                    )));
                }
            };
            if !takes_value {
                return Err(bad(format!("`{key}` is a flag: write `{key} = true`")));
            }
            extra.push(format!("--{long}={text}"));
        }
    }
    args.splice(at + 1..at + 1, extra);
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(toml: &str, line: &[&str]) -> Result<Vec<String>> {
        let f = std::env::temp_dir().join(format!(
            "sd-onnx-config-{}-{}.toml",
            std::process::id(),
            line.len()
        ));
        std::fs::write(&f, toml).unwrap();
        let args = std::iter::once("sd-onnx")
            .chain(line.iter().copied())
            .map(String::from)
            .collect();
        let out = with_config(args, &f);
        let _ = std::fs::remove_file(&f);
        out
    }

    #[test]
    fn config_entries_become_options_the_line_overrides() {
        let toml = "model = \"m\"\nsteps = 30\nlow_memory = true\nquiet = false\nep_option = [\"a=1\", \"b=2\"]\n\
                    [img2img]\nstrength = 0.6\n";
        let out = with(toml, &["txt2img", "-p", "cat", "--steps", "5"]).unwrap();
        assert_eq!(
            out,
            [
                "sd-onnx",
                "txt2img",
                "--ep-option=a=1",
                "--ep-option=b=2",
                "--low-memory",
                "--model=m",
                "-p",
                "cat",
                "--steps",
                "5"
            ]
        );
        let out = with(toml, &["img2img", "-m", "x", "-p", "cat"]).unwrap();
        assert!(
            out.contains(&"--strength=0.6".to_string()) && !out.contains(&"--model=m".to_string()),
            "{out:?}"
        );
        // tokenize has no --steps: top-level entries apply only where they exist.
        let out = with(toml, &["tokenize", "cat"]).unwrap();
        assert_eq!(out[2], "--model=m");
    }

    #[test]
    fn config_mistakes_name_the_file_and_key() {
        let e = with("stepz = 3\n", &["txt2img"]).unwrap_err().to_string();
        assert!(
            e.contains("`stepz` is not an option of any subcommand"),
            "{e}"
        );
        let e = with("[txt2img]\nstrength = 0.5\n", &["txt2img"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`strength` is not an option of txt2img"), "{e}");
        let e = with("[txt2imgg]\n", &["txt2img"]).unwrap_err().to_string();
        assert!(e.contains("[txt2imgg] is not a subcommand"), "{e}");
        let e = with("steps = \n", &["txt2img"]).unwrap_err().to_string();
        assert!(e.starts_with("config ") && e.contains("line 1"), "{e}");
        let e = with("low_memory = \"yes\"\n", &["txt2img"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`low_memory` is a flag"), "{e}");
    }
}
