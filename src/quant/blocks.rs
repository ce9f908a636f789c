//! llama.cpp's 32-value block types (q4_0, q4_1, q5_0, q5_1, q8_0) quantized by qpipe, so that
//! they get what the k-quants get from candle and more: each block's scale (and minimum) chosen
//! by an importance-weighted search, as llama.cpp's imatrix path does for these types (candle
//! quantizes them without importance), values rounded to nearest or by GPTQ onto the block
//! grids, and the blocks written in llama.cpp's byte layout (read back by candle's own
//! dequantizer in the tests).

use super::format::GgufType;
use super::gptq::Factor;
use half::f16;
use rayon::prelude::*;

/// Values per block.
const QK: usize = 32;
/// Scales tried, as fractions of the one that maps the block's extreme value to the end code.
const RATIOS: [f32; 10] = [1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.78, 0.74, 0.7];

/// One block's grid: value = d * code + m, code in 0..=max (d and m as stored, f16).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Grid {
    d: f32,
    m: f32,
    max: f32,
}

impl Grid {
    /// `d` and `m` rounded to the f16 they are stored as; `m = -offset * d` for the types
    /// without a stored minimum.
    fn new(t: GgufType, d: f32, min: f32) -> Grid {
        let d = f16::from_f32(d).to_f32();
        let (max, m) = match t {
            GgufType::Q4_0 => (15.0, -8.0 * d),
            GgufType::Q5_0 => (31.0, -16.0 * d),
            GgufType::Q8_0 => (255.0, -128.0 * d),
            GgufType::Q4_1 => (15.0, f16::from_f32(min).to_f32()),
            GgufType::Q5_1 => (31.0, f16::from_f32(min).to_f32()),
            _ => unreachable!("only 32-blocks have grids here"),
        };
        Grid { d, m, max }
    }

    /// The nearest code (any code for a zero scale: every one stands for `m`).
    fn code(&self, x: f32) -> u8 {
        if self.d == 0.0 {
            return 0;
        }
        ((x - self.m) / self.d).round().clamp(0.0, self.max) as u8
    }

    fn fake(&self, x: f32) -> f32 {
        self.d * f32::from(self.code(x)) + self.m
    }
}

/// Whether qpipe quantizes `t` itself.
pub fn handles(t: GgufType) -> bool {
    t.block_size() == QK
}

/// The grid of `xs` (one block) with the scale at `ratio` of the end-code one.
fn grid_at(t: GgufType, xs: &[f32], ratio: f32) -> Grid {
    match t {
        GgufType::Q4_1 | GgufType::Q5_1 => {
            let (lo, hi) = xs
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
                    (l.min(x), h.max(x))
                });
            let levels = if t == GgufType::Q4_1 { 15.0 } else { 31.0 };
            let shrink = (1.0 - ratio) / 2.0 * (hi - lo);
            Grid::new(t, (hi - lo - 2.0 * shrink) / levels, lo + shrink)
        }
        _ => {
            // The value of largest magnitude, with its sign, maps to the lowest code (q4_0,
            // q5_0); q8_0's positive scale maps it to +-127.
            let v = xs
                .iter()
                .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
            let end = match t {
                GgufType::Q4_0 => -8.0,
                GgufType::Q5_0 => -16.0,
                _ => 127.0 * v.signum(),
            };
            Grid::new(t, v / end * ratio, 0.0)
        }
    }
}

/// The grid `block` is stored on: llama.cpp's reference (`exact`), or the ratio with the least
/// importance-weighted squared error (ties to the larger scale).
fn choose(t: GgufType, xs: &[f32], imp: Option<&[f32]>, exact: bool) -> Grid {
    let ratios: &[f32] = if exact { &RATIOS[..1] } else { &RATIOS };
    let mut best = (f64::INFINITY, grid_at(t, xs, 1.0));
    for &r in ratios {
        let g = grid_at(t, xs, r);
        let e: f64 = xs
            .iter()
            .enumerate()
            .map(|(j, &x)| {
                let d = f64::from(x - g.fake(x));
                f64::from(imp.map_or(1.0, |w| w[j])) * d * d
            })
            .sum();
        if e < best.0 {
            best = (e, g);
        }
    }
    best.1
}

/// Quantizes row-major `w` [rows, cols] (cols a multiple of 32, values finite) to the 32-block
/// type `t`: llama.cpp's reference scales when `reference`, else the importance-weighted
/// search; rounded by GPTQ with `gptq`, else to nearest. Returns llama.cpp's block bytes.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    t: GgufType,
    imp: Option<&[f32]>,
    reference: bool,
    gptq: Option<&Factor>,
) -> Result<Vec<u8>, String> {
    if !handles(t) || !cols.is_multiple_of(QK) || w.len() != rows * cols {
        return Err(format!(
            "{rows}x{cols} ({} values) is not a matrix of whole {t:?} blocks",
            w.len()
        ));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err("weights contain NaN or Inf".into());
    }
    let per_row = cols / QK;
    let grids: Vec<Grid> = w
        .par_chunks(cols)
        .flat_map_iter(|row| {
            row.chunks_exact(QK)
                .enumerate()
                .map(|(b, xs)| choose(t, xs, imp.map(|v| &v[b * QK..(b + 1) * QK]), reference))
                .collect::<Vec<_>>()
        })
        .collect();
    let rounded;
    let values = match gptq {
        Some(f) => {
            rounded = f.round(w, rows, cols, &|r, c, x| {
                grids[r * per_row + c / QK].fake(x)
            })?;
            &rounded
        }
        None => w,
    };
    let size = t.ggml().type_size();
    let mut out = vec![0u8; rows * per_row * size];
    out.par_chunks_mut(size)
        .zip(values.par_chunks(QK))
        .zip(grids.par_iter())
        .for_each(|((block, xs), g)| encode(t, g, xs, block));
    Ok(out)
}

