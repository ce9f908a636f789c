//! x86-64 SIMD kernels, written once over [`isa::Isa`] and instantiated at AVX2 width (eight
//! f32 lanes) and AVX-512 width (sixteen). Every `unsafe fn` here requires the instantiated
//! width's CPU features; `crate::gemv` calls them only after run-time detection.
//!
//! A row is processed in *blocks* of `LANES * NV` codes that one [`decode::Decode`] turns into `NV`
//! vectors of `LANES` f32 codes. For 2, 4 and 8 bits a block is one full-width load: 32-bit
//! lane `j` holds codes `NV*j .. NV*j + NV`, and vector `k` is lane-wise code `NV*j + k`,
//! obtained by masking it *in place* (`q << shift`) rather than shifting it down. For 3, 5 and
//! 6 bits a block is `4 * LANES` codes, spread over the lanes with one byte shuffle. Instead of
//! undoing the permutation and the power-of-two factors per weight, `x` is permuted and
//! rescaled once per call to match (`xp = x * 2^(K - shift)`) and the row sum is scaled by
//! `2^-K`; power-of-two scaling is exact, so this changes no rounding unless `x * 2^(K - shift)`
//! leaves the normal range (|x| below about 1e-34).
//!
//! A row ends with a partial block when `cols` is not a multiple of the block: it is decoded
//! like the others (from the next row's bytes, or a zero-padded copy for the matrix's last
//! rows) and multiplied by the zeros that pad the permuted `x`, so every column is handled by
//! the vector code and the extra lanes add exact zeros.
//!
//! `decode` holds the block decoders, `layout` the block geometry and the permuted `x`, `gemv`
//! the matrix-vector kernel, `gemm` the batched one.

mod decode;
mod gemm;
mod gemv;
pub(crate) mod isa;
mod layout;

pub(crate) use gemm::gemm;
pub(crate) use gemv::gemv;
pub(crate) use layout::covered_cols;
