//! Block decoders: one 32-byte (2, 4, 8 bits) or shuffled (3, 5, 6 bits) load turned into
//! vectors of f32 codes, each lane's codes masked in place.

use std::arch::x86_64::*;

/// Decodes one block of `8 * NV` codes into `NV` vectors of eight f32 codes.
pub(super) trait Decode {
    /// Bits per code.
    const BITS: usize;
    /// Vectors per block; also the number of codes per 32-bit lane.
    const NV: usize;
    /// Codes per block.
    const CODES: usize = 8 * Self::NV;
    /// Packed bytes per block.
    const BYTES: usize = Self::CODES * Self::BITS / 8;
    /// Bytes `load` reads from its pointer (at least `BYTES`).
    const READ: usize;
    /// Lane `j` of vector `k` holds `code << shift(k, j)`.
    fn shift(k: usize, j: usize) -> i32;
    /// Loads the block at `p` (`p..p + READ` must be readable) with each lane's codes in place.
    unsafe fn load(p: *const u8) -> __m256i;
    /// Vector `k` of a loaded block as f32 (`k` is a constant after unrolling).
    unsafe fn code(raw: __m256i, k: usize) -> __m256;
}

/// Column (within its block) of lane `j` of vector `k`: lane `j` holds codes `NV*j ..`.
#[cfg(test)]
fn col<D: Decode>(k: usize, j: usize) -> usize {
    D::NV * j + k
}

/// Code `k` of every lane: masked in place by `(2^BITS - 1) << (BITS * k)`, except the last
/// one (`k == NV - 1`), shifted down by `TOP = 32 - BITS` since its mask would set the sign bit.
#[inline(always)]
unsafe fn masked_code<const BITS: i32, const NV: usize, const TOP: i32>(
    raw: __m256i,
    k: usize,
) -> __m256 {
    let v = if k + 1 == NV {
        _mm256_srli_epi32::<TOP>(raw)
    } else {
        _mm256_and_si256(
            raw,
            _mm256_set1_epi32(((1 << BITS) - 1) << (BITS * k as i32)),
        )
    };
    _mm256_cvtepi32_ps(v)
}

/// 8-bit: lane `j` holds codes `4j .. 4j + 4` (four bytes).
pub(super) struct D8;
impl Decode for D8 {
    const BITS: usize = 8;
    const NV: usize = 4;
    const READ: usize = 32;
    fn shift(k: usize, _: usize) -> i32 {
        if k == 3 {
            0
        } else {
            8 * k as i32
        }
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn code(raw: __m256i, k: usize) -> __m256 {
        masked_code::<8, 4, 24>(raw, k)
    }
}

/// 4-bit: lane `j` holds codes `8j .. 8j + 8` (four bytes, two nibbles each).
pub(super) struct D4;
impl Decode for D4 {
    const BITS: usize = 4;
    const NV: usize = 8;
    const READ: usize = 32;
    fn shift(k: usize, _: usize) -> i32 {
        if k == 7 {
            0
        } else {
            4 * k as i32
        }
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn code(raw: __m256i, k: usize) -> __m256 {
        masked_code::<4, 8, 28>(raw, k)
    }
}

/// 2-bit: lane `j` holds codes `16j .. 16j + 16` (four bytes, four codes each).
pub(super) struct D2;
impl Decode for D2 {
    const BITS: usize = 2;
    const NV: usize = 16;
    const READ: usize = 32;
    fn shift(k: usize, _: usize) -> i32 {
        if k == 15 {
            0
        } else {
            2 * k as i32
        }
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn code(raw: __m256i, k: usize) -> __m256 {
        masked_code::<2, 16, 30>(raw, k)
    }
}

/// 3, 5 and 6 bits, 32 codes per block: a byte shuffle gives 32-bit lane `j` the bytes holding
/// codes `4j .. 4j + 4` (`4 * B` bits from bit `4 * B * j`), then each code is masked in place.
pub(super) struct Shuf<const B: usize>;
impl<const B: usize> Shuf<B> {
    /// Bit offset of lane `j`'s first code inside its first byte.
    const fn lane_off(j: usize) -> usize {
        (4 * B * (j % 4)) % 8
    }
    /// `vpshufb` control: lane `j` of each 128-bit half takes bytes `start..start + 4`.
    const CTRL: [u8; 32] = {
        let mut c = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            let (jj, t) = ((i % 16) / 4, i % 4);
            c[i] = ((4 * B * jj) / 8 + t) as u8;
            i += 1;
        }
        c
    };
    /// Mask of code `k` in each lane.
    const MASKS: [[i32; 8]; 4] = {
        let mut m = [[0i32; 8]; 4];
        let mut k = 0;
        while k < 4 {
            let mut j = 0;
            while j < 8 {
                m[k][j] = (((1usize << B) - 1) << (B * k + Self::lane_off(j))) as i32;
                j += 1;
            }
            k += 1;
        }
        m
    };
}
impl<const B: usize> Decode for Shuf<B> {
    const BITS: usize = B;
    const NV: usize = 4;
    const READ: usize = 2 * B + 16;
    fn shift(k: usize, j: usize) -> i32 {
        (B * k + Self::lane_off(j)) as i32
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // Lanes 4..8 start 16*B bits = 2*B bytes later, with the same in-lane layout.
        let both = _mm256_loadu2_m128i(p.add(2 * B) as *const __m128i, p as *const __m128i);
        let ctrl = _mm256_loadu_si256(Self::CTRL.as_ptr() as *const __m256i);
        _mm256_shuffle_epi8(both, ctrl)
    }
    #[inline(always)]
    unsafe fn code(raw: __m256i, k: usize) -> __m256 {
        let m = _mm256_loadu_si256(Self::MASKS[k].as_ptr() as *const __m256i);
        _mm256_cvtepi32_ps(_mm256_and_si256(raw, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avx2::pow2;
    use crate::pack::{pack, packed_len};

    /// Decodes one block of random codes and checks every lane against `col` and `shift`.
    fn check_decoder<D: Decode>() {
        let bits = D::BITS as u32;
        let codes: Vec<u8> = (0..D::CODES)
            .map(|i| ((i * 7 + 3) % (1 << bits)) as u8)
            .collect();
        let mut packed = vec![0u8; packed_len(D::CODES, bits) + 64];
        pack(&codes, bits, &mut packed[..D::BYTES]).unwrap();
        let mut lanes = [0f32; 8];
        for k in 0..D::NV {
            // SAFETY: AVX2 is checked below; `packed` has READ bytes past the block start.
            unsafe {
                let v = D::code(D::load(packed.as_ptr()), k);
                _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            }
            for (j, &l) in lanes.iter().enumerate() {
                let want = f32::from(codes[col::<D>(k, j)]) * pow2(D::shift(k, j));
                assert_eq!(l, want, "bits {bits} k {k} j {j}");
            }
        }
    }

    #[test]
    fn decoders_match_layout() {
        if !crate::Backend::Avx2.is_available() {
            return;
        }
        check_decoder::<D2>();
        check_decoder::<Shuf<3>>();
        check_decoder::<D4>();
        check_decoder::<Shuf<5>>();
        check_decoder::<Shuf<6>>();
        check_decoder::<D8>();
    }
}
