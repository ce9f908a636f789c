//! AVX2 GEMV: two rows at a time, block by block, with the zero-point identity.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::decode::{Decode, Shuf, D2, D4, D8};
use super::{
    hsum, padded_copy, permute_x, pow2, row_loads_in_bounds, shift_table, Layout, Mode, K_EXP,
};
use crate::gemv::GEMV_ROW_BLOCK;
use crate::matrix::{PackedMatrix, Zeros};
use crate::pack::unpack_prefix;
use crate::scalar::dot_codes;

/// Minimum distance (bytes) GEMV prefetches ahead in a row's packed codes; the distance used is
/// the smallest multiple of the bytes of a pair of rows at least this large, so that each
/// stream prefetches the same position of a row pair further on. Prefetches past the matrix
/// are harmless (they never fault; the address is formed with `wrapping_add`).
const PREFETCH_MIN: usize = 4096;
/// Rows a GEMV computes together (sharing the loads of `x`).
const GEMV_ROWS: usize = 2;
/// Groups whose scales are converted to f32 at a time in GEMV.
const SCALE_CHUNK: usize = 64;

/// [`crate::gemv::group_sums`] with AVX2: the same eight partial sums in the same order, so
/// the same results.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_sums_avx2(w: &PackedMatrix, x: &[f32]) -> Vec<f32> {
    x.chunks(w.group_size())
        .map(|c| {
            let mut acc = _mm256_setzero_ps();
            let mut it = c.chunks_exact(8);
            for x8 in &mut it {
                acc = _mm256_add_ps(acc, _mm256_loadu_ps(x8.as_ptr()));
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
            for (l, v) in lanes.iter_mut().zip(it.remainder()) {
                *l += v;
            }
            ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
        })
        .collect()
}

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
unsafe fn load_blocks<D: Decode, const R: usize>(
    bases: &[*const u8; R],
    b: usize,
    pf: usize,
) -> [__m256i; R] {
    let mut raw = [_mm256_setzero_si256(); R];
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
unsafe fn block_dot<D: Decode, const R: usize>(
    raw: &[__m256i; R],
    xp: *const f32,
    b: usize,
) -> [__m256; R] {
    let xv = xp.add(b * D::CODES);
    let mut a = [[_mm256_setzero_ps(); 2]; R];
    for k in 0..D::NV {
        let x = _mm256_loadu_ps(xv.add(8 * k));
        for (ar, &v) in a.iter_mut().zip(raw) {
            let c = D::code(v, k);
            ar[k % 2] = if k < 2 {
                _mm256_mul_ps(c, x)
            } else {
                _mm256_fmadd_ps(c, x, ar[k % 2])
            };
        }
    }
    let mut d = [_mm256_setzero_ps(); R];
    for (dr, ar) in d.iter_mut().zip(&a) {
        *dr = _mm256_add_ps(ar[0], ar[1]);
    }
    d
}

/// For `R` rows at once: lane-wise `sum code * xp` over blocks `b0..b1` (at least one), in
/// four chains per row.
#[inline(always)]
unsafe fn group_dot<D: Decode, const R: usize>(
    bases: &[*const u8; R],
    xp: *const f32,
    b0: usize,
    b1: usize,
    pf: usize,
) -> [__m256; R] {
    let mut a = [[_mm256_setzero_ps(); 4]; R];
    for b in b0..b1 {
        let xv = xp.add(b * D::CODES);
        let raw = load_blocks::<D, R>(bases, b, pf);
        for k in 0..D::NV {
            let x = _mm256_loadu_ps(xv.add(8 * k));
            for (ar, &v) in a.iter_mut().zip(&raw) {
                ar[k % 4] = _mm256_fmadd_ps(D::code(v, k), x, ar[k % 4]);
            }
        }
    }
    let mut d = [_mm256_setzero_ps(); R];
    for (dr, ar) in d.iter_mut().zip(&a) {
        *dr = _mm256_add_ps(_mm256_add_ps(ar[0], ar[1]), _mm256_add_ps(ar[2], ar[3]));
    }
    d
}

/// Per-call data shared by every row of a GEMV.
struct GemvPrep {
    /// `x` in decoder order, scaled by `2^(K - shift)`, for the full blocks.
    xp: Vec<f32>,
    /// Per-group sums of `x`.
    xs: Vec<f32>,
    layout: Layout,
    /// Prefetch distance in bytes (see [`PREFETCH_MIN`]).
    pf: usize,
}

/// AVX2 `y = W x`; lengths are validated and `rows > 0`.
pub(crate) unsafe fn gemv(w: &PackedMatrix, x: &[f32], y: &mut [f32]) {
    match w.bits() {
        2 => gemv_impl::<D2>(w, x, y),
        3 => gemv_impl::<Shuf<3>>(w, x, y),
        4 => gemv_impl::<D4>(w, x, y),
        5 => gemv_impl::<Shuf<5>>(w, x, y),
        6 => gemv_impl::<Shuf<6>>(w, x, y),
        _ => gemv_impl::<D8>(w, x, y),
    }
}

unsafe fn gemv_impl<D: Decode>(w: &PackedMatrix, x: &[f32], y: &mut [f32]) {
    let Some(layout) = Layout::new::<D>(w) else {
        // Groups and blocks do not nest (no standard format): use the portable kernel.
        return crate::scalar::gemv(w, x, y);
    };
    let factor = shift_table::<D>(|s| pow2(K_EXP - s));
    let n = layout.blocks * D::CODES;
    let mut xp = Vec::with_capacity(n);
    permute_x::<D>(x, layout.blocks, &factor, xp.spare_capacity_mut());
    // SAFETY: `permute_x` initialised all `blocks * CODES` entries.
    xp.set_len(n);
    let pair = (GEMV_ROWS * w.row_bytes()).max(1);
    let prep = GemvPrep {
        xp,
        xs: group_sums_avx2(w, x),
        layout,
        pf: PREFETCH_MIN.div_ceil(pair) * pair,
    };
    y.par_chunks_mut(GEMV_ROW_BLOCK)
        .enumerate()
        .for_each(|(blk, ys)| {
            let r0 = blk * GEMV_ROW_BLOCK;
            for (i, pair) in ys.chunks_mut(2).enumerate() {
                let r = r0 + 2 * i;
                // A lone last row is computed twice: the same arithmetic as in a pair.
                let r1 = if pair.len() == 2 { r + 1 } else { r };
                // SAFETY: the caller guarantees AVX2/FMA/F16C.
                let v = unsafe { rows_dot::<D, GEMV_ROWS>(w, [r, r1], x, &prep) };
                pair.copy_from_slice(&v[..pair.len()]);
            }
        });
}

/// Outputs `rows[i]` of `W x`, computed together so that they share the loads of `x`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_dot<D: Decode, const R: usize>(
    w: &PackedMatrix,
    rows: [usize; R],
    x: &[f32],
    p: &GemvPrep,
) -> [f32; R] {
    let blocks = p.layout.blocks;
    let ng = w.n_groups();
    // Loads may run past a row: fine inside the matrix, but the last row(s) decode from a
    // padded copy.
    let mut copies = Vec::new();
    let mut bases = [std::ptr::null(); R];
    let mut scales: [&[u16]; R] = [&[]; R];
    let mut zrows: [Option<&[u8]>; R] = [None; R];
    for (i, &r) in rows.iter().enumerate() {
        let row = w.row_codes(r);
        bases[i] = if row_loads_in_bounds::<D>(w, r, blocks) {
            row.as_ptr()
        } else {
            copies.push(padded_copy(row));
            copies[copies.len() - 1].as_ptr()
        };
        scales[i] = &w.scales()[r * ng..(r + 1) * ng];
        if let Zeros::PerGroup(z) = w.zeros() {
            zrows[i] = Some(&z[r * ng..(r + 1) * ng]);
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
    let sums = blocks_dot::<D, R>(&bases, &scales, &zrows, p);

    let mut out = [0f32; R];
    for (i, &r) in rows.iter().enumerate() {
        let (mut y, zsum) = sums[i];
        // Columns past the last full block, group by group.
        let gs = w.group_size();
        let mut c = blocks * D::CODES;
        if c < w.cols() {
            let row = w.row_codes(r);
            let mut codes = [0u8; 128];
            let tail = w.cols() - c;
            unpack_prefix(&row[blocks * D::BYTES..], w.bits(), &mut codes[..tail]);
            while c < w.cols() {
                let g = c / gs;
                let end = ((g + 1) * gs).min(w.cols());
                let q = &codes[c - blocks * D::CODES..end - blocks * D::CODES];
                y += w.scale(r, g) * dot_codes(q, &x[c..end]);
                c = end;
            }
        }
        out[i] = match w.zeros() {
            Zeros::Constant(z) => y - f32::from(z) * zsum,
            Zeros::PerGroup(_) => y - zsum,
        };
    }
    out
}

/// Over the full blocks of `R` rows (decoded in place from `bases`): returns per row
/// `(sum_g s_g * sum_{c in g} q_c * x_c, zero term)` where the zero term is
/// `sum_g s_g * z_g * xs_g` for per-group zeros and `sum_g s_g * xs_g` for a constant zero.
#[inline(always)]
unsafe fn blocks_dot<D: Decode, const R: usize>(
    bases: &[*const u8; R],
    scales: &[&[u16]; R],
    zrows: &[Option<&[u8]>; R],
    p: &GemvPrep,
) -> [(f32, f32); R] {
    let ng = scales[0].len();
    let blocks = p.layout.blocks;
    let xp = p.xp.as_ptr();
    let pf = p.pf;
    let xs = p.xs.as_ptr();
    // One accumulator per row: with `R` rows in flight the FMA latency of the scaled sums is
    // hidden.
    let mut acc = [_mm256_setzero_ps(); R];
    let mut zt = [_mm256_setzero_ps(); R];
    let mut zt_tail = [0f32; R];
    // Eight spare entries: a `Lanes` block reads eight scales from its first group on.
    let mut sbuf = [[0f32; SCALE_CHUNK + 8]; R];
    let mut g0 = 0;
    while g0 < ng {
        let gc = (ng - g0).min(SCALE_CHUNK);
        // Scales of this chunk of groups to f32, and their share of the zero term.
        for r in 0..R {
            let (scales, zrow, sbuf) = (scales[r], zrows[r], &mut sbuf[r]);
            let mut i = 0;
            while i + 8 <= gc {
                let s8 = _mm256_cvtph_ps(_mm_loadu_si128(
                    scales.as_ptr().add(g0 + i) as *const __m128i
                ));
                _mm256_storeu_ps(sbuf.as_mut_ptr().add(i), s8);
                let sx = _mm256_mul_ps(s8, _mm256_loadu_ps(xs.add(g0 + i)));
                zt[r] = match zrow {
                    Some(z) => {
                        let z8 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            z.as_ptr().add(g0 + i) as *const __m128i,
                        )));
                        _mm256_fmadd_ps(sx, z8, zt[r])
                    }
                    None => _mm256_add_ps(sx, zt[r]),
                };
                i += 8;
            }
            while i < gc {
                let s = half::f16::from_bits(scales[g0 + i]).to_f32();
                sbuf[i] = s;
                let sx = s * *xs.add(g0 + i);
                zt_tail[r] += match zrow {
                    Some(z) => sx * f32::from(z[g0 + i]),
                    None => sx,
                };
                i += 1;
            }
        }
        match p.layout.mode {
            Mode::Bcast { bpg } => {
                // Groups made only of tail columns have no block.
                let g_end = (g0 + gc).min(blocks.div_ceil(bpg));
                for g in g0..g_end {
                    let b0 = g * bpg;
                    let b1 = (b0 + bpg).min(blocks);
                    let d = if b1 - b0 == 1 {
                        block_dot::<D, R>(&load_blocks::<D, R>(bases, b0, pf), xp, b0)
                    } else {
                        group_dot::<D, R>(bases, xp, b0, b1, pf)
                    };
                    for r in 0..R {
                        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(sbuf[r][g - g0]), d[r], acc[r]);
                    }
                }
            }
            Mode::Lanes { gpb, idx } => {
                let idx = _mm256_loadu_si256(idx.as_ptr() as *const __m256i);
                let (b_start, b_end) = (g0 / gpb, ((g0 + gc) / gpb).min(blocks));
                if b_start < b_end {
                    // Software-pipelined: block b + 1 is loaded while block b is computed.
                    let mut next = load_blocks::<D, R>(bases, b_start, pf);
                    for b in b_start..b_end {
                        let raw = next;
                        next = load_blocks::<D, R>(bases, (b + 1).min(b_end - 1), pf);
                        let d = block_dot::<D, R>(&raw, xp, b);
                        for r in 0..R {
                            let s = _mm256_permutevar8x32_ps(
                                _mm256_loadu_ps(sbuf[r].as_ptr().add(b * gpb - g0)),
                                idx,
                            );
                            acc[r] = _mm256_fmadd_ps(s, d[r], acc[r]);
                        }
                    }
                }
            }
        }
        g0 += gc;
    }
    let mut out = [(0f32, 0f32); R];
    for r in 0..R {
        out[r] = (hsum(acc[r]) * pow2(-K_EXP), hsum(zt[r]) + zt_tail[r]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::packed_len;

    #[test]
    fn group_sums_match_portable_bitwise() {
        if !crate::Backend::Avx2.is_available() {
            return;
        }
        let x: Vec<f32> = (0..1003)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        for gs in [1, 5, 8, 32, 100, 1003, 5000] {
            let packed = vec![0u8; packed_len(1003, 8)];
            let scales = vec![0u16; 1003_usize.div_ceil(gs)];
            let w =
                PackedMatrix::new(8, 1, 1003, gs, &packed, &scales, Zeros::Constant(0)).unwrap();
            let a = crate::gemv::group_sums(&w, &x);
            // SAFETY: AVX2 checked above.
            let b = unsafe { group_sums_avx2(&w, &x) };
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "group size {gs}");
        }
    }
}
