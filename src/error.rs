//! The library's one error type. `main.rs` maps it to exit codes through [`Error::is_usage`];
//! nothing else in the crate decides how a failure is reported.

use std::path::PathBuf;

/// Everything that can go wrong in `sd_onnx`, each variant naming the file, flag or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or argument value the user gave cannot be used (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A request field (an [`crate::pipeline::Intent`] field: `width`, `strength`, ...) has a value that
    /// cannot be used (exit code 2). Shown as `field message`; the CLI names its flag instead.
    #[error("{field} {msg}")]
    Invalid {
        /// The field, as the library names it.
        field: &'static str,
        /// What is wrong with its value, starting with the value.
        msg: String,
    },
    /// The run was interrupted through [`crate::pipeline::Pipeline::interrupter`] (exit code 1).
    #[error("interrupted")]
    Interrupted,
    /// A model folder, config or graph is missing something or says something we cannot honour (exit code 2).
    #[error("{}: {msg}", path.display())]
    Model {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A file we had to read could not be read (exit code 2: the user pointed us at it).
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// An output could not be written (exit code 1).
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why it could not be written.
        source: std::io::Error,
    },
    /// The ONNX Runtime library could not be found or loaded (exit code 2: it is a set-up step).
    #[error("{0}")]
    Runtime(String),
    /// An image could not be encoded (exit code 1).
    #[error("encoding the image: {0}")]
    Encode(String),
    /// ONNX Runtime failed while running a graph (exit code 1).
    #[error("{context}: {msg}")]
    Ort {
        /// The graph and input or output concerned.
        context: String,
        /// ONNX Runtime's message.
        msg: String,
    },
    /// A scheduler config value we cannot honour.
    #[error("{0}")]
    Scheduler(#[from] crate::schedulers::SchedulerError),
}

impl Error {
    /// True for errors the user can fix by changing what they asked for: bad flags, bad model folders,
    /// a missing runtime library. `main` exits 2 for these and 1 for everything else.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Usage(_)
                | Error::Invalid { .. }
                | Error::Model { .. }
                | Error::Read { .. }
                | Error::Runtime(_)
                | Error::Scheduler(_)
        )
    }

    pub(crate) fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn ort<E: std::fmt::Display>(context: impl Into<String>) -> impl FnOnce(E) -> Self {
        let context = context.into();
        move |e| Error::Ort {
            context,
            msg: e.to_string(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
