//! Products with a packed matrix: `y = W x` (GEMV) and `Y = X W^T` (GEMM, a linear layer),
//! with AVX-512 and AVX2+FMA+F16C paths chosen at run time and a portable scalar fallback.
//!
//! Both paths are deterministic: every output is computed by exactly one thread in a fixed
//! order of operations, so results do not depend on the number of threads. GEMV uses
//! `sum_c s*(q_c - z)*x_c = s*(sum_c q_c*x_c - z*sum_{c in g} x_c)` with the per-group sums of
//! `x` computed once per call; GEMM dequantizes each weight row once and reuses it for the whole
//! batch. The SIMD GEMV may lose precision for inputs below about 1e-34 in magnitude (they are
//! rescaled by up to 2^-12 internally, which can make them subnormal).

use rayon::prelude::*;

use crate::error::check_len;
use crate::matrix::PackedMatrix;
#[cfg(target_arch = "x86_64")]
use crate::x86::isa::{V256, V512};
use crate::{scalar, KernelError};

/// Which implementation of the products to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C intrinsics (checked at run time).
    Avx2,
    /// The same kernels at twice the width: AVX-512 F + BW, plus AVX2, FMA and F16C.
    Avx512,
}

impl Backend {
    /// The fastest backend this CPU supports.
    pub fn detect() -> Backend {
        [Backend::Avx512, Backend::Avx2]
            .into_iter()
            .find(|b| b.is_available())
            .unwrap_or(Backend::Scalar)
    }

    /// Whether this CPU can run the backend.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => {
                Backend::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 | Backend::Avx512 => false,
        }
    }

    /// Short lowercase name for reports ("scalar", "avx2", "avx512").
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
        }
    }
}

/// Packed bytes a GEMV task covers at least (whole multiples of 16 rows): with 16-row tasks
/// of short rows, handing tasks out cost as much as computing them (a 1536x576 int4 GEMV took
/// 73 us, its 576x1536 transpose 22 us).
const GEMV_TASK_BYTES: usize = 16 << 10;

/// A GEMV over fewer packed bytes than this runs on the calling thread. It takes a few
/// microseconds there, less than waking a second thread, whose wake-up also varies from call
/// to call (10-25 us measured on a shared 2-core machine).
pub const SERIAL_GEMV_BYTES: usize = 256 << 10;

/// Calls `f(first_row, outputs)` for consecutive blocks of outputs, each a multiple of 16 rows
/// (so row pairs never straddle blocks): in parallel, or in order on the calling thread for a
/// matrix of fewer than [`SERIAL_GEMV_BYTES`]. Every row is computed the same way either way.
pub(crate) fn for_row_blocks(
    w: &PackedMatrix,
    y: &mut [f32],
    f: impl Fn(usize, &mut [f32]) + Send + Sync,
) {
    let block = (GEMV_TASK_BYTES / w.row_bytes().max(1))
        .next_multiple_of(16)
        .max(16);
    let serial = gemv_runs_serially(w.storage_bytes());
    for_chunks_init(y, block, serial, || (), |_, (i, ys)| f(i * block, ys));
}

/// A GEMM of fewer multiply-accumulates than this runs on the calling thread, for the same
/// reason as [`SERIAL_GEMV_BYTES`] (about 50 us of work on one core).
pub const SERIAL_GEMM_MACS: usize = 2 << 20;

/// Whether a GEMV over `packed_bytes` of packed matrix runs on the calling thread (the cost
/// model asks too, to choose its fit).
pub fn gemv_runs_serially(packed_bytes: usize) -> bool {
    packed_bytes < SERIAL_GEMV_BYTES
}

/// Whether a GEMM of `macs` multiply-accumulates runs on the calling thread.
pub fn gemm_runs_serially(macs: usize) -> bool {
    macs < SERIAL_GEMM_MACS
}

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

/// Whether `Y = X W^T` over `batch` rows runs on the calling thread.
pub(crate) fn gemm_is_serial(w: &PackedMatrix, batch: usize) -> bool {
    gemm_runs_serially(batch.saturating_mul(w.rows()).saturating_mul(w.cols()))
}

/// `f(state, (index, chunk))` over the `chunk`-sized pieces of `out` with per-task state from
/// `init`: in parallel, or in order on the calling thread when `serial`.
pub(crate) fn for_chunks_init<T>(
    out: &mut [f32],
    chunk: usize,
    serial: bool,
    init: impl Fn() -> T + Send + Sync,
    f: impl Fn(&mut T, (usize, &mut [f32])) + Send + Sync,
) {
    if serial {
        let mut state = init();
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|item| f(&mut state, item));
    } else {
        out.par_chunks_mut(chunk).enumerate().for_each_init(init, f);
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

/// Per-group sums of `x`: entry `g` is `sum x[g*group_size .. min((g+1)*group_size, cols)]`,
/// added in eight interleaved partial sums (a fixed order of operations).
pub(crate) fn group_sums(w: &PackedMatrix, x: &[f32]) -> Vec<f32> {
    x.chunks(w.group_size())
        .map(|c| {
            let mut lanes = [0f32; 8];
            let mut it = c.chunks_exact(8);
            for x8 in &mut it {
                for (l, v) in lanes.iter_mut().zip(x8) {
                    *l += v;
                }
            }
            for (l, v) in lanes.iter_mut().zip(it.remainder()) {
                *l += v;
            }
            ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
        })
        .collect()
}

#[cfg(test)]
mod tests;
