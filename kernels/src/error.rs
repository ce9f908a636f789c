//! The error type shared by every kernel entry point.

use std::fmt;

/// Why a kernel call was rejected; every public function validates its inputs and returns this
/// instead of panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// A bit width outside {2, 3, 4, 5, 6, 8}.
    UnsupportedBits(u32),
    /// A buffer whose length does not match what the shape implies.
    LengthMismatch {
        /// Which buffer (e.g. "packed", "scales", "x").
        what: &'static str,
        /// Length implied by the shape and bit width.
        expected: usize,
        /// Length actually passed.
        actual: usize,
    },
    /// A code that does not fit in the bit width (code >= 2^bits).
    CodeOutOfRange {
        /// Position of the offending code in the input slice.
        index: usize,
        /// The offending code.
        code: u8,
        /// The bit width it had to fit in.
        bits: u32,
    },
    /// A group size of zero.
    InvalidGroupSize(usize),
    /// A row index past the end of the matrix.
    RowOutOfRange {
        /// The requested row.
        row: usize,
        /// Number of rows in the matrix.
        rows: usize,
    },
    /// A shape whose byte or element count does not fit in `usize`.
    SizeOverflow(&'static str),
    /// An explicitly requested backend that this CPU does not support.
    BackendUnavailable(&'static str),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::UnsupportedBits(b) => {
                write!(f, "unsupported bit width {b} (supported: 2, 3, 4, 5, 6, 8)")
            }
            KernelError::LengthMismatch {
                what,
                expected,
                actual,
            } => write!(f, "{what} has length {actual}, expected {expected}"),
            KernelError::CodeOutOfRange { index, code, bits } => {
                write!(
                    f,
                    "code {code} at index {index} does not fit in {bits} bits"
                )
            }
            KernelError::InvalidGroupSize(g) => write!(f, "invalid group size {g}"),
            KernelError::RowOutOfRange { row, rows } => {
                write!(f, "row {row} out of range for a matrix with {rows} rows")
            }
            KernelError::SizeOverflow(what) => write!(f, "{what} size overflows usize"),
            KernelError::BackendUnavailable(name) => {
                write!(f, "backend {name} is not supported by this CPU")
            }
        }
    }
}

impl std::error::Error for KernelError {}

/// `Ok(())` when a buffer called `what` has the `expected` length, else `LengthMismatch`.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    actual: usize,
) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            what,
            expected,
            actual,
        })
    }
}
