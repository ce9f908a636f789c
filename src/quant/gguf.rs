//! GGUF block formats through candle's `quantized` module (llama.cpp's exact layouts).
//!
//! candle implements llama.cpp's importance-matrix quantization for the k-quants only; the
//! 32-blocks (Q4_0 ... Q8_0) are quantized by [`super::blocks`] (importance-weighted scales,
//! GPTQ), or by candle with llama.cpp's reference scales for the `minmax` calibrator; GPTQ
//! rounds the k-quants onto candle's grids in [`super::kquants`].

use super::blocks;
use super::calibrate::Calibrator;
use super::format::{Format, GgufType};
use super::gptq::Factor;
use super::kquants;
use crate::error::candle_message;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::k_quants::{self, BlockQ8K, BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

/// Quantizes row-major `w` [rows, cols] to `t` with the per-column importance. A 32-block type
/// gets llama.cpp's reference scales for `Calibrator::MinMax` (without GPTQ: candle's quantizer
/// itself), else qpipe's importance-weighted search, and is rounded by GPTQ with `gptq`; the
/// k-quants run candle's (llama.cpp's) imatrix search, then GPTQ onto its grids with `gptq`.
/// The shape must pass `Format::check`
/// first.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    t: GgufType,
    cal: Calibrator,
    imp: Option<&[f32]>,
    gptq: Option<&Factor>,
) -> Result<QTensor, String> {
    Format::Gguf(t).check(rows, cols)?;
    let named = |m: String| format!("{}: {m}", Format::Gguf(t));
    let reference = cal == Calibrator::MinMax;
    // Blocks qpipe writes itself: the 32-blocks (unless candle's reference quantizer is
    // asked for), and the k-quants rounded by GPTQ.
    let bytes = match gptq {
        _ if blocks::handles(t) && !(reference && gptq.is_none()) => {
            Some(blocks::quantize(w, rows, cols, t, imp, reference, gptq))
        }
        Some(f) => Some(kquants::quantize_gptq(w, rows, cols, t, imp, f)),
        None => None,
    };
    if let Some(bytes) = bytes {
        return qtensor_from_ggml(
            t.ggml(),
            &bytes.map_err(named)?,
            vec![rows, cols],
            &Device::Cpu,
        )
        .map_err(|e| named(candle_message(&e)));
    }
    let src = Tensor::from_slice(w, (rows, cols), &Device::Cpu).map_err(|e| candle_message(&e))?;
    let q = match imp {
        Some(imp) if !blocks::handles(t) => QTensor::quantize_imatrix(&src, imp, t.ggml()),
        _ => QTensor::quantize(&src, t.ggml()),
    };
    q.map_err(|e| named(candle_message(&e)))
}

/// Dequantizes a block-quantized tensor to row-major f32 with candle's own dequantizer.
pub fn dequantize(q: &QTensor) -> Result<Vec<f32>, String> {
    q.dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| candle_message(&e))
}

/// The 8-bit blocks llama.cpp's CPU backend rounds a weight's input rows to before its integer
/// dot products (ggml's `vec_dot_type`): Q8_0 for the symmetric 32-blocks, Q8_1 (with a stored
/// block sum) for the ones with a minimum, Q8_K for the k-quants.
fn input_blocks(t: GgufType) -> GgmlDType {
    match t {
        GgufType::Q8_0 | GgufType::Q5_0 | GgufType::Q4_0 => GgmlDType::Q8_0,
        GgufType::Q5_1 | GgufType::Q4_1 => GgmlDType::Q8_1,
        GgufType::Q2K | GgufType::Q3K | GgufType::Q4K | GgufType::Q5K | GgufType::Q6K => {
            GgmlDType::Q8K
        }
    }
}

/// Rounds `x` (rows of `cols`, a multiple of `t`'s block size) to the values a `t` weight's
/// matmul multiplies on llama.cpp's CPU backend, so a dense matmul with the dequantized weight
/// measures what the runtime computes. Q8_1 blocks also carry their sum rounded to f16, which
/// the kernel uses for the weight block's minimum; the returned `[rows, cols / 32]` holds, for
/// Q8_1, that stored sum minus the sum of the rounded values (see [`min_correction`]).
pub fn round_input(t: GgufType, x: &mut [f32], cols: usize) -> Option<Vec<f32>> {
    fn via<B: GgmlType>(row: &mut [f32]) {
        let mut blocks = vec![B::zeros(); row.len() / B::BLCK_SIZE];
        B::from_float(row, &mut blocks);
        B::to_float(&blocks, row);
    }
    match input_blocks(t) {
        GgmlDType::Q8_0 => {
            x.par_chunks_mut(cols).for_each(via::<BlockQ8_0>);
            None
        }
        GgmlDType::Q8_1 => {
            let mut err = vec![0f32; x.len() / 32];
            x.par_chunks_mut(cols)
                .zip(err.par_chunks_mut(cols / 32))
                .for_each(|(row, e)| {
                    for (b, e) in row.chunks_exact_mut(32).zip(e) {
                        *e = round_q8_1(b);
                    }
                });
            Some(err)
        }
        _ => {
            x.par_chunks_mut(cols).for_each(via::<BlockQ8K>);
            None
        }
    }
}

/// One Q8_1 block as candle's `quantize_row_q8_1` stores it (its fields are private, so the
/// rounding is spelled out): the values in place, and the stored sum minus theirs.
fn round_q8_1(b: &mut [f32]) -> f32 {
    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let d16 = f16::from_f32(d);
    let mut sum = 0i32;
    for v in b.iter_mut() {
        let q = (*v * id).round() as i8;
        sum += q as i32;
        *v = q as f32 * d16.to_f32();
    }
    let stored = f16::from_f32(sum as f32) * d16;
    stored.to_f32() - sum as f32 * d16.to_f32()
}

