//! How the products split their outputs across threads: the sizes under which they run on the
//! calling thread, the task sizes otherwise, and the loop both backends run their tasks with.
//! Every output is computed the same way either way, so the split never changes a result.

use rayon::prelude::*;

use crate::matrix::PackedMatrix;

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
