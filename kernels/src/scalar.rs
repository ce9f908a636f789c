//! Portable kernels: the fallback on CPUs without AVX2 and the reference the SIMD path is
//! tested against, with the fixed-order sums they share with it.

use crate::matrix::PackedMatrix;
use crate::pack::unpack_range;
use crate::schedule::{for_chunks_init, for_row_blocks, gemm_is_serial};

/// Codes unpacked at a time into a stack buffer.
const CHUNK: usize = 256;

/// `sum q[i] * x[i]` with eight interleaved partial sums (a fixed order of operations).
#[inline]
pub(crate) fn dot_codes(q: &[u8], x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut qc = q.chunks_exact(8);
    let mut xc = x.chunks_exact(8);
    for (q8, x8) in (&mut qc).zip(&mut xc) {
        for l in 0..8 {
            lanes[l] += f32::from(q8[l]) * x8[l];
        }
    }
    for (l, (&qi, &xi)) in qc.remainder().iter().zip(xc.remainder()).enumerate() {
        lanes[l] += f32::from(qi) * xi;
    }
    sum_lanes(&lanes)
}

/// `sum a[i] * b[i]` with eight interleaved partial sums (a fixed order of operations).
#[inline]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut ac = a.chunks_exact(8);
    let mut bc = b.chunks_exact(8);
    for (a8, b8) in (&mut ac).zip(&mut bc) {
        for l in 0..8 {
            lanes[l] += a8[l] * b8[l];
        }
    }
    for (l, (&ai, &bi)) in ac.remainder().iter().zip(bc.remainder()).enumerate() {
        lanes[l] += ai * bi;
    }
    sum_lanes(&lanes)
}

#[inline]
fn sum_lanes(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
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
            sum_lanes(&lanes)
        })
        .collect()
}

/// Output `r` of `W x`, given the per-group sums `xs` of `x`.
fn row_dot(w: &PackedMatrix, r: usize, x: &[f32], xs: &[f32]) -> f32 {
    let row = w.row_codes(r);
    let (gs, cols, ng) = (w.group_size(), w.cols(), w.n_groups());
    let mut codes = [0u8; CHUNK];
    let mut y = 0f32;
    for (g, &xsum) in xs.iter().enumerate() {
        let g_end = ((g + 1) * gs).min(cols);
        let mut c = g * gs;
        let mut dot = 0f32;
        while c < g_end {
            let n = (g_end - c).min(CHUNK);
            unpack_range(row, w.bits(), c, &mut codes[..n]);
            dot += dot_codes(&codes[..n], &x[c..c + n]);
            c += n;
        }
        let z = f32::from(w.zeros().get(r, g, ng));
        y += w.scale(r, g) * (dot - z * xsum);
    }
    y
}

/// Scalar `y = W x`; lengths are already validated and `rows > 0`.
pub(crate) fn gemv(w: &PackedMatrix, x: &[f32], y: &mut [f32]) {
    let xs = group_sums(w, x);
    for_row_blocks(w, y, |r0, ys| {
        for (i, v) in ys.iter_mut().enumerate() {
            *v = row_dot(w, r0 + i, x, &xs);
        }
    });
}

/// Scalar `yt = W X^T` into the transposed output `yt [rows x batch]`; lengths are validated
/// and `cols > 0`.
pub(crate) fn gemm(w: &PackedMatrix, x: &[f32], batch: usize, yt: &mut [f32]) {
    let cols = w.cols();
    let serial = gemm_is_serial(w, batch);
    for_chunks_init(
        yt,
        batch,
        serial,
        || vec![0f32; cols],
        |wrow, (r, out)| {
            w.dequantize_row_into(r, wrow);
            for (b, o) in out.iter_mut().enumerate() {
                *o = dot_f32(wrow, &x[b * cols..(b + 1) * cols]);
            }
        },
    );
}
