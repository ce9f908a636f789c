//! GPTQ for llama.cpp's 256-value k-quants (q2_k ... q6_k). Their scales come from candle's
//! port of llama.cpp's importance-weighted search on the original weights ("static groups").
//! Inside a sub-block every value is an affine map of its stored code (value = a · code + b),
//! so the grid GPTQ rounds onto is read from candle's own dequantizer (every code 0, every code
//! 1), and the rounded codes are written back where llama.cpp's layout keeps them.

use super::format::GgufType;
use super::gptq::Factor;
use crate::error::candle_message;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

/// Values per super-block.
const QK_K: usize = 256;

/// Whether `t` is a k-quant this module rounds.
pub fn handles(t: GgufType) -> bool {
    t.block_size() == QK_K
}

/// Bits of `t`'s codes.
fn bits(t: GgufType) -> u32 {
    match t {
        GgufType::Q2K => 2,
        GgufType::Q3K => 3,
        GgufType::Q4K => 4,
        GgufType::Q5K => 5,
        GgufType::Q6K => 6,
        _ => unreachable!("only k-quants have code layouts here"),
    }
}

/// A run of code bits inside a block: `width` bits at `shift` of byte `byte`.
#[derive(Debug, Clone, Copy)]
struct Field {
    byte: usize,
    shift: u32,
    width: u32,
}

/// Where value `e` (0..256) of a `t` block keeps its code: the low bits, then the high bits
/// (if the type splits them), in llama.cpp's layout (`dequantize_row_q*_K`).
fn fields(t: GgufType, e: usize) -> (Field, Option<Field>) {
    let f = |byte, shift, width| Field { byte, shift, width };
    match t {
        // e = h·128 + j·32 + l: 2 bits at shift 2j of qs[h·32 + l] (q2_k: qs after 16 scale
        // bytes; q3_k: after the 32-byte high-bit mask, its bit h·4 + j of byte l).
        GgufType::Q2K | GgufType::Q3K => {
            let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
            let qs = if t == GgufType::Q2K { 16 } else { 32 };
            let low = f(qs + h * 32 + l, 2 * j as u32, 2);
            (
                low,
                (t == GgufType::Q3K).then(|| f(l, (h * 4 + j) as u32, 1)),
            )
        }
        // e = c·64 + half·32 + l: the nibble `half` of qs[c·32 + l] (after d, dmin and 12
        // scale bytes; q5_k's 32 high-bit bytes come first, its bit 2c + half of byte l).
        GgufType::Q4K | GgufType::Q5K => {
            let (c, half, l) = (e / 64, (e % 64) / 32, e % 32);
            let qs = if t == GgufType::Q4K { 16 } else { 48 };
            let low = f(qs + c * 32 + l, 4 * half as u32, 4);
            (
                low,
                (t == GgufType::Q5K).then(|| f(16 + l, (2 * c + half) as u32, 1)),
            )
        }
        // e = h·128 + k·32 + l: the nibble k / 2 of ql[h·64 + (k % 2)·32 + l], and 2 bits at
        // shift 2k of qh[h·32 + l] (after the 128 ql bytes).
        GgufType::Q6K => {
            let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = f(h * 64 + (k % 2) * 32 + l, 4 * (k / 2) as u32, 4);
            (low, Some(f(128 + h * 32 + l, 2 * k as u32, 2)))
        }
        _ => unreachable!("only k-quants have code layouts here"),
    }
}

/// Writes `code` as value `e`'s code in `block`, leaving every other bit alone.
fn put(t: GgufType, block: &mut [u8], e: usize, code: u8) {
    let (low, high) = fields(t, e);
    let mut write = |f: Field, v: u8| {
        let mask = (((1u32 << f.width) - 1) << f.shift) as u8;
        block[f.byte] = (block[f.byte] & !mask) | ((u32::from(v) << f.shift) as u8 & mask);
    };
    write(low, code & ((1 << low.width) - 1));
    if let Some(h) = high {
        write(h, code >> low.width);
    }
}

/// `bytes` (whole `t` blocks) with every value's code set to `code`.
fn with_codes(t: GgufType, bytes: &[u8], code: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let size = t.ggml().type_size();
    out.par_chunks_mut(size).for_each(|block| {
        for e in 0..QK_K {
            put(t, block, e, code);
        }
    });
    out
}

