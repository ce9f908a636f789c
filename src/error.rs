//! Typed library errors; the binary maps every one of them to exit code 2 (bad input).

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading user-supplied models and data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory exists but its contents are wrong (corrupt, truncated, lying header).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file the problem is in.
        path: PathBuf,
        /// What is wrong, in one line.
        message: String,
    },
    /// The operating system refused an operation on a path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path the operation was on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The input is well-formed but uses something qpipe does not support.
    #[error("{}: {message}", path.display())]
    Unsupported {
        /// The file holding the unsupported item.
        path: PathBuf,
        /// What is unsupported and what is supported instead.
        message: String,
    },
    /// A tensor operation of a forward pass failed (inconsistent model or a bug), with context.
    #[error("{context}: {}", candle_message(source))]
    Compute {
        /// What was being computed (the model file, the layer).
        context: String,
        /// candle's error.
        source: candle_core::Error,
    },
}

impl Error {
    /// An `Invalid` error for `path`.
    pub fn invalid(path: &Path, message: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// An `Unsupported` error for `path`.
    pub fn unsupported(path: &Path, message: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// A closure turning an `io::Error` into an `Io` error for `path` (for `map_err`).
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Error {
    /// A closure turning a candle error into a `Compute` error with `context` (for `map_err`).
    pub fn compute(context: impl Into<String>) -> impl FnOnce(candle_core::Error) -> Self {
        let context = context.into();
        move |source| Error::Compute { context, source }
    }
}

/// candle's message on one line, without the backtrace candle attaches when RUST_BACKTRACE is
/// set (a user-facing error is one line, never a backtrace).
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        other => other.to_string().lines().collect::<Vec<_>>().join(" "),
    }
}

/// Result with the library's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
