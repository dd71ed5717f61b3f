//! `sd-onnx`: parse the command line, call the library, map errors to exit codes
//! (0 success, 2 bad input or usage, 1 anything else).

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The arguments as given (checked for UTF-8), with a config file's defaults added.
    let argv = match cli::argv() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let args = match cli::Cli::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {}", cli::one_line(&e));
            return ExitCode::from(2);
        }
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}
