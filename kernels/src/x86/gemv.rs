//! GEMV: two rows at a time, block by block, with the zero-point identity.

use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
use std::marker::PhantomData;

use super::decode::{pow2, Decode, Shuf, D2, D4, D8};
use super::isa::{Isa, Job};
use super::layout::{
    group_params, permute_x, row_base, shift_table, AlignedF32, Layout, Mode, K_EXP,
};
use crate::matrix::{PackedMatrix, Zeros};
use crate::scalar::group_sums;
use crate::schedule::for_row_blocks;

/// Minimum distance (bytes) GEMV prefetches ahead in a row's packed codes; the distance used is
/// the smallest multiple of the bytes of a pair of rows at least this large, so that each
/// stream prefetches the same position of a row pair further on. Prefetches past the matrix
/// are harmless (they never fault; the address is formed with `wrapping_add`).
const PREFETCH_MIN: usize = 4096;
/// Rows a GEMV computes together (sharing the loads of `x`).
const GEMV_ROWS: usize = 2;
/// Groups whose scales are converted to f32 at a time in GEMV.
const SCALE_CHUNK: usize = 64;

/// Prefetches the cache lines of `len` bytes from `p` into L1.
#[inline(always)]
unsafe fn prefetch_range(p: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        _mm_prefetch::<_MM_HINT_T0>(p.add(off) as *const i8);
        off += 64;
    }
}

/// Loads block `b` of `R` rows, prefetching further along each row.
#[inline(always)]
unsafe fn load_blocks<S: Isa, D: Decode<S>, const R: usize>(
    bases: &[*const u8; R],
    b: usize,
    pf: usize,
) -> [S::I; R] {
    let mut raw = [S::splat_i(0); R];
    for (v, &p) in raw.iter_mut().zip(bases) {
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(b * D::BYTES + pf) as *const i8);
        *v = D::load(p.add(b * D::BYTES));
    }
    raw
}

/// For `R` rows at once (sharing the loads of `x`): lane-wise `sum_k code_k * xp_k` over block
/// `b`, already loaded as `raw`, in two chains per row (blocks are independent, so
/// out-of-order execution overlaps their latency; fewer chains mean fewer additions).
#[inline(always)]
unsafe fn block_dot<S: Isa, D: Decode<S>, const R: usize>(
    raw: &[S::I; R],
    xp: *const f32,
    b: usize,
) -> [S::F; R] {
    let xv = xp.add(b * D::CODES);
    let mut a = [[S::zero(); 2]; R];
    for k in 0..D::NV {
        let x = S::load(xv.add(S::LANES * k));
        for (ar, &v) in a.iter_mut().zip(raw) {
            let c = D::code(v, k);
            ar[k % 2] = if k < 2 {
                S::mul(c, x)
            } else {
                S::fmadd(c, x, ar[k % 2])
            };
        }
    }
    let mut d = [S::zero(); R];
    for (dr, ar) in d.iter_mut().zip(&a) {
        *dr = S::add(ar[0], ar[1]);
    }
    d
}

/// For `R` rows at once: lane-wise `sum code * xp` over blocks `b0..b1` (at least one), in
/// four chains per row.
#[inline(always)]
unsafe fn group_dot<S: Isa, D: Decode<S>, const R: usize>(
    bases: &[*const u8; R],
    xp: *const f32,
    b0: usize,
    b1: usize,
    pf: usize,
) -> [S::F; R] {
    let mut a = [[S::zero(); 4]; R];
    for b in b0..b1 {
        let xv = xp.add(b * D::CODES);
        let raw = load_blocks::<S, D, R>(bases, b, pf);
        for k in 0..D::NV {
            let x = S::load(xv.add(S::LANES * k));
            for (ar, &v) in a.iter_mut().zip(&raw) {
                ar[k % 4] = S::fmadd(D::code(v, k), x, ar[k % 4]);
            }
        }
    }
    let mut d = [S::zero(); R];
    for (dr, ar) in d.iter_mut().zip(&a) {
        *dr = S::add(S::add(ar[0], ar[1]), S::add(ar[2], ar[3]));
    }
    d
}

/// Per-call data shared by every row of a GEMV.
struct GemvPrep {
    /// `x` in decoder order, scaled by `2^(K - shift)`, zero-padded to whole blocks.
    xp: AlignedF32,
    /// Per-group sums of `x`, then `LANES` zeros.
    xs: Vec<f32>,
    /// Groups per row.
    layout_groups: usize,
    layout: Layout,
    /// Prefetch distance in bytes (see [`PREFETCH_MIN`]).
    pf: usize,
}

