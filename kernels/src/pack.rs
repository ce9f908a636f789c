//! Bit packing of unsigned integer codes: the on-disk layout of qpipe's packed checkpoints.
//!
//! # Layout
//!
//! Supported bit widths are 2, 3, 4, 5, 6 and 8; a `b`-bit code is a `u8` in `0..2^b`.
//! A row of `n` codes is one little-endian, LSB-first bit stream: code `i` occupies stream bits
//! `[i*b, (i+1)*b)`, and stream bit `k` is bit `k % 8` of byte `k / 8` (the code's own bits in
//! order, least significant first). A row occupies [`packed_len`]`(n, b) = ceil(n*b / 8)` bytes;
//! unused high bits of the last byte are zero. Rows are packed independently, so every row starts
//! on a byte boundary (a matrix is `rows * packed_len(cols, b)` bytes, row after row).
//!
//! Concretely:
//! - 8-bit: byte `i` is code `i` (identity).
//! - 4-bit: byte `j` is `code[2j] | code[2j+1] << 4`; codes `[1, 2, 3]` pack to `[0x21, 0x03]`.
//! - 2-bit: byte `j` is `code[4j] | code[4j+1] << 2 | code[4j+2] << 4 | code[4j+3] << 6`.
//! - 3-bit: 8 codes in 3 bytes, 5-bit: 8 codes in 5 bytes, 6-bit: 4 codes in 3 bytes; e.g. for
//!   3 bits the 24-bit little-endian word `byte0 | byte1 << 8 | byte2 << 16` equals
//!   `sum_i code[i] << (3*i)` for `i` in `0..8`.

use crate::error::check_len;
use crate::KernelError;

/// The bit widths every function of this crate accepts.
pub const SUPPORTED_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];

/// Returns `Ok(())` when `bits` is one of [`SUPPORTED_BITS`], else `UnsupportedBits`.
pub fn check_bits(bits: u32) -> Result<(), KernelError> {
    if SUPPORTED_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(KernelError::UnsupportedBits(bits))
    }
}

/// Bytes taken by a packed row of `n` codes of `bits` bits: `ceil(n * bits / 8)` (saturating).
pub fn packed_len(n: usize, bits: u32) -> usize {
    let b = bits as usize;
    // Eight codes always take exactly `bits` bytes, so split to avoid overflowing n * bits.
    (n / 8)
        .saturating_mul(b)
        .saturating_add(((n % 8) * b).div_ceil(8))
}

/// Packs `codes` (each `< 2^bits`) into `out`, which must be exactly
/// `packed_len(codes.len(), bits)` bytes long; see the module documentation for the layout.
pub fn pack(codes: &[u8], bits: u32, out: &mut [u8]) -> Result<(), KernelError> {
    check_bits(bits)?;
    check_len("packed output", packed_len(codes.len(), bits), out.len())?;
    if bits < 8 {
        if let Some(index) = codes.iter().position(|&c| c >> bits != 0) {
            return Err(KernelError::CodeOutOfRange {
                index,
                code: codes[index],
                bits,
            });
        }
    }
    match bits {
        8 => out.copy_from_slice(codes),
        4 => {
            let mut chunks = codes.chunks_exact(2);
            for (o, c) in out.iter_mut().zip(&mut chunks) {
                *o = c[0] | c[1] << 4;
            }
            if let [last] = chunks.remainder() {
                out[codes.len() / 2] = *last;
            }
        }
        2 => {
            let mut chunks = codes.chunks_exact(4);
            for (o, c) in out.iter_mut().zip(&mut chunks) {
                *o = c[0] | c[1] << 2 | c[2] << 4 | c[3] << 6;
            }
            let rem = chunks.remainder();
            if !rem.is_empty() {
                out[codes.len() / 4] = rem
                    .iter()
                    .enumerate()
                    .fold(0, |acc, (i, &c)| acc | c << (2 * i));
            }
        }
        _ => {
            // 3, 5, 6 bits: eight codes make exactly `bits` bytes of one u64 word.
            let b = bits as usize;
            let mut chunks = codes.chunks_exact(8);
            for (o, c) in out.chunks_exact_mut(b).zip(&mut chunks) {
                let word = c
                    .iter()
                    .enumerate()
                    .fold(0u64, |acc, (i, &q)| acc | u64::from(q) << (b * i));
                o.copy_from_slice(&word.to_le_bytes()[..b]);
            }
            let rem = chunks.remainder();
            if !rem.is_empty() {
                let word = rem
                    .iter()
                    .enumerate()
                    .fold(0u64, |acc, (i, &q)| acc | u64::from(q) << (b * i));
                let start = (codes.len() / 8) * b;
                let tail = &mut out[start..];
                let n = tail.len();
                tail.copy_from_slice(&word.to_le_bytes()[..n]);
            }
        }
    }
    Ok(())
}

/// Unpacks `out.len()` codes of `bits` bits from `packed`, which must be exactly
/// `packed_len(out.len(), bits)` bytes long (the inverse of [`pack`]).
pub fn unpack(packed: &[u8], bits: u32, out: &mut [u8]) -> Result<(), KernelError> {
    check_bits(bits)?;
    check_len("packed input", packed_len(out.len(), bits), packed.len())?;
    unpack_prefix(packed, bits, out);
    Ok(())
}

