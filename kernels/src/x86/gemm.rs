//! GEMM: dequantize a tile of rows once, then register-tiled FMAs over the batch.

use std::marker::PhantomData;

use super::decode::{pow2, Decode, Shuf, D2, D4, D8};
use super::isa::{Isa, Job};
use super::layout::{group_params, permute_x, row_base, shift_table, AlignedF32, Layout, Mode};
use crate::matrix::{PackedMatrix, Zeros};
use crate::schedule::{for_chunks_init, gemm_is_serial};

/// Rows per GEMM task (rows of the register tile).
const GEMM_ROWS: usize = 4;
/// Columns per GEMM chunk: 4 weight rows plus up to 16 batch rows of this many floats fit L1.
const GEMM_KC: usize = 256;

/// `yt = W X^T` at width `S` into the transposed output `yt [rows x batch]`; lengths are
/// validated, `cols > 0` and `rows * batch > 0`.
pub(crate) unsafe fn gemm<S: Isa>(w: &PackedMatrix, x: &[f32], batch: usize, yt: &mut [f32]) {
    match w.bits() {
        2 => gemm_impl::<S, D2>(w, x, batch, yt),
        3 => gemm_impl::<S, Shuf<3>>(w, x, batch, yt),
        4 => gemm_impl::<S, D4>(w, x, batch, yt),
        5 => gemm_impl::<S, Shuf<5>>(w, x, batch, yt),
        6 => gemm_impl::<S, Shuf<6>>(w, x, batch, yt),
        _ => gemm_impl::<S, D8>(w, x, batch, yt),
    }
}

/// Per-call data shared by every GEMM task.
struct GemmPrep {
    /// `x` padded with zeros to `cp` columns per batch row, in decoder order (unscaled) when
    /// there is a layout.
    xq: AlignedF32,
    /// Padded row length (a multiple of `LANES`).
    cp: usize,
    /// Block geometry; `None` when rows are dequantized by the portable code in natural order.
    layout: Option<Layout>,
    /// `2^shift(k, j)` and `2^-shift(k, j)`, indexed `k * LANES + j`.
    pow: Vec<f32>,
    inv: Vec<f32>,
}

/// Per-task scratch: a tile of dequantized rows, one row's scales and zeros as f32, and the
/// accumulators of the tile (`batch x 4` vectors).
struct GemmScratch<S: Isa> {
    wb: AlignedF32,
    acc: Vec<S::F>,
    sf: Vec<f32>,
    zf: Vec<f32>,
}

unsafe fn gemm_impl<S: Isa, D: Decode<S>>(
    w: &PackedMatrix,
    x: &[f32],
    batch: usize,
    yt: &mut [f32],
) {
    let cols = w.cols();
    let layout = Layout::new::<S, D>(w);
    let cp = match layout {
        Some(l) => l.padded_cols::<S, D>(),
        None => cols.div_ceil(S::LANES) * S::LANES,
    };
    let mut xq = AlignedF32::zeros(batch * cp);
    let ones = vec![1f32; D::CODES];
    for (xb, qb) in x
        .chunks_exact(cols)
        .zip(xq.as_mut_slice().chunks_exact_mut(cp))
    {
        match layout {
            Some(l) => permute_x::<S, D>(xb, l.blocks, &ones, qb),
            None => qb[..cols].copy_from_slice(xb),
        }
    }
    let prep = GemmPrep {
        xq,
        cp,
        layout,
        pow: shift_table::<S, D>(pow2),
        inv: shift_table::<S, D>(|s| pow2(-s)),
    };
    let ng = w.n_groups();
    let serial = gemm_is_serial(w, batch);
    for_chunks_init(
        yt,
        GEMM_ROWS * batch,
        serial,
        || GemmScratch::<S> {
            wb: AlignedF32::zeros(GEMM_ROWS * cp),
            acc: Vec::new(),
            sf: vec![0f32; ng.next_multiple_of(16) + 16],
            zf: vec![0f32; ng.next_multiple_of(16) + 16],
        },
        |s, (t, out)| {
            let job = GemmTask::<S, D> {
                w,
                p: &prep,
                batch,
                r0: t * GEMM_ROWS,
                s,
                out,
                decoder: PhantomData,
            };
            // SAFETY: the caller guarantees the CPU features of `S`.
            unsafe { S::enter(job) }
        },
    );
}

/// Rows `r0 .. r0 + out.len() / batch` of the transposed output, all batch entries.
struct GemmTask<'a, S: Isa, D> {
    w: &'a PackedMatrix<'a>,
    p: &'a GemmPrep,
    batch: usize,
    r0: usize,
    s: &'a mut GemmScratch<S>,
    out: &'a mut [f32],
    decoder: PhantomData<D>,
}

impl<S: Isa, D: Decode<S>> Job for GemmTask<'_, S, D> {
    type Out = ();
    #[inline(always)]
    unsafe fn run(self) {
        let GemmTask {
            w,
            p,
            batch,
            r0,
            s,
            out,
            ..
        } = self;
        gemm_task::<S, D>(w, p, batch, r0, s, out)
    }
}

