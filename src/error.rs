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

/// Result with the library's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