/// What a Q4_1/Q5_1 weight's kernel adds beyond `x̃ · W̃ᵀ` (rounded input times dequantized
/// weight): each weight block's minimum times the input block's sum error from
/// [`round_input`]. The minimum is the block's smallest dequantized value (candle's
/// quantizer gives it code 0). `w` is `[rows, cols]`, `err` `[tokens, cols / 32]`; returns
/// `[tokens, rows]`.
pub fn min_correction(w: &Tensor, err: Vec<f32>) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let blocks = cols / 32;
    let mins = w.reshape((rows, blocks, 32))?.min(2)?;
    let tokens = err.len() / blocks;
    let err = Tensor::from_vec(err, (tokens, blocks), w.device())?;
    err.matmul(&mins.t()?)
}

/// A GGUF weight as candle's typed blocks, multiplied by candle's generic CPU kernel
/// (`k_quants::matmul`, llama.cpp's algorithm): inputs rounded as [`round_input`] describes on
/// every CPU. candle's `QMatMul` instead repacks some types on AVX-512 machines and then feeds
/// Q8_0 weights Q8_K inputs, which would make results depend on the machine.
pub struct GgufMatrix {
    blocks: Blocks,
    /// `(rows, cols)`.
    shape: (usize, usize),
}

macro_rules! blocks {
    ($($t:ident => $b:ident),* $(,)?) => {
        enum Blocks {
            $($t(Vec<k_quants::$b>)),*
        }

        impl Blocks {
            fn new(t: GgufType, bytes: &[u8]) -> Result<Self, String> {
                Ok(match t {
                    $(GgufType::$t => Blocks::$t(typed(bytes)?)),*
                })
            }

            fn matmul(&self, mkn: (usize, usize, usize), x: &[f32], y: &mut [f32])
                -> candle_core::Result<()> {
                match self {
                    $(Blocks::$t(b) => k_quants::matmul(mkn, x, b, y)),*
                }
            }

            fn len(&self) -> usize {
                match self {
                    $(Blocks::$t(b) => b.len()),*
                }
            }

            /// Dequantizes blocks `range` into `out` (their values, in order).
            fn to_float(&self, range: std::ops::Range<usize>, out: &mut [f32]) {
                match self {
                    $(Blocks::$t(b) => k_quants::$b::to_float(&b[range], out)),*
                }
            }
        }
    };
}

blocks!(
    Q8_0 => BlockQ8_0, Q5_0 => BlockQ5_0, Q5_1 => BlockQ5_1, Q4_0 => BlockQ4_0,
    Q4_1 => BlockQ4_1, Q2K => BlockQ2K, Q3K => BlockQ3K, Q4K => BlockQ4K, Q5K => BlockQ5K,
    Q6K => BlockQ6K,
);

/// llama.cpp's block bytes as candle's block structs.
fn typed<B: GgmlType>(bytes: &[u8]) -> Result<Vec<B>, String> {
    let size = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return Err(format!(
            "{} bytes are not a whole number of {:?} blocks of {size} bytes",
            bytes.len(),
            B::DTYPE
        ));
    }
    let mut blocks = vec![B::zeros(); bytes.len() / size];
    // SAFETY: the block structs are `repr(C)` aggregates of f16, u8 and i8 (every bit pattern
    // is a valid value, no padding), `blocks` has exactly `bytes.len()` bytes, and the regions
    // do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            blocks.as_mut_ptr().cast::<u8>(),
            bytes.len(),
        );
    }
    Ok(blocks)
}

impl GgufMatrix {
    /// The blocks of `q`, a `[rows, cols]` tensor of a GGUF block type.
    pub fn new(q: &QTensor) -> Result<Self, String> {
        let (rows, cols) = q.shape().dims2().map_err(|e| candle_message(&e))?;
        let t = *GgufType::ALL
            .iter()
            .find(|t| t.ggml() == q.dtype())
            .ok_or_else(|| format!("{:?} is not a GGUF block type qpipe multiplies", q.dtype()))?;
        Format::Gguf(t).check(rows, cols)?;
        let bytes = q.data().map_err(|e| candle_message(&e))?;
        if bytes.len() != Format::Gguf(t).storage_bytes(rows, cols) {
            return Err(format!(
                "{} bytes for a {rows}x{cols} {} matrix",
                bytes.len(),
                Format::Gguf(t)
            ));
        }
        Ok(GgufMatrix {
            blocks: Blocks::new(t, &bytes)?,
            shape: (rows, cols),
        })
    }

    /// Row `r` dequantized into `out` (`cols` values): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> candle_core::Result<()> {
        let (rows, cols) = self.shape;
        if r >= rows || out.len() != cols {
            candle_core::bail!(
                "row {r} of a {rows}x{cols} matrix into {} values",
                out.len()
            );
        }
        let per_row = self.blocks.len() / rows;
        self.blocks.to_float(r * per_row..(r + 1) * per_row, out);
        Ok(())
    }

    /// `x Wᵀ` for `x` `[tokens, cols]`.
    pub fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, cols) = self.shape;
        let tokens = x.dim(0)?;
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; tokens * rows];
        self.blocks.matmul((tokens, cols, rows), &xs, &mut y)?;
        Tensor::from_vec(y, (tokens, rows), x.device())
    }
}
