//! A borrowed view of a packed, group-quantized weight matrix and its dequantization.
//!
//! Element `(r, c)` of the `rows x cols` matrix dequantizes to
//! `scale[r][g] * (code[r][c] - zero[r][g])` with `g = c / group_size`; a row has
//! `ceil(cols / group_size)` groups and the last one may be shorter.

use half::f16;
use rayon::prelude::*;

use crate::error::check_len;
use crate::pack::{check_bits, packed_len, unpack_range};
use crate::KernelError;

/// Zero-points of a [`PackedMatrix`]: one code for the whole matrix or one per (row, group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros<'a> {
    /// The same zero code everywhere (symmetric formats use `2^(bits-1)`).
    Constant(u8),
    /// One zero code per (row, group), indexed `r * n_groups + g` like the scales.
    PerGroup(&'a [u8]),
}

impl Zeros<'_> {
    /// The zero code of row `r`, group `g` in a matrix with `n_groups` groups per row (indices
    /// already validated against the matrix).
    #[inline]
    pub(crate) fn get(&self, r: usize, g: usize, n_groups: usize) -> u8 {
        match self {
            Zeros::Constant(z) => *z,
            Zeros::PerGroup(z) => z[r * n_groups + g],
        }
    }
}

/// A validated, borrowed view of a quantized weight matrix `W [rows x cols]`: packed codes,
/// f16 scales and zero-points, as stored in qpipe's packed checkpoints.
#[derive(Debug, Clone, Copy)]
pub struct PackedMatrix<'a> {
    bits: u32,
    rows: usize,
    cols: usize,
    group_size: usize,
    n_groups: usize,
    row_bytes: usize,
    packed: &'a [u8],
    scales: &'a [u16],
    zeros: Zeros<'a>,
}