fn dequantize(t: GgufType, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>, String> {
    let q = qtensor_from_ggml(t.ggml(), bytes, vec![rows, cols], &Device::Cpu)
        .map_err(|e| candle_message(&e))?;
    super::gguf::dequantize(&q)
}

/// Every value's grid: value = `a` · code + `b`, code in 0..=`max`.
struct Grid {
    a: Vec<f32>,
    b: Vec<f32>,
    max: f32,
}

impl Grid {
    /// The grid of `bytes`' scales, read from candle's dequantizer.
    fn of(t: GgufType, bytes: &[u8], rows: usize, cols: usize) -> Result<Grid, String> {
        let zero = dequantize(t, &with_codes(t, bytes, 0), rows, cols)?;
        let one = dequantize(t, &with_codes(t, bytes, 1), rows, cols)?;
        Ok(Grid {
            a: one.iter().zip(&zero).map(|(o, z)| o - z).collect(),
            b: zero,
            max: ((1u32 << bits(t)) - 1) as f32,
        })
    }

    /// The nearest code of `x` at value index `i` (any code where the scale is zero).
    fn code(&self, i: usize, x: f32) -> u8 {
        let a = self.a[i];
        if a == 0.0 {
            return 0;
        }
        ((x - self.b[i]) / a).round().clamp(0.0, self.max) as u8
    }

    fn value(&self, i: usize, x: f32) -> f32 {
        self.a[i] * f32::from(self.code(i, x)) + self.b[i]
    }
}

/// Quantizes row-major `w` [rows, cols] (cols a multiple of 256, values finite) to the k-quant
/// `t`: scales from candle's importance-weighted search (`imp`, else its plain one), values
/// rounded by GPTQ with `factor` onto them. Returns llama.cpp's block bytes.
pub fn quantize_gptq(
    w: &[f32],
    rows: usize,
    cols: usize,
    t: GgufType,
    imp: Option<&[f32]>,
    factor: &Factor,
) -> Result<Vec<u8>, String> {
    if !handles(t) || !cols.is_multiple_of(QK_K) || w.len() != rows * cols {
        return Err(format!(
            "{rows}x{cols} ({} values) is not a matrix of whole {t:?} blocks",
            w.len()
        ));
    }
    let src = Tensor::from_slice(w, (rows, cols), &Device::Cpu).map_err(|e| candle_message(&e))?;
    let q = match imp {
        Some(imp) => QTensor::quantize_imatrix(&src, imp, t.ggml()),
        None => QTensor::quantize(&src, t.ggml()),
    }
    .map_err(|e| candle_message(&e))?;
    let bytes = q.data().map_err(|e| candle_message(&e))?;
    let grid = Grid::of(t, &bytes, rows, cols)?;
    let rounded = factor.round(w, rows, cols, &|r, c, x| grid.value(r * cols + c, x))?;
    let mut out = with_codes(t, &bytes, 0);
    let size = t.ggml().type_size();
    out.par_chunks_mut(size)
        .zip(rounded.par_chunks(QK_K))
        .enumerate()
        .for_each(|(k, (block, xs))| {
            for (e, &x) in xs.iter().enumerate() {
                put(t, block, e, grid.code(k * QK_K + e, x));
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::gptq::tests::{hessian, inputs, noise, output_error};

    const TYPES: [GgufType; 5] = [
        GgufType::Q2K,
        GgufType::Q3K,
        GgufType::Q4K,
        GgufType::Q5K,
        GgufType::Q6K,
    ];

    fn candle_bytes(t: GgufType, w: &[f32], rows: usize, cols: usize) -> Vec<u8> {
        let src = Tensor::from_slice(w, (rows, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&src, t.ggml())
            .unwrap()
            .data()
            .unwrap()
            .to_vec()
    }

    /// The codes recovered from candle's dequantized values, written with `put` into blocks
    /// whose codes were all cleared, give back candle's bytes exactly: every code sits where
    /// candle reads it, and no scale bit is touched.
    #[test]
    fn codes_written_where_candle_reads_them_rebuild_its_bytes() {
        let (rows, cols) = (4, 512);
        let w: Vec<f32> = noise(7, rows * cols).iter().map(|x| x * x * x).collect();
        for t in TYPES {
            let bytes = candle_bytes(t, &w, rows, cols);
            let grid = Grid::of(t, &bytes, rows, cols).unwrap();
            assert!(
                grid.a.iter().all(|&a| a != 0.0),
                "{t:?}: a zero sub-block scale"
            );
            let values = dequantize(t, &bytes, rows, cols).unwrap();
            let mut rebuilt = with_codes(t, &bytes, 0);
            let size = t.ggml().type_size();
            for (k, block) in rebuilt.chunks_mut(size).enumerate() {
                for e in 0..QK_K {
                    let i = k * QK_K + e;
                    put(t, block, e, grid.code(i, values[i]));
                }
            }
            assert!(
                rebuilt == bytes,
                "{t:?}: rebuilt blocks differ from candle's"
            );
        }
    }

    /// On correlated inputs GPTQ onto candle's grids lowers the layer output's error against
    /// candle's own rounding, and its values are exactly what candle reads back.
    #[test]
    fn gptq_onto_the_kquant_grids_lowers_the_output_error() {
        let (rows, dim, tokens) = (8, 256, 1024);
        let x = inputs(tokens, dim);
        let factor = Factor::new(&hessian(&x, dim)).unwrap();
        let w = noise(4, rows * dim);
        let error = |q: &[f32]| output_error(&w, q, &x, rows, dim);
        for t in [GgufType::Q3K, GgufType::Q4K, GgufType::Q6K] {
            let rtn = dequantize(t, &candle_bytes(t, &w, rows, dim), rows, dim).unwrap();
            let bytes = quantize_gptq(&w, rows, dim, t, None, &factor).unwrap();
            let gptq = dequantize(t, &bytes, rows, dim).unwrap();
            let (e_rtn, e_gptq) = (error(&rtn), error(&gptq));
            assert!(
                e_gptq < 0.5 * e_rtn,
                "{t:?}: gptq {e_gptq:.4e} vs rtn {e_rtn:.4e}"
            );
        }
    }
}