/// `y = W x` at width `S`; lengths are validated and `rows > 0`.
pub(crate) unsafe fn gemv<S: Isa>(w: &PackedMatrix, x: &[f32], y: &mut [f32]) {
    match w.bits() {
        2 => gemv_impl::<S, D2>(w, x, y),
        3 => gemv_impl::<S, Shuf<3>>(w, x, y),
        4 => gemv_impl::<S, D4>(w, x, y),
        5 => gemv_impl::<S, Shuf<5>>(w, x, y),
        6 => gemv_impl::<S, Shuf<6>>(w, x, y),
        _ => gemv_impl::<S, D8>(w, x, y),
    }
}

unsafe fn gemv_impl<S: Isa, D: Decode<S>>(w: &PackedMatrix, x: &[f32], y: &mut [f32]) {
    let Some(layout) = Layout::new::<S, D>(w) else {
        // Groups and blocks do not nest (no standard format): use the portable kernel.
        return crate::scalar::gemv(w, x, y);
    };
    let factor = shift_table::<S, D>(|s| pow2(K_EXP - s));
    let mut xp = AlignedF32::zeros(layout.padded_cols::<S, D>());
    permute_x::<S, D>(x, layout.blocks, &factor, xp.as_mut_slice());
    let pair = (GEMV_ROWS * w.row_bytes()).max(1);
    let prep = GemvPrep {
        xp,
        xs: {
            let mut xs = group_sums(w, x);
            xs.resize(xs.len() + S::LANES, 0.0);
            xs
        },
        layout_groups: w.n_groups(),
        layout,
        pf: PREFETCH_MIN.div_ceil(pair) * pair,
    };
    for_row_blocks(w, y, |r0, ys| {
        let job = RowBlock::<S, D> {
            w,
            prep: &prep,
            r0,
            ys,
            isa: PhantomData,
        };
        // SAFETY: the caller guarantees the CPU features of `S`.
        unsafe { S::enter(job) }
    });
}

/// Outputs `r0 .. r0 + ys.len()` of `W x`, `GEMV_ROWS` at a time.
struct RowBlock<'a, S, D> {
    w: &'a PackedMatrix<'a>,
    prep: &'a GemvPrep,
    r0: usize,
    ys: &'a mut [f32],
    isa: PhantomData<(S, D)>,
}

impl<S: Isa, D: Decode<S>> Job for RowBlock<'_, S, D> {
    type Out = ();
    #[inline(always)]
    unsafe fn run(self) {
        for (i, set) in self.ys.chunks_mut(GEMV_ROWS).enumerate() {
            let r = self.r0 + GEMV_ROWS * i;
            // Missing last rows repeat the last one: the same arithmetic as in a full set.
            let rows = std::array::from_fn(|j| r + j.min(set.len() - 1));
            let v = rows_dot::<S, D, GEMV_ROWS>(self.w, rows, self.prep);
            set.copy_from_slice(&v[..set.len()]);
        }
    }
}

/// Outputs `rows[i]` of `W x`, computed together so that they share the loads of `x`.
#[inline(always)]
unsafe fn rows_dot<S: Isa, D: Decode<S>, const R: usize>(
    w: &PackedMatrix,
    rows: [usize; R],
    p: &GemvPrep,
) -> [f32; R] {
    let blocks = p.layout.blocks;
    let ng = w.n_groups();
    // Loads may run past a row: fine inside the matrix, but the last row(s) decode from a
    // padded copy.
    let mut copies: [Vec<u8>; R] = std::array::from_fn(|_| Vec::new());
    let mut bases = [std::ptr::null(); R];
    let mut scales: [&[u16]; R] = [&[]; R];
    let mut zrows: [Option<&[u8]>; R] = [None; R];
    for (i, (&r, copy)) in rows.iter().zip(&mut copies).enumerate() {
        bases[i] = row_base::<S, D>(w, r, blocks, copy);
        // From the row's first group to the end of the matrix (see `blocks_dot`).
        scales[i] = &w.scales()[r * ng..];
        if let Zeros::PerGroup(z) = w.zeros() {
            zrows[i] = Some(&z[r * ng..]);
        }
    }
    // The next rows' scales and zeros are read at the start of each chunk of groups, before
    // any arithmetic can proceed: fetch them now, while these rows are computed.
    let next = rows[R - 1] + 1;
    if next + R <= w.rows() {
        prefetch_range(
            w.scales()[next * ng..(next + R) * ng].as_ptr() as *const u8,
            2 * R * ng,
        );
        if let Zeros::PerGroup(z) = w.zeros() {
            prefetch_range(z[next * ng..(next + R) * ng].as_ptr(), R * ng);
        }
    }
    let sums = blocks_dot::<S, D, R>(&bases, &scales, &zrows, p);
    let mut out = [0f32; R];
    for (o, (y, zsum)) in out.iter_mut().zip(sums) {
        *o = match w.zeros() {
            Zeros::Constant(z) => y - f32::from(z) * zsum,
            Zeros::PerGroup(_) => y - zsum,
        };
    }
    out
}

