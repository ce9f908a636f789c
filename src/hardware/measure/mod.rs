//! Measured targets: `host` times qpipe-kernels' packed GEMV (decode) and GEMM (prefill), and
//! `llama-cpp` times candle's quantized matmul (llama.cpp's block formats), on this machine.
//!
//! A [`Calibration`] fits, per format, `t = overhead + rows * per_row + w * unpack + T * w /
//! rate + T * (rows * per_output + cols * per_input)` (w weights, T tokens; the unpack and
//! per-value terms for prefill only, unpack only for emulated formats) by least relative
//! squares to medians over calibration shapes distinct from any model's, separately for decode
//! (T = 1, the GEMV path) and prefill (T > 1, the GEMM path), and within each for the matmuls
//! qpipe-kernels runs on the calling thread and those it splits over threads (whose wake-up
//! is in the overhead). It also measures the read bandwidth of a buffer larger than the
//! last-level cache, used only for weights that do not fit in that cache. The cost model then
//! predicts a model's own shapes from those fits, and [`validate`] measures the same shapes to
//! report the error.
//!
//! Timings are medians of interleaved rounds (every probe once per round, each timed call
//! preceded by an untimed one), so that probes measured together see the same machine load.
//! They are taken on a thread of rayon's pool, which does its share of each matmul as an
//! inference loop's thread would; see `timing::Timer::medians`.
//! Medians are cached in a JSON file keyed by CPU model, thread count, backend, format, shape
//! and token count, written atomically.

mod cache;
mod calibration;
mod least_squares;
mod timing;
mod validation;

pub use cache::{machine, Cache};
pub use calibration::{
    calibrate, Calibration, Fit, FormatFit, CALIBRATION_SHAPES, CALIBRATION_TOKENS,
};
pub use timing::read_pass;
pub use validation::{validate, ShapeCheck, Validation};