/// One block in llama.cpp's layout: f16 `d` (and `m`), the high bits of 5-bit codes as a
/// 32-bit mask, nibbles with value j in the low and j + 16 in the high half of byte j.
fn encode(t: GgufType, g: &Grid, xs: &[f32], out: &mut [u8]) {
    let codes: Vec<u8> = xs.iter().map(|&x| g.code(x)).collect();
    out[..2].copy_from_slice(&f16::from_f32(g.d).to_le_bytes());
    let mut at = 2;
    if matches!(t, GgufType::Q4_1 | GgufType::Q5_1) {
        out[2..4].copy_from_slice(&f16::from_f32(g.m).to_le_bytes());
        at = 4;
    }
    if t == GgufType::Q8_0 {
        for (o, &c) in out[at..].iter_mut().zip(&codes) {
            *o = (c as i16 - 128) as i8 as u8;
        }
        return;
    }
    if matches!(t, GgufType::Q5_0 | GgufType::Q5_1) {
        let high = codes
            .iter()
            .enumerate()
            .fold(0u32, |h, (j, &c)| h | (u32::from(c >> 4) & 1) << j);
        out[at..at + 4].copy_from_slice(&high.to_le_bytes());
        at += 4;
    }
    for j in 0..QK / 2 {
        out[at + j] = (codes[j] & 0x0f) | (codes[j + QK / 2] & 0x0f) << 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::gguf::dequantize;
    use candle_core::quantized::ggml_file::qtensor_from_ggml;
    use candle_core::Device;

    fn weights(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = ((i * 7919 + 13) % 1009) as f32 / 1009.0 - 0.5;
                x * x * x * 0.3 + 0.01 * x + if i % 97 == 0 { 0.2 } else { 0.0 }
            })
            .collect()
    }

    fn candle_values(t: GgufType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let q = qtensor_from_ggml(t.ggml(), bytes, vec![rows, cols], &Device::Cpu).unwrap();
        dequantize(&q).unwrap()
    }

    const TYPES: [GgufType; 5] = [
        GgufType::Q4_0,
        GgufType::Q4_1,
        GgufType::Q5_0,
        GgufType::Q5_1,
        GgufType::Q8_0,
    ];

    #[test]
    fn blocks_read_back_by_candle_are_the_grid_values() {
        let (rows, cols) = (6, 128);
        let w = weights(rows * cols);
        let per_row = cols / QK;
        for t in TYPES {
            for reference in [true, false] {
                let bytes = quantize(&w, rows, cols, t, None, reference, None).unwrap();
                assert_eq!(bytes.len(), rows * per_row * t.ggml().type_size());
                let back = candle_values(t, &bytes, rows, cols);
                for (b, xs) in w.chunks_exact(QK).enumerate() {
                    let g = choose(t, xs, None, reference);
                    for (j, &x) in xs.iter().enumerate() {
                        assert_eq!(back[b * QK + j], g.fake(x), "{t:?} block {b} value {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_reference_grid_is_llama_cpps_and_the_search_is_never_worse() {
        let (rows, cols) = (16, 256);
        let w = weights(rows * cols);
        let imp: Vec<f32> = (0..cols).map(|j| 0.1 + (j % 11) as f32).collect();
        let err = |v: &[f32]| -> f64 {
            w.iter()
                .zip(v)
                .enumerate()
                .map(|(i, (a, b))| f64::from(imp[i % cols]) * f64::from(a - b).powi(2))
                .sum()
        };
        for t in TYPES {
            let src = candle_core::Tensor::from_slice(&w, (rows, cols), &Device::Cpu).unwrap();
            let theirs =
                dequantize(&candle_core::quantized::QTensor::quantize(&src, t.ggml()).unwrap())
                    .unwrap();
            let reference = candle_values(
                t,
                &quantize(&w, rows, cols, t, None, true, None).unwrap(),
                rows,
                cols,
            );
            // Same scales as llama.cpp; codes may differ only where a value sits on a tie.
            let differ = reference
                .iter()
                .zip(&theirs)
                .filter(|(a, b)| a != b)
                .count();
            assert!(differ * 100 <= w.len(), "{t:?}: {differ} values differ");
            let searched = candle_values(
                t,
                &quantize(&w, rows, cols, t, Some(&imp), false, None).unwrap(),
                rows,
                cols,
            );
            assert!(err(&searched) <= err(&reference), "{t:?}");
        }
    }
}
