//! Bit packing and packed low-bit kernels for qpipe: pack/unpack of 2..8-bit codes (layout in
//! [`mod@pack`]), a borrowed view of a group-quantized matrix with dequantization
//! ([`PackedMatrix`]), and GEMV/GEMM directly on the packed data with run-time selected AVX-512
//! and AVX2 paths and a portable scalar fallback ([`fn@gemv`], [`fn@gemm`]). No candle dependency.

mod backend;
mod error;
pub mod gemv;
pub mod matrix;
pub mod pack;
mod scalar;
mod schedule;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use error::KernelError;
pub use gemv::{
    covered_cols, gemm, gemm_runs_serially, gemm_scalar, gemm_with, gemv, gemv_runs_serially,
    gemv_scalar, gemv_with, Backend,
};
pub use matrix::{PackedMatrix, Zeros};
pub use pack::{pack, packed_len, unpack, SUPPORTED_BITS};
