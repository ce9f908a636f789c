//! Bit packing and packed low-bit kernels for qpipe: pack/unpack of 2..8-bit codes (layout in
//! [`mod@pack`]), a borrowed view of a group-quantized matrix with dequantization
//! ([`PackedMatrix`]), and GEMV/GEMM directly on the packed data with a run-time selected AVX2
//! path and a portable scalar fallback ([`fn@gemv`], [`fn@gemm`]). No candle dependency.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod error;
pub mod gemv;
pub mod matrix;
pub mod pack;
mod scalar;

pub use error::KernelError;
pub use gemv::{gemm, gemm_scalar, gemm_with, gemv, gemv_scalar, gemv_with, Backend};
pub use matrix::{PackedMatrix, Zeros};
pub use pack::{pack, packed_len, unpack, SUPPORTED_BITS};