impl<'a> PackedMatrix<'a> {
    /// Checks every length against the shape and returns the view: `packed` holds
    /// `rows * packed_len(cols, bits)` bytes, `scales` (f16 bits) and per-group `zeros` hold
    /// `rows * ceil(cols / group_size)` entries.
    pub fn new(
        bits: u32,
        rows: usize,
        cols: usize,
        group_size: usize,
        packed: &'a [u8],
        scales: &'a [u16],
        zeros: Zeros<'a>,
    ) -> Result<Self, KernelError> {
        check_bits(bits)?;
        if group_size == 0 {
            return Err(KernelError::InvalidGroupSize(group_size));
        }
        let n_groups = cols.div_ceil(group_size);
        let row_bytes = packed_len(cols, bits);
        let expect = |what: &'static str, per_row: usize, actual: usize| {
            let expected = rows
                .checked_mul(per_row)
                .ok_or(KernelError::SizeOverflow(what))?;
            check_len(what, expected, actual)
        };
        expect("packed", row_bytes, packed.len())?;
        expect("scales", n_groups, scales.len())?;
        if let Zeros::PerGroup(z) = zeros {
            expect("zeros", n_groups, z.len())?;
        }
        rows.checked_mul(cols)
            .ok_or(KernelError::SizeOverflow("rows * cols"))?;
        Ok(PackedMatrix {
            bits,
            rows,
            cols,
            group_size,
            n_groups,
            row_bytes,
            packed,
            scales,
            zeros,
        })
    }

    /// Number of rows (outputs of `W x`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs of `W x`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bits per code.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Columns per quantization group (the last group of a row may be shorter).
    pub fn group_size(&self) -> usize {
        self.group_size
    }

    /// Groups per row: `ceil(cols / group_size)`.
    pub fn n_groups(&self) -> usize {
        self.n_groups
    }

    /// Bytes per packed row: `packed_len(cols, bits)`.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// All packed codes, row after row.
    pub fn packed(&self) -> &'a [u8] {
        self.packed
    }

    /// All scales as f16 bit patterns, indexed `r * n_groups + g`.
    pub fn scales(&self) -> &'a [u16] {
        self.scales
    }

    /// The zero-points.
    pub fn zeros(&self) -> Zeros<'a> {
        self.zeros
    }

    /// Total bytes of codes, scales and per-group zeros this view reads (what a GEMV streams).
    pub fn storage_bytes(&self) -> usize {
        let z = match self.zeros {
            Zeros::Constant(_) => 0,
            Zeros::PerGroup(z) => z.len(),
        };
        self.packed.len() + 2 * self.scales.len() + z
    }

    /// Packed bytes of row `r` (caller guarantees `r < rows`).
    pub(crate) fn row_codes(&self, r: usize) -> &'a [u8] {
        &self.packed[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Scale of row `r`, group `g` as f32.
    #[inline]
    pub(crate) fn scale(&self, r: usize, g: usize) -> f32 {
        f16::from_bits(self.scales[r * self.n_groups + g]).to_f32()
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    ///
    /// # Panics
    /// If `r >= rows` or `out.len() != cols`; [`Self::try_dequantize_row`] returns an error
    /// instead.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if let Err(e) = self.try_dequantize_row(r, out) {
            panic!("PackedMatrix::dequantize_row: {e}");
        }
    }

    /// Dequantizes row `r` into `out` (`cols` values), rejecting a bad row or length.
    pub fn try_dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if r >= self.rows {
            return Err(KernelError::RowOutOfRange {
                row: r,
                rows: self.rows,
            });
        }
        if out.len() != self.cols {
            return Err(KernelError::LengthMismatch {
                what: "dequantized row",
                expected: self.cols,
                actual: out.len(),
            });
        }
        self.dequantize_row_into(r, out);
        Ok(())
    }

    /// Dequantizes the whole matrix into `out` (`rows * cols` values, row-major), in parallel
    /// over rows.
    ///
    /// # Panics
    /// If `out.len() != rows * cols`; [`Self::try_dequantize`] returns an error instead.
    pub fn dequantize(&self, out: &mut [f32]) {
        if let Err(e) = self.try_dequantize(out) {
            panic!("PackedMatrix::dequantize: {e}");
        }
    }

    /// Dequantizes the whole matrix into `out` (`rows * cols` values, row-major), rejecting a
    /// bad length.
    pub fn try_dequantize(&self, out: &mut [f32]) -> Result<(), KernelError> {
        let n = self.rows * self.cols; // cannot overflow: checked in `new`
        if out.len() != n {
            return Err(KernelError::LengthMismatch {
                what: "dequantized matrix",
                expected: n,
                actual: out.len(),
            });
        }
        if n == 0 {
            return Ok(());
        }
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, row)| self.dequantize_row_into(r, row));
        Ok(())
    }

    /// Dequantizes row `r` into `out`; `r` and `out.len() == cols` are already checked.
    pub(crate) fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        let row = self.row_codes(r);
        let mut codes = [0u8; 256];
        for g in 0..self.n_groups {
            let s = self.scale(r, g);
            let z = f32::from(self.zeros.get(r, g, self.n_groups));
            let g_end = ((g + 1) * self.group_size).min(self.cols);
            let mut c = g * self.group_size;
            while c < g_end {
                let n = (g_end - c).min(codes.len());
                unpack_range(row, self.bits, c, &mut codes[..n]);
                for (o, &q) in out[c..c + n].iter_mut().zip(&codes[..n]) {
                    *o = s * (f32::from(q) - z);
                }
                c += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::pack;

    #[test]
    fn dequantize_matches_formula() {
        let (rows, cols, gs, bits) = (3usize, 10usize, 4usize, 3u32);
        let n_groups = 3;
        let codes: Vec<u8> = (0..rows * cols).map(|i| (i * 5 % 8) as u8).collect();
        let rb = packed_len(cols, bits);
        let mut packed = vec![0u8; rows * rb];
        for r in 0..rows {
            pack(
                &codes[r * cols..(r + 1) * cols],
                bits,
                &mut packed[r * rb..(r + 1) * rb],
            )
            .unwrap();
        }
        let scales: Vec<u16> = (0..rows * n_groups)
            .map(|i| f16::from_f32(0.5 + i as f32 * 0.25).to_bits())
            .collect();
        let zeros: Vec<u8> = (0..rows * n_groups).map(|i| (i % 8) as u8).collect();
        for zs in [Zeros::Constant(4), Zeros::PerGroup(&zeros)] {
            let m = PackedMatrix::new(bits, rows, cols, gs, &packed, &scales, zs).unwrap();
            assert_eq!(m.n_groups(), n_groups);
            let mut out = vec![0f32; rows * cols];
            m.dequantize(&mut out);
            for r in 0..rows {
                for c in 0..cols {
                    let g = c / gs;
                    let s = f16::from_bits(scales[r * n_groups + g]).to_f32();
                    let z = zs.get(r, g, n_groups) as f32;
                    assert_eq!(out[r * cols + c], s * (codes[r * cols + c] as f32 - z));
                }
            }
            let mut row = vec![0f32; cols];
            m.dequantize_row(2, &mut row);
            assert_eq!(row, &out[2 * cols..]);
        }
    }

    #[test]
    fn new_rejects_bad_shapes() {
        let packed = [0u8; 8];
        let scales = [0u16; 4];
        let ok = PackedMatrix::new(4, 2, 8, 4, &packed, &scales, Zeros::Constant(8));
        assert!(ok.is_ok());
        assert_eq!(
            PackedMatrix::new(7, 2, 8, 4, &packed, &scales, Zeros::Constant(8)).unwrap_err(),
            KernelError::UnsupportedBits(7)
        );
        assert_eq!(
            PackedMatrix::new(4, 2, 8, 0, &packed, &scales, Zeros::Constant(8)).unwrap_err(),
            KernelError::InvalidGroupSize(0)
        );
        assert!(matches!(
            PackedMatrix::new(4, 2, 8, 4, &packed[..7], &scales, Zeros::Constant(8)),
            Err(KernelError::LengthMismatch { what: "packed", .. })
        ));
        assert!(matches!(
            PackedMatrix::new(4, 2, 8, 4, &packed, &scales[..3], Zeros::Constant(8)),
            Err(KernelError::LengthMismatch { what: "scales", .. })
        ));
        assert!(matches!(
            PackedMatrix::new(4, 2, 8, 4, &packed, &scales, Zeros::PerGroup(&[0; 5])),
            Err(KernelError::LengthMismatch { what: "zeros", .. })
        ));
        assert!(matches!(
            PackedMatrix::new(8, usize::MAX, 2, 2, &packed, &scales, Zeros::Constant(0)),
            Err(KernelError::SizeOverflow(_))
        ));
        let m = ok.unwrap();
        assert!(matches!(
            m.try_dequantize_row(2, &mut [0f32; 8]),
            Err(KernelError::RowOutOfRange { row: 2, rows: 2 })
        ));
        assert!(matches!(
            m.try_dequantize_row(0, &mut [0f32; 7]),
            Err(KernelError::LengthMismatch { .. })
        ));
        assert!(matches!(
            m.try_dequantize(&mut [0f32; 15]),
            Err(KernelError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn empty_shapes() {
        let m = PackedMatrix::new(4, 0, 5, 32, &[], &[], Zeros::Constant(8)).unwrap();
        m.dequantize(&mut []);
        let m = PackedMatrix::new(4, 3, 0, 32, &[], &[], Zeros::Constant(8)).unwrap();
        assert_eq!(m.n_groups(), 0);
        m.dequantize(&mut []);
        m.dequantize_row(1, &mut []);
    }
}