/// Unpacks `out.len()` codes from the start of `packed`, which holds at least
/// `packed_len(out.len(), bits)` bytes; `bits` is already validated.
pub(crate) fn unpack_prefix(packed: &[u8], bits: u32, out: &mut [u8]) {
    debug_assert!(packed.len() >= packed_len(out.len(), bits));
    match bits {
        8 => out.copy_from_slice(&packed[..out.len()]),
        4 => {
            let mut chunks = out.chunks_exact_mut(2);
            for (c, &p) in (&mut chunks).zip(packed) {
                c[0] = p & 0xF;
                c[1] = p >> 4;
            }
            let n = out.len();
            if n % 2 == 1 {
                out[n - 1] = packed[n / 2] & 0xF;
            }
        }
        2 => {
            let n = out.len();
            let mut chunks = out.chunks_exact_mut(4);
            for (c, &p) in (&mut chunks).zip(packed) {
                c[0] = p & 3;
                c[1] = (p >> 2) & 3;
                c[2] = (p >> 4) & 3;
                c[3] = p >> 6;
            }
            let rem = chunks.into_remainder();
            if !rem.is_empty() {
                let p = packed[n / 4];
                for (i, c) in rem.iter_mut().enumerate() {
                    *c = (p >> (2 * i)) & 3;
                }
            }
        }
        _ => {
            let b = bits as usize;
            let mask = (1u64 << b) - 1;
            let full = out.len() / 8;
            let mut chunks = out.chunks_exact_mut(8);
            for (i, c) in (&mut chunks).enumerate() {
                let off = i * b;
                // A whole u64 load when the slice allows it, else only the `b` bytes needed.
                let word = match packed.get(off..off + 8) {
                    Some(w) => u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]),
                    None => {
                        let mut w = [0u8; 8];
                        w[..b].copy_from_slice(&packed[off..off + b]);
                        u64::from_le_bytes(w)
                    }
                };
                for (k, q) in c.iter_mut().enumerate() {
                    *q = ((word >> (b * k)) & mask) as u8;
                }
            }
            let rem = chunks.into_remainder();
            if !rem.is_empty() {
                let off = full * b;
                let need = packed_len(rem.len(), bits);
                let mut w = [0u8; 8];
                w[..need].copy_from_slice(&packed[off..off + need]);
                let word = u64::from_le_bytes(w);
                for (k, q) in rem.iter_mut().enumerate() {
                    *q = ((word >> (b * k)) & mask) as u8;
                }
            }
        }
    }
}

