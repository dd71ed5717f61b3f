//! `sd-onnx`: parse the command line, call the library, map errors to exit codes
//! (0 success, 2 bad input or usage, 1 anything else).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = sd_onnx::cli::Cli::parse();
    match sd_onnx::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}