/// Over the blocks of `R` rows (decoded in place from `bases`): returns per row
/// `(sum_g s_g * sum_{c in g} q_c * x_c, zero term)` where the zero term is
/// `sum_g s_g * z_g * xs_g` for per-group zeros and `sum_g s_g * xs_g` for a constant zero.
#[inline(always)]
unsafe fn blocks_dot<S: Isa, D: Decode<S>, const R: usize>(
    bases: &[*const u8; R],
    scales: &[&[u16]; R],
    zrows: &[Option<&[u8]>; R],
    p: &GemvPrep,
) -> [(f32, f32); R] {
    let lanes = S::LANES;
    let ng = p.layout_groups;
    let blocks = p.layout.blocks;
    let xp = p.xp.as_slice().as_ptr();
    let pf = p.pf;
    let xs = p.xs.as_ptr();
    // One accumulator per row: with `R` rows in flight the FMA latency of the scaled sums is
    // hidden.
    let mut acc = [S::zero(); R];
    let mut zt = [S::zero(); R];
    // Sixteen spare entries: the last groups are converted a full vector at a time, and a
    // `Lanes` block reads `LANES` scales from its first group on (the lanes past the last
    // group multiply exact zeros).
    let mut sbuf = [[0f32; SCALE_CHUNK + 16]; R];
    let mut g0 = 0;
    while g0 < ng {
        let gc = (ng - g0).min(SCALE_CHUNK);
        // Scales of this chunk of groups to f32, and their share of the zero term, a vector of
        // groups at a time (lanes past the last group meet the zero padding of `xs`).
        for r in 0..R {
            let mut i = 0;
            while i < gc {
                let (s, z) = group_params::<S>(scales[r], zrows[r], g0 + i, ng);
                S::store(sbuf[r].as_mut_ptr().add(i), s);
                let sx = S::mul(s, S::load(xs.add(g0 + i)));
                zt[r] = match z {
                    Some(z) => S::fmadd(sx, z, zt[r]),
                    None => S::add(sx, zt[r]),
                };
                i += lanes;
            }
        }
        match p.layout.mode {
            Mode::Bcast { bpg } => {
                for g in g0..g0 + gc {
                    let b0 = g * bpg;
                    let b1 = (b0 + bpg).min(blocks);
                    let d = if b1 - b0 == 1 {
                        block_dot::<S, D, R>(&load_blocks::<S, D, R>(bases, b0, pf), xp, b0)
                    } else {
                        group_dot::<S, D, R>(bases, xp, b0, b1, pf)
                    };
                    for r in 0..R {
                        acc[r] = S::fmadd(S::splat(sbuf[r][g - g0]), d[r], acc[r]);
                    }
                }
            }
            Mode::Lanes { gpb, idx } => {
                let idx = S::load_i(idx.as_ptr() as *const u8);
                // Chunks hold whole blocks (`gpb` divides `SCALE_CHUNK`) but the last, whose
                // final block may be partial.
                let b_start = g0 / gpb;
                let b_end = if g0 + gc == ng {
                    blocks
                } else {
                    (g0 + gc) / gpb
                };
                // Software-pipelined: block b + 1 is loaded while block b is computed.
                let mut next = load_blocks::<S, D, R>(bases, b_start, pf);
                for b in b_start..b_end {
                    let raw = next;
                    next = load_blocks::<S, D, R>(bases, (b + 1).min(b_end - 1), pf);
                    let d = block_dot::<S, D, R>(&raw, xp, b);
                    for r in 0..R {
                        let s = S::permute(S::load(sbuf[r].as_ptr().add(b * gpb - g0)), idx);
                        acc[r] = S::fmadd(s, d[r], acc[r]);
                    }
                }
            }
        }
        g0 += gc;
    }
    let mut out = [(0f32, 0f32); R];
    for r in 0..R {
        out[r] = (S::hsum(acc[r]) * pow2(-K_EXP), S::hsum(zt[r]));
    }
    out
}
