//! Products with a packed matrix: `y = W x` (GEMV) and `Y = X W^T` (GEMM, a linear layer),
//! with AVX-512 and AVX2+FMA+F16C paths chosen at run time and a portable scalar fallback.
//!
//! Both paths are deterministic: every output is computed by exactly one thread in a fixed
//! order of operations, so results do not depend on the number of threads. GEMV uses
//! `sum_c s*(q_c - z)*x_c = s*(sum_c q_c*x_c - z*sum_{c in g} x_c)` with the per-group sums of
//! `x` computed once per call; GEMM dequantizes each weight row once and reuses it for the whole
//! batch. The SIMD GEMV may lose precision for inputs below about 1e-34 in magnitude (they are
//! rescaled by up to 2^-12 internally, which can make them subnormal).

use crate::error::check_len;
use crate::matrix::PackedMatrix;
use crate::schedule::{for_chunks_init, gemm_is_serial};
#[cfg(target_arch = "x86_64")]
use crate::x86::isa::{V256, V512};
use crate::{scalar, KernelError};

pub use crate::backend::Backend;
// The thresholds are part of the products' contract: the cost model asks them too.
pub use crate::schedule::{
    gemm_runs_serially, gemv_runs_serially, SERIAL_GEMM_MACS, SERIAL_GEMV_BYTES,
};

/// Columns per row that [`gemv`] and [`gemm`] work through for `bits`-bit codes in groups of
/// `group_size`: `cols` rounded up to whole blocks of the fastest backend (a block is one
/// vector load of codes: 256 2-bit codes at AVX-512 width). The padding costs as much as real
/// columns, so the cost model prices the kernels' work with this: a 384-column INT2 row runs
/// as 512, and was measured 25-29% slower than a model counting 384.
pub fn covered_cols(bits: u32, group_size: usize, cols: usize) -> usize {
    match Backend::detect() {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => crate::x86::covered_cols::<V512>(bits, group_size, cols),
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => crate::x86::covered_cols::<V256>(bits, group_size, cols),
        _ => cols,
    }
}

/// `y = W x` on the fastest available backend; `x.len() == cols`, `y.len() == rows`.
pub fn gemv(w: &PackedMatrix, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    gemv_with(Backend::detect(), w, x, y)
}

/// `y = W x` on the portable scalar backend (reference for tests and benches).
pub fn gemv_scalar(w: &PackedMatrix, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
    gemv_with(Backend::Scalar, w, x, y)
}

/// `y = W x` on an explicit backend; fails with `BackendUnavailable` if the CPU lacks it.
pub fn gemv_with(
    backend: Backend,
    w: &PackedMatrix,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_len("x", w.cols(), x.len())?;
    check_len("y", w.rows(), y.len())?;
    if !backend.is_available() {
        return Err(KernelError::BackendUnavailable(backend.name()));
    }
    if w.rows() == 0 {
        return Ok(());
    }
    match backend {
        Backend::Scalar => scalar::gemv(w, x, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` confirmed AVX2, FMA and F16C on this CPU.
        Backend::Avx2 => unsafe { crate::x86::gemv::<V256>(w, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` confirmed AVX-512 F/BW, AVX2, FMA and F16C on this CPU.
        Backend::Avx512 => unsafe { crate::x86::gemv::<V512>(w, x, y) },
        #[cfg(not(target_arch = "x86_64"))]
        Backend::Avx2 | Backend::Avx512 => unreachable!("is_available is false off x86-64"),
    }
    Ok(())
}

/// `Y = X W^T` on the fastest available backend: `x` is `[batch x cols]` row-major, `y` is
/// `[batch x rows]` row-major.
pub fn gemm(w: &PackedMatrix, x: &[f32], batch: usize, y: &mut [f32]) -> Result<(), KernelError> {
    gemm_with(Backend::detect(), w, x, batch, y)
}

/// `Y = X W^T` on the portable scalar backend (reference for tests and benches).
pub fn gemm_scalar(
    w: &PackedMatrix,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    gemm_with(Backend::Scalar, w, x, batch, y)
}

/// `Y = X W^T` on an explicit backend; fails with `BackendUnavailable` if the CPU lacks it.
pub fn gemm_with(
    backend: Backend,
    w: &PackedMatrix,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let nx = batch
        .checked_mul(w.cols())
        .ok_or(KernelError::SizeOverflow("batch * cols"))?;
    let ny = batch
        .checked_mul(w.rows())
        .ok_or(KernelError::SizeOverflow("batch * rows"))?;
    check_len("x", nx, x.len())?;
    check_len("y", ny, y.len())?;
    if !backend.is_available() {
        return Err(KernelError::BackendUnavailable(backend.name()));
    }
    if ny == 0 {
        return Ok(());
    }
    if w.cols() == 0 {
        y.fill(0.0);
        return Ok(());
    }
    // Each task computes a block of rows for the whole batch into a transposed buffer, which
    // is then scattered into `y`.
    let mut yt = vec![0f32; ny];
    match backend {
        Backend::Scalar => scalar::gemm(w, x, batch, &mut yt),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` confirmed AVX2, FMA and F16C on this CPU.
        Backend::Avx2 => unsafe { crate::x86::gemm::<V256>(w, x, batch, &mut yt) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` confirmed AVX-512 F/BW, AVX2, FMA and F16C on this CPU.
        Backend::Avx512 => unsafe { crate::x86::gemm::<V512>(w, x, batch, &mut yt) },
        #[cfg(not(target_arch = "x86_64"))]
        Backend::Avx2 | Backend::Avx512 => unreachable!("is_available is false off x86-64"),
    }
    let rows = w.rows();
    for_chunks_init(
        y,
        rows,
        gemm_is_serial(w, batch),
        || (),
        |_, (b, yb)| {
            for (r, v) in yb.iter_mut().enumerate() {
                *v = yt[r * batch + b];
            }
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests;
