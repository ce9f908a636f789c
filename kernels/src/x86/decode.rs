//! Block decoders: one load (2, 4, 8 bits) or one shuffled load (3, 5, 6 bits) turned into
//! vectors of f32 codes, each lane's codes masked in place.

use super::isa::Isa;

/// Decodes one block of `LANES * NV` codes into `NV` vectors of `LANES` f32 codes.
pub(super) trait Decode<S: Isa> {
    /// Bits per code.
    const BITS: usize;
    /// Vectors per block; also the number of codes per 32-bit lane.
    const NV: usize;
    /// Codes per block.
    const CODES: usize = S::LANES * Self::NV;
    /// Packed bytes per block.
    const BYTES: usize = Self::CODES * Self::BITS / 8;
    /// Bytes `load` reads from its pointer (at least `BYTES`).
    const READ: usize;
    /// Lane `j` of vector `k` holds `code << shift(k, j)`.
    fn shift(k: usize, j: usize) -> i32;
    /// Loads the block at `p` (`p..p + READ` must be readable) with each lane's codes in place.
    unsafe fn load(p: *const u8) -> S::I;
    /// Vector `k` of a loaded block as f32 (`k` is a constant after unrolling).
    unsafe fn code(raw: S::I, k: usize) -> S::F;
}

/// `2^e` for the small exponents used here (the factor of a lane's `shift`).
pub(super) fn pow2(e: i32) -> f32 {
    f32::from_bits(((127 + e) as u32) << 23)
}

/// Column (within its block) of lane `j` of vector `k`: lane `j` holds codes `NV*j ..`.
#[cfg(test)]
fn col<S: Isa, D: Decode<S>>(k: usize, j: usize) -> usize {
    D::NV * j + k
}

/// 2, 4 and 8 bits: a block is one full-width load, and 32-bit lane `j` holds the `32 / B`
/// codes `NV*j ..` (the packed stream's own order). Code `k` is masked in place by
/// `(2^B - 1) << (B * k)`, except the last one, shifted down by `32 - B` since its mask would
/// set the sign bit.
pub(super) struct Masked<const B: usize>;
pub(super) type D2 = Masked<2>;
pub(super) type D4 = Masked<4>;
pub(super) type D8 = Masked<8>;

impl<S: Isa, const B: usize> Decode<S> for Masked<B> {
    const BITS: usize = B;
    const NV: usize = 32 / B;
    const READ: usize = 4 * S::LANES;
    fn shift(k: usize, _: usize) -> i32 {
        if k + 1 == 32 / B {
            0
        } else {
            (B * k) as i32
        }
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> S::I {
        S::load_i(p)
    }
    #[inline(always)]
    unsafe fn code(raw: S::I, k: usize) -> S::F {
        let v = if k + 1 == 32 / B {
            S::shr_i(raw, (32 - B) as i32)
        } else {
            S::and_i(raw, S::splat_i(((1 << B) - 1) << (B * k)))
        };
        S::to_f32(v)
    }
}

/// 3, 5 and 6 bits, four codes per lane: a byte shuffle gives 32-bit lane `j` the bytes holding
/// codes `4j .. 4j + 4` (`4 * B` bits from bit `4 * B * j`), then each code is masked in place.
/// Each 128-bit chunk (four lanes, sixteen codes) is loaded from its own `2 * B` bytes.
pub(super) struct Shuf<const B: usize>;
impl<const B: usize> Shuf<B> {
    /// Bit offset of lane `j`'s first code inside its first byte.
    const fn lane_off(j: usize) -> usize {
        (4 * B * (j % 4)) % 8
    }
    /// `vpshufb` control: lane `j` of each 128-bit chunk takes bytes `start..start + 4`.
    const CTRL: [u8; 64] = {
        let mut c = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            let (jj, t) = ((i % 16) / 4, i % 4);
            c[i] = ((4 * B * jj) / 8 + t) as u8;
            i += 1;
        }
        c
    };
    /// Mask of code `k` in each lane.
    const MASKS: [[i32; 16]; 4] = {
        let mut m = [[0i32; 16]; 4];
        let mut k = 0;
        while k < 4 {
            let mut j = 0;
            while j < 16 {
                m[k][j] = (((1usize << B) - 1) << (B * k + Self::lane_off(j))) as i32;
                j += 1;
            }
            k += 1;
        }
        m
    };
}
impl<S: Isa, const B: usize> Decode<S> for Shuf<B> {
    const BITS: usize = B;
    const NV: usize = 4;
    const READ: usize = (S::LANES / 4 - 1) * 2 * B + 16;
    fn shift(k: usize, j: usize) -> i32 {
        (B * k + Self::lane_off(j)) as i32
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> S::I {
        S::shuffle_bytes(S::load_chunks(p, 2 * B), S::load_i(Self::CTRL.as_ptr()))
    }
    #[inline(always)]
    unsafe fn code(raw: S::I, k: usize) -> S::F {
        S::to_f32(S::and_i(
            raw,
            S::load_i(Self::MASKS[k].as_ptr() as *const u8),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::pack::{pack, packed_len};
    use crate::x86::isa::{Job, V256, V512};
    use std::marker::PhantomData;

    /// Vector `k` of the block at `p`.
    struct DecodeOne<S, D> {
        p: *const u8,
        k: usize,
        isa: PhantomData<(S, D)>,
    }
    impl<S: Isa, D: Decode<S>> Job for DecodeOne<S, D> {
        type Out = [f32; 16];
        #[inline(always)]
        unsafe fn run(self) -> [f32; 16] {
            let mut lanes = [0f32; 16];
            S::store(lanes.as_mut_ptr(), D::code(D::load(self.p), self.k));
            lanes
        }
    }

    /// Decodes one block of codes and checks every lane against `col` and `shift`.
    fn check_decoder<S: Isa, D: Decode<S>>() {
        let bits = D::BITS as u32;
        let codes: Vec<u8> = (0..D::CODES)
            .map(|i| ((i * 7 + 3) % (1 << bits)) as u8)
            .collect();
        let mut packed = vec![0u8; packed_len(D::CODES, bits) + 64];
        pack(&codes, bits, &mut packed[..D::BYTES]).unwrap();
        for k in 0..D::NV {
            let job = DecodeOne::<S, D> {
                p: packed.as_ptr(),
                k,
                isa: PhantomData,
            };
            // SAFETY: the caller checked the features; `packed` has READ bytes past the start.
            let lanes = unsafe { S::enter(job) };
            for (j, &l) in lanes[..S::LANES].iter().enumerate() {
                let want = f32::from(codes[col::<S, D>(k, j)]) * pow2(D::shift(k, j));
                assert_eq!(l, want, "{} lanes, bits {bits} k {k} j {j}", S::LANES);
            }
        }
    }

    fn check_all<S: Isa>() {
        check_decoder::<S, D2>();
        check_decoder::<S, Shuf<3>>();
        check_decoder::<S, D4>();
        check_decoder::<S, Shuf<5>>();
        check_decoder::<S, Shuf<6>>();
        check_decoder::<S, D8>();
    }

    #[test]
    fn decoders_match_layout() {
        if Backend::Avx2.is_available() {
            check_all::<V256>();
        }
        if Backend::Avx512.is_available() {
            check_all::<V512>();
        }
    }
}
