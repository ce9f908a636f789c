//! AVX2 + FMA + F16C kernels (x86-64). Every `unsafe fn` here requires those CPU features;
//! `crate::gemv` calls them only after run-time detection.
//!
//! A row is processed in *blocks* of `8 * NV` codes that one [`Decode`] turns into `NV`
//! vectors of eight f32 codes. For 2, 4 and 8 bits a block is one 32-byte load: 32-bit lane `j`
//! holds codes `NV*j .. NV*j + NV`, and vector `k` is lane-wise code `NV*j + k`, obtained by
//! masking it *in place* (`q << shift`) rather than shifting it down. For 3, 5 and 6 bits a
//! block is 32 codes, spread over the lanes with one byte shuffle. Instead of undoing the
//! permutation and the power-of-two factors per weight, `x` is permuted and rescaled once per
//! call to match (`xp = x * 2^(K - shift)`) and the row sum is scaled by `2^-K`; power-of-two
//! scaling is exact, so this changes no rounding unless `x * 2^(K - shift)` leaves the normal
//! range (|x| below about 1e-34). Columns past the last full block are handled by scalar code.
//!
//! `decode` holds the block decoders, `gemv` the matrix-vector kernel, `gemm` the batched one.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::matrix::PackedMatrix;

mod decode;
mod gemm;
mod gemv;

pub(crate) use gemm::gemm;
pub(crate) use gemv::gemv;

use decode::Decode;

/// Exponent of the extra scale applied to the permuted `x` (keeps `x * 2^(K - shift)` normal).
const K_EXP: i32 = 16;

/// How blocks map onto quantization groups.
#[derive(Clone, Copy)]
enum Mode {
    /// Every block lies inside one group of `bpg` blocks (`group_size` a multiple of the block,
    /// or a single group per row).
    Bcast { bpg: usize },
    /// Every block holds `gpb` whole groups; lane `j` belongs to group `idx[j]` of the block.
    Lanes { gpb: usize, idx: [i32; 8] },
}

/// Block geometry of a matrix for decoder `D`.
#[derive(Clone, Copy)]
struct Layout {
    /// Full blocks per row.
    blocks: usize,
    mode: Mode,
}

impl Layout {
    /// The layout, or `None` when groups and blocks do not nest (no standard format).
    fn new<D: Decode>(w: &PackedMatrix) -> Option<Layout> {
        let (gs, ng) = (w.group_size(), w.n_groups());
        let blocks = w.cols() / D::CODES;
        let mode = if ng <= 1 {
            Mode::Bcast { bpg: blocks.max(1) }
        } else if gs % D::CODES == 0 {
            Mode::Bcast { bpg: gs / D::CODES }
        } else if D::CODES % gs == 0 && gs % D::NV == 0 {
            let mut idx = [0i32; 8];
            for (j, v) in idx.iter_mut().enumerate() {
                *v = ((D::NV * j) / gs) as i32;
            }
            Mode::Lanes {
                gpb: D::CODES / gs,
                idx,
            }
        } else {
            return None;
        };
        Some(Layout { blocks, mode })
    }
}

/// Whether every block of row `r` can be loaded in place without reading past `packed`.
fn row_loads_in_bounds<D: Decode>(w: &PackedMatrix, r: usize, blocks: usize) -> bool {
    blocks == 0 || (r * w.row_bytes() + (blocks - 1) * D::BYTES + D::READ) <= w.packed().len()
}

/// `row` followed by 64 zero bytes, so that every block can be decoded in place.
fn padded_copy(row: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; row.len() + 64];
    v[..row.len()].copy_from_slice(row);
    v
}

/// Sum of the eight lanes, in a fixed order.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// `2^e` for the small exponents used here.
fn pow2(e: i32) -> f32 {
    f32::from_bits(((127 + e) as u32) << 23)
}

/// Per-vector-lane table `f(shift(k, j))`, indexed `k * 8 + j`.
fn shift_table<D: Decode>(f: impl Fn(i32) -> f32) -> Vec<f32> {
    let mut t = vec![0f32; D::CODES];
    for k in 0..D::NV {
        for j in 0..8 {
            t[k * 8 + j] = f(D::shift(k, j));
        }
    }
    t
}

/// Transposes an 8x8 matrix held as eight row vectors: lane `j` of output `k` is lane `k` of
/// input `j`.
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Permutes the first `blocks * CODES` columns of `x` into decoder order (lane `j` of vector
/// `k` is column `NV*j + k` of the block), multiplying each by `factor[k * 8 + j]`: the block is
/// an 8 x NV matrix, transposed eight columns at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn permute_x<D: Decode>(
    x: &[f32],
    blocks: usize,
    factor: &[f32],
    out: &mut [MaybeUninit<f32>],
) {
    assert!(x.len() >= blocks * D::CODES && out.len() >= blocks * D::CODES);
    for b in 0..blocks {
        let xb = x.as_ptr().add(b * D::CODES);
        let ob = out.as_mut_ptr().add(b * D::CODES) as *mut f32;
        let mut k0 = 0;
        while k0 < D::NV {
            let mut rows = [_mm256_setzero_ps(); 8];
            for (j, r) in rows.iter_mut().enumerate() {
                let p = xb.add(D::NV * j + k0);
                *r = if D::NV >= 8 {
                    _mm256_loadu_ps(p)
                } else {
                    _mm256_castps128_ps256(_mm_loadu_ps(p))
                };
            }
            let cols = transpose8(rows);
            for (dk, &c) in cols.iter().enumerate().take(D::NV.min(8)) {
                let k = k0 + dk;
                let f = _mm256_loadu_ps(factor.as_ptr().add(8 * k));
                _mm256_storeu_ps(ob.add(8 * k), _mm256_mul_ps(c, f));
            }
            k0 += 8;
        }
    }
}