#[inline(always)]
unsafe fn gemm_task<S: Isa, D: Decode<S>>(
    w: &PackedMatrix,
    p: &GemmPrep,
    batch: usize,
    r0: usize,
    s: &mut GemmScratch<S>,
    out: &mut [f32],
) {
    let cp = p.cp;
    let nr = out.len() / batch;
    for (i, dst) in s.wb.as_mut_slice().chunks_exact_mut(cp).enumerate() {
        if i >= nr {
            dst.fill(0.0);
        } else if let Some(layout) = p.layout {
            dequant_row::<S, D>(w, r0 + i, p, layout, &mut s.sf, &mut s.zf, dst);
        } else {
            // Columns past `cols` stay zero.
            w.dequantize_row_into(r0 + i, &mut dst[..w.cols()]);
        }
    }
    // Columns in chunks of `GEMM_KC` so that the weight tile and the batch's slice of `x`
    // stay in L1; the accumulators live in `acc` between chunks (which changes no rounding:
    // every lane still adds its products in column order).
    let wb = s.wb.as_slice().as_ptr();
    s.acc.clear();
    s.acc.resize(GEMM_ROWS * batch, S::zero());
    let acc = s.acc.as_mut_ptr();
    let mut k0 = 0;
    while k0 < cp {
        let k1 = (k0 + GEMM_KC).min(cp);
        // Register tiles of 2 rows x 6 batch entries (12 independent accumulators).
        for r in (0..nr).step_by(2) {
            let mut b = 0;
            while b + 6 <= batch {
                tile::<S, 6>(wb, p, r, b, k0, k1, acc);
                b += 6;
            }
            match batch - b {
                1 => tile::<S, 1>(wb, p, r, b, k0, k1, acc),
                2 => tile::<S, 2>(wb, p, r, b, k0, k1, acc),
                3 => tile::<S, 3>(wb, p, r, b, k0, k1, acc),
                4 => tile::<S, 4>(wb, p, r, b, k0, k1, acc),
                5 => tile::<S, 5>(wb, p, r, b, k0, k1, acc),
                _ => {}
            }
        }
        k0 = k1;
    }
    for (i, o) in out.chunks_exact_mut(batch).enumerate() {
        for (b, v) in o.iter_mut().enumerate() {
            *v = S::hsum(s.acc[b * GEMM_ROWS + i]);
        }
    }
}

/// Dequantizes row `r` into `dst` (`cp` floats) in the GEMM column order (blocks permuted).
#[inline(always)]
unsafe fn dequant_row<S: Isa, D: Decode<S>>(
    w: &PackedMatrix,
    r: usize,
    p: &GemmPrep,
    layout: Layout,
    sf: &mut [f32],
    zf: &mut [f32],
    dst: &mut [f32],
) {
    let ng = w.n_groups();
    let (scales, zeros) = (&w.scales()[r * ng..], w.zeros());
    let zrow = match zeros {
        Zeros::PerGroup(z) => Some(&z[r * ng..]),
        Zeros::Constant(_) => None,
    };
    let mut g = 0;
    while g < ng {
        let (s, z) = group_params::<S>(scales, zrow, g, ng);
        S::store(sf.as_mut_ptr().add(g), s);
        let z = z.unwrap_or_else(|| S::splat(f32::from(zeros.get(r, g, ng))));
        S::store(zf.as_mut_ptr().add(g), z);
        g += S::LANES;
    }
    let mut copy = Vec::new();
    let base = row_base::<S, D>(w, r, layout.blocks, &mut copy);
    let out = dst.as_mut_ptr();
    let idx = match layout.mode {
        Mode::Lanes { idx, .. } => S::load_i(idx.as_ptr() as *const u8),
        Mode::Bcast { .. } => S::splat_i(0),
    };
    for b in 0..layout.blocks {
        // In the last block, lanes past the last group read entries of `sf` and `zf` past it
        // (finite: the next row's, or zero); their columns meet the zero padding of `x`.
        let (s, z) = match layout.mode {
            Mode::Bcast { bpg } => (S::splat(sf[b / bpg]), S::splat(zf[b / bpg])),
            Mode::Lanes { gpb, .. } => (
                S::permute(S::load(sf.as_ptr().add(b * gpb)), idx),
                S::permute(S::load(zf.as_ptr().add(b * gpb)), idx),
            ),
        };
        let raw = D::load(base.add(b * D::BYTES));
        for k in 0..D::NV {
            let pw = S::load(p.pow.as_ptr().add(S::LANES * k));
            let iv = S::load(p.inv.as_ptr().add(S::LANES * k));
            // (q - z) * 2^shift is exact, so this rounds exactly like s * (q - z).
            let v = S::mul(S::sub(D::code(raw, k), S::mul(z, pw)), S::mul(s, iv));
            S::store(out.add(b * D::CODES + S::LANES * k), v);
        }
    }
}

/// Register tile over columns `k0..k1`: rows `r0, r0 + 1` of `wb` (`cp` floats each) times
/// batch rows `b0..b0 + NB`, accumulated into `acc[b * 4 + r]`.
#[inline(always)]
unsafe fn tile<S: Isa, const NB: usize>(
    wb: *const f32,
    p: &GemmPrep,
    r0: usize,
    b0: usize,
    k0: usize,
    k1: usize,
    acc: *mut S::F,
) {
    let cp = p.cp;
    let xq = p.xq.as_slice().as_ptr().add(b0 * cp);
    let w0 = wb.add(r0 * cp);
    let w1 = wb.add((r0 + 1) * cp);
    let at = |b: usize, r: usize| acc.add((b0 + b) * GEMM_ROWS + r0 + r);
    let mut a = [[S::zero(); 2]; NB];
    for (b, ab) in a.iter_mut().enumerate() {
        for (r, v) in ab.iter_mut().enumerate() {
            *v = *at(b, r);
        }
    }
    let mut i = k0;
    while i < k1 {
        let wv0 = S::load(w0.add(i));
        let wv1 = S::load(w1.add(i));
        for (b, ab) in a.iter_mut().enumerate() {
            let xv = S::load(xq.add(b * cp + i));
            ab[0] = S::fmadd(wv0, xv, ab[0]);
            ab[1] = S::fmadd(wv1, xv, ab[1]);
        }
        i += S::LANES;
    }
    for (b, ab) in a.iter().enumerate() {
        for (r, &v) in ab.iter().enumerate() {
            *at(b, r) = v;
        }
    }
}
