//! AVX2 GEMM: dequantize a tile of rows once, then register-tiled FMAs over the batch.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::decode::{Decode, Shuf, D2, D4, D8};
use super::{hsum, padded_copy, permute_x, pow2, row_loads_in_bounds, shift_table, Layout, Mode};
use crate::matrix::PackedMatrix;
use crate::pack::unpack_prefix;

/// Rows per GEMM task (rows of the register tile).
const GEMM_ROWS: usize = 4;
/// Columns per GEMM chunk: 4 weight rows plus up to 16 batch rows of this many floats fit L1.
const GEMM_KC: usize = 256;

/// AVX2 `yt = W X^T` into the transposed output `yt [rows x batch]`; lengths are validated,
/// `cols > 0` and `rows * batch > 0`.
pub(crate) unsafe fn gemm(w: &PackedMatrix, x: &[f32], batch: usize, yt: &mut [f32]) {
    match w.bits() {
        2 => gemm_impl::<D2>(w, x, batch, yt),
        3 => gemm_impl::<Shuf<3>>(w, x, batch, yt),
        4 => gemm_impl::<D4>(w, x, batch, yt),
        5 => gemm_impl::<Shuf<5>>(w, x, batch, yt),
        6 => gemm_impl::<Shuf<6>>(w, x, batch, yt),
        _ => gemm_impl::<D8>(w, x, batch, yt),
    }
}

/// Per-call data shared by every GEMM task.
struct GemmPrep {
    /// `x` padded to `cp` columns per batch row, full blocks in decoder order (unscaled).
    xq: Vec<f32>,
    /// Padded row length (multiple of 8).
    cp: usize,
    /// Block geometry; `None` when rows are dequantized by the portable code in natural order.
    layout: Option<Layout>,
    /// `2^shift(k, j)` and `2^-shift(k, j)`, indexed `k * 8 + j`.
    pow: Vec<f32>,
    inv: Vec<f32>,
}

/// Per-task scratch: a tile of dequantized rows, one row's scales and zeros as f32, and the
/// accumulators of the tile (`batch x 4` vectors).
struct GemmScratch {
    wb: Vec<f32>,
    acc: Vec<__m256>,
    sf: Vec<f32>,
    zf: Vec<f32>,
}

unsafe fn gemm_impl<D: Decode>(w: &PackedMatrix, x: &[f32], batch: usize, yt: &mut [f32]) {
    let cols = w.cols();
    let cp = cols.div_ceil(8) * 8;
    let layout = Layout::new::<D>(w);
    let blocks = layout.map_or(0, |l| l.blocks);
    let mut xq = vec![0f32; batch * cp];
    let ones = vec![1f32; D::CODES];
    for (xb, qb) in x.chunks_exact(cols).zip(xq.chunks_exact_mut(cp)) {
        // SAFETY: f32 and MaybeUninit<f32> have the same layout, and every value written is
        // initialised.
        let qu = unsafe { &mut *(qb as *mut [f32] as *mut [MaybeUninit<f32>]) };
        permute_x::<D>(xb, blocks, &ones, qu);
        qb[blocks * D::CODES..cols].copy_from_slice(&xb[blocks * D::CODES..]);
    }
    let prep = GemmPrep {
        xq,
        cp,
        layout,
        pow: shift_table::<D>(pow2),
        inv: shift_table::<D>(|s| pow2(-s)),
    };
    let ng = w.n_groups();
    yt.par_chunks_mut(GEMM_ROWS * batch)
        .enumerate()
        .for_each_init(
            || GemmScratch {
                wb: vec![0f32; GEMM_ROWS * cp],
                acc: Vec::new(),
                sf: vec![0f32; ng + 8],
                zf: vec![0f32; ng + 8],
            },
            |s, (t, out)| {
                // SAFETY: the caller guarantees AVX2/FMA/F16C.
                unsafe { gemm_task::<D>(w, &prep, batch, t * GEMM_ROWS, s, out) }
            },
        );
}

/// Rows `r0 .. r0 + out.len() / batch` of the transposed output, all batch entries.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm_task<D: Decode>(
    w: &PackedMatrix,
    p: &GemmPrep,
    batch: usize,
    r0: usize,
    s: &mut GemmScratch,
    out: &mut [f32],
) {
    let cp = p.cp;
    let nr = out.len() / batch;
    for (i, dst) in s.wb.chunks_exact_mut(cp).enumerate() {
        if i >= nr {
            dst.fill(0.0);
        } else if let Some(layout) = p.layout {
            dequant_row::<D>(w, r0 + i, p, layout, &mut s.sf, &mut s.zf, dst);
        } else {
            w.dequantize_row_into(r0 + i, &mut dst[..w.cols()]);
        }
    }
    // Columns in chunks of `GEMM_KC` so that the weight tile and the batch's slice of `x`
    // stay in L1; the accumulators live in `acc` between chunks (which changes no rounding:
    // every lane still adds its products in column order).
    let wb = s.wb.as_ptr();
    s.acc.clear();
    s.acc.resize(GEMM_ROWS * batch, _mm256_setzero_ps());
    let acc = s.acc.as_mut_ptr();
    let mut k0 = 0;
    while k0 < cp {
        let k1 = (k0 + GEMM_KC).min(cp);
        // Register tiles of 2 rows x 6 batch entries (12 independent accumulators).
        for r in (0..nr).step_by(2) {
            let mut b = 0;
            while b + 6 <= batch {
                tile::<6>(wb, p, r, b, k0, k1, acc);
                b += 6;
            }
            match batch - b {
                1 => tile::<1>(wb, p, r, b, k0, k1, acc),
                2 => tile::<2>(wb, p, r, b, k0, k1, acc),
                3 => tile::<3>(wb, p, r, b, k0, k1, acc),
                4 => tile::<4>(wb, p, r, b, k0, k1, acc),
                5 => tile::<5>(wb, p, r, b, k0, k1, acc),
                _ => {}
            }
        }
        k0 = k1;
    }
    for (i, o) in out.chunks_exact_mut(batch).enumerate() {
        for (b, v) in o.iter_mut().enumerate() {
            *v = hsum(s.acc[b * GEMM_ROWS + i]);
        }
    }
}