/// Unpacks codes `[start, start + out.len())` of a packed row stream whose bytes begin at
/// `row[0]`; `start` need not fall on a byte boundary. `bits` is already validated and `row`
/// must hold at least `packed_len(start + out.len(), bits)` bytes.
pub(crate) fn unpack_range(row: &[u8], bits: u32, start: usize, out: &mut [u8]) {
    let bit0 = start * bits as usize;
    if bit0.is_multiple_of(8) {
        unpack_prefix(&row[bit0 / 8..], bits, out);
        return;
    }
    let b = bits as usize;
    let mask = (1u16 << b) - 1;
    for (i, q) in out.iter_mut().enumerate() {
        let bit = bit0 + i * b;
        let byte = bit / 8;
        let lo = u16::from(row[byte]);
        let hi = row.get(byte + 1).map_or(0, |&h| u16::from(h));
        *q = (((lo | hi << 8) >> (bit % 8)) & mask) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference implementation of the documented layout, one bit at a time.
    fn pack_bitwise(codes: &[u8], bits: u32) -> Vec<u8> {
        let b = bits as usize;
        let mut out = vec![0u8; packed_len(codes.len(), bits)];
        for (i, &c) in codes.iter().enumerate() {
            for t in 0..b {
                let k = i * b + t;
                out[k / 8] |= ((c >> t) & 1) << (k % 8);
            }
        }
        out
    }

    fn random_codes(n: usize, bits: u32, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 32) as u8 & ((1u16 << bits) - 1) as u8
            })
            .collect()
    }

    #[test]
    fn packed_len_matches_ceil() {
        for bits in SUPPORTED_BITS {
            for n in 0..100usize {
                assert_eq!(packed_len(n, bits), (n * bits as usize).div_ceil(8));
            }
        }
        assert_eq!(packed_len(usize::MAX, 8), usize::MAX);
    }

    #[test]
    fn roundtrip_odd_lengths_all_widths() {
        for bits in SUPPORTED_BITS {
            for (seed, n) in [0usize, 1, 2, 3, 7, 8, 9, 15, 31, 33, 64, 100, 257, 1001]
                .into_iter()
                .enumerate()
            {
                let codes = random_codes(n, bits, seed as u64 + 1);
                let mut packed = vec![0xAA; packed_len(n, bits)];
                pack(&codes, bits, &mut packed).unwrap();
                assert_eq!(packed, pack_bitwise(&codes, bits), "bits {bits} n {n}");
                let mut back = vec![0xFF; n];
                unpack(&packed, bits, &mut back).unwrap();
                assert_eq!(back, codes, "bits {bits} n {n}");
            }
        }
    }

    #[test]
    fn known_bytes_4bit() {
        let mut out = [0u8; 2];
        pack(&[1, 2, 3], 4, &mut out).unwrap();
        assert_eq!(out, [0x21, 0x03]);
    }

    #[test]
    fn known_bytes_2bit() {
        let mut out = [0u8; 2];
        pack(&[1, 2, 3, 0, 3], 2, &mut out).unwrap();
        // 1 | 2<<2 | 3<<4 | 0<<6 = 0b0011_1001, then 3.
        assert_eq!(out, [0x39, 0x03]);
    }

    #[test]
    fn known_bytes_3bit() {
        // Codes 1..=7, 0: stream = 001 010 011 100 101 110 111 000 (LSB first per code).
        // 24-bit word = sum c_i << 3i = 0o07654321 = 0x1F58D1 -> bytes D1 58 1F.
        let mut out = [0u8; 3];
        pack(&[1, 2, 3, 4, 5, 6, 7, 0], 3, &mut out).unwrap();
        assert_eq!(out, [0xD1, 0x58, 0x1F]);
        // A lone code straddling nothing; two codes straddle byte 0 -> 1 at code 2.
        let mut out = [0u8; 2];
        pack(&[7, 0, 7], 3, &mut out).unwrap();
        // bits 0..2 = 111, bits 6..8 = 111 -> byte0 = 0b1100_0111, byte1 = 0b0000_0001.
        assert_eq!(out, [0xC7, 0x01]);
    }

    #[test]
    fn known_bytes_5bit_6bit_8bit() {
        let mut out = [0u8; 2];
        pack(&[31, 1], 5, &mut out).unwrap();
        // 11111 then 10000 -> byte0 = 0b0011_1111, byte1 = 0b0000_0000.
        assert_eq!(out, [0x3F, 0x00]);
        let mut out = [0u8; 3];
        pack(&[1, 2, 3, 63], 6, &mut out).unwrap();
        // word = 1 | 2<<6 | 3<<12 | 63<<18 = 0xFC3081 -> 81 30 FC.
        assert_eq!(out, [0x81, 0x30, 0xFC]);
        let mut out = [0u8; 3];
        pack(&[0, 200, 255], 8, &mut out).unwrap();
        assert_eq!(out, [0, 200, 255]);
    }

    #[test]
    fn errors() {
        let mut out = [0u8; 4];
        assert_eq!(
            pack(&[1, 2], 7, &mut out[..2]),
            Err(KernelError::UnsupportedBits(7))
        );
        assert_eq!(
            unpack(&out[..1], 1, &mut [0u8; 2]),
            Err(KernelError::UnsupportedBits(1))
        );
        assert_eq!(
            pack(&[1, 2, 3], 4, &mut out[..3]),
            Err(KernelError::LengthMismatch {
                what: "packed output",
                expected: 2,
                actual: 3
            })
        );
        assert_eq!(
            pack(&[1, 16, 3], 4, &mut out[..2]),
            Err(KernelError::CodeOutOfRange {
                index: 1,
                code: 16,
                bits: 4
            })
        );
        assert_eq!(
            pack(&[4], 2, &mut out[..1]),
            Err(KernelError::CodeOutOfRange {
                index: 0,
                code: 4,
                bits: 2
            })
        );
        assert!(matches!(
            unpack(&out[..3], 3, &mut [0u8; 9]),
            Err(KernelError::LengthMismatch { .. })
        ));
        assert!(unpack(&out[..4], 3, &mut [0u8; 9]).is_ok());
        assert!(pack(&[], 3, &mut []).is_ok());
        assert!(unpack(&[], 6, &mut []).is_ok());
    }

    #[test]
    fn unpack_range_any_offset() {
        for bits in SUPPORTED_BITS {
            let codes = random_codes(203, bits, 99);
            let packed = pack_bitwise(&codes, bits);
            for start in [0usize, 1, 3, 5, 8, 13, 100, 199] {
                for len in [0usize, 1, 4, 9] {
                    if start + len > codes.len() {
                        continue;
                    }
                    let mut out = vec![0u8; len];
                    unpack_range(&packed, bits, start, &mut out);
                    assert_eq!(out, &codes[start..start + len], "bits {bits} {start}+{len}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn prop_roundtrip(
            bits_idx in 0usize..6,
            raw in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let bits = SUPPORTED_BITS[bits_idx];
            let mask = ((1u16 << bits) - 1) as u8;
            let codes: Vec<u8> = raw.iter().map(|&c| c & mask).collect();
            let mut packed = vec![0u8; packed_len(codes.len(), bits)];
            pack(&codes, bits, &mut packed).unwrap();
            prop_assert_eq!(&packed, &pack_bitwise(&codes, bits));
            let mut back = vec![0u8; codes.len()];
            unpack(&packed, bits, &mut back).unwrap();
            prop_assert_eq!(back, codes);
        }
    }
}
