//! Typed library errors; the binary maps every one of them to exit code 2 (bad input).

use std::fmt;
use std::path::{Path, PathBuf};

/// What an error is about, so its one line names it: a file, a tensor, a command-line option,
/// or an input that has no file (the standard output, the evaluation data in memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A file or directory.
    File(PathBuf),
    /// A tensor, by its checkpoint name.
    Tensor(String),
    /// A command-line option or request field, by its option name (`--population`).
    Option(String),
    /// Anything else, described in a few words (`<stdout>`, `<evaluation data>`).
    Other(String),
}

impl Subject {
    /// The tensor `name`.
    pub fn tensor(name: impl Into<String>) -> Self {
        Subject::Tensor(name.into())
    }

    /// The option `name` (with its dashes).
    pub fn option(name: impl Into<String>) -> Self {
        Subject::Option(name.into())
    }

    /// An input described by `what`.
    pub fn other(what: impl Into<String>) -> Self {
        Subject::Other(what.into())
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::File(p) => write!(f, "{}", p.display()),
            Subject::Tensor(s) | Subject::Option(s) | Subject::Other(s) => f.write_str(s),
        }
    }
}

impl From<&Path> for Subject {
    fn from(p: &Path) -> Self {
        Subject::File(p.to_path_buf())
    }
}

impl From<&PathBuf> for Subject {
    fn from(p: &PathBuf) -> Self {
        Subject::File(p.clone())
    }
}

impl From<PathBuf> for Subject {
    fn from(p: PathBuf) -> Self {
        Subject::File(p)
    }
}

/// Everything that can go wrong while reading user-supplied models and data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory exists but its contents are wrong (corrupt, truncated, lying header).
    #[error("{subject}: {message}")]
    Invalid {
        /// The file, tensor or option the problem is in.
        subject: Subject,
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
    #[error("{subject}: {message}")]
    Unsupported {
        /// The file, tensor or option holding the unsupported item.
        subject: Subject,
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
    /// An `Invalid` error about `subject` (a path, or a [`Subject`]).
    pub fn invalid(subject: impl Into<Subject>, message: impl Into<String>) -> Self {
        Error::Invalid {
            subject: subject.into(),
            message: message.into(),
        }
    }

    /// An `Unsupported` error about `subject` (a path, or a [`Subject`]).
    pub fn unsupported(subject: impl Into<Subject>, message: impl Into<String>) -> Self {
        Error::Unsupported {
            subject: subject.into(),
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