/// Dequantizes row `r` into `dst` in the GEMM column order (blocks permuted, tail natural).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequant_row<D: Decode>(
    w: &PackedMatrix,
    r: usize,
    p: &GemmPrep,
    layout: Layout,
    sf: &mut [f32],
    zf: &mut [f32],
    dst: &mut [f32],
) {
    let ng = w.n_groups();
    for g in 0..ng {
        sf[g] = w.scale(r, g);
        zf[g] = f32::from(w.zeros().get(r, g, ng));
    }
    let row = w.row_codes(r);
    let blocks = layout.blocks;
    let copy;
    let base = if row_loads_in_bounds::<D>(w, r, blocks) {
        row.as_ptr()
    } else {
        copy = padded_copy(row);
        copy.as_ptr()
    };
    let out = dst.as_mut_ptr();
    let idx = match layout.mode {
        Mode::Lanes { idx, .. } => _mm256_loadu_si256(idx.as_ptr() as *const __m256i),
        Mode::Bcast { .. } => _mm256_setzero_si256(),
    };
    for b in 0..blocks {
        let (s, z) = match layout.mode {
            Mode::Bcast { bpg } => (_mm256_set1_ps(sf[b / bpg]), _mm256_set1_ps(zf[b / bpg])),
            Mode::Lanes { gpb, .. } => (
                _mm256_permutevar8x32_ps(_mm256_loadu_ps(sf.as_ptr().add(b * gpb)), idx),
                _mm256_permutevar8x32_ps(_mm256_loadu_ps(zf.as_ptr().add(b * gpb)), idx),
            ),
        };
        let raw = D::load(base.add(b * D::BYTES));
        for k in 0..D::NV {
            let pw = _mm256_loadu_ps(p.pow.as_ptr().add(8 * k));
            let iv = _mm256_loadu_ps(p.inv.as_ptr().add(8 * k));
            // (q - z) * 2^shift is exact, so this rounds exactly like s * (q - z).
            let v = _mm256_mul_ps(
                _mm256_sub_ps(D::code(raw, k), _mm256_mul_ps(z, pw)),
                _mm256_mul_ps(s, iv),
            );
            _mm256_storeu_ps(out.add(b * D::CODES + 8 * k), v);
        }
    }
    let c0 = blocks * D::CODES;
    let tail = w.cols() - c0;
    if tail > 0 {
        let mut codes = [0u8; 128];
        unpack_prefix(&row[blocks * D::BYTES..], w.bits(), &mut codes[..tail]);
        let gs = w.group_size();
        for (i, (o, &q)) in dst[c0..c0 + tail]
            .iter_mut()
            .zip(&codes[..tail])
            .enumerate()
        {
            let g = (c0 + i) / gs;
            *o = sf[g] * (f32::from(q) - zf[g]);
        }
    }
}

/// Register tile over columns `k0..k1`: rows `r0, r0 + 1` of `wb` (`cp` floats each) times
/// batch rows `b0..b0 + NB`, accumulated into `acc[b * 4 + r]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const NB: usize>(
    wb: *const f32,
    p: &GemmPrep,
    r0: usize,
    b0: usize,
    k0: usize,
    k1: usize,
    acc: *mut __m256,
) {
    let cp = p.cp;
    let xq = p.xq.as_ptr().add(b0 * cp);
    let w0 = wb.add(r0 * cp);
    let w1 = wb.add((r0 + 1) * cp);
    let at = |b: usize, r: usize| acc.add((b0 + b) * GEMM_ROWS + r0 + r);
    let mut a = [[_mm256_setzero_ps(); 2]; NB];
    for (b, ab) in a.iter_mut().enumerate() {
        for (r, v) in ab.iter_mut().enumerate() {
            *v = *at(b, r);
        }
    }
    let mut i = k0;
    while i < k1 {
        let wv0 = _mm256_loadu_ps(w0.add(i));
        let wv1 = _mm256_loadu_ps(w1.add(i));
        for (b, ab) in a.iter_mut().enumerate() {
            let xv = _mm256_loadu_ps(xq.add(b * cp + i));
            ab[0] = _mm256_fmadd_ps(wv0, xv, ab[0]);
            ab[1] = _mm256_fmadd_ps(wv1, xv, ab[1]);
        }
        i += 8;
    }
    for (b, ab) in a.iter().enumerate() {
        for (r, &v) in ab.iter().enumerate() {
            *at(b, r) = v;
        }
    }
}
