//! How a row's blocks line up with its quantization groups, the permuted and rescaled `x` that
//! matches the decoders' lane order, and the loads of rows and group parameters the kernels
//! share (the scheme is described in [`super`]).

use super::decode::{self, Decode};
use super::isa::Isa;
use crate::matrix::PackedMatrix;

/// Exponent of the extra scale applied to the permuted `x` (keeps `x * 2^(K - shift)` normal).
pub(super) const K_EXP: i32 = 16;

/// How blocks map onto quantization groups.
#[derive(Clone, Copy)]
pub(super) enum Mode {
    /// Every block lies inside one group of `bpg` blocks (`group_size` a multiple of the block,
    /// or a single group per row).
    Bcast { bpg: usize },
    /// Every block holds `gpb` whole groups; lane `j` belongs to group `idx[j]` of the block.
    Lanes { gpb: usize, idx: [i32; 16] },
}

/// Block geometry of a matrix for decoder `D`.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    /// Blocks per row, the last one possibly partial.
    pub(super) blocks: usize,
    pub(super) mode: Mode,
}

impl Layout {
    /// The layout, or `None` when groups and blocks do not nest (no standard format).
    pub(super) fn new<S: Isa, D: Decode<S>>(w: &PackedMatrix) -> Option<Layout> {
        Self::of::<S, D>(w.cols(), w.group_size())
    }

    /// The layout of rows of `cols` codes in groups of `gs` (> 0).
    fn of<S: Isa, D: Decode<S>>(cols: usize, gs: usize) -> Option<Layout> {
        let ng = cols.div_ceil(gs);
        let blocks = cols.div_ceil(D::CODES);
        let mode = if ng <= 1 {
            Mode::Bcast { bpg: blocks.max(1) }
        } else if gs.is_multiple_of(D::CODES) {
            Mode::Bcast { bpg: gs / D::CODES }
        } else if D::CODES % gs == 0 && gs.is_multiple_of(D::NV) {
            let mut idx = [0i32; 16];
            for (j, v) in idx.iter_mut().enumerate().take(S::LANES) {
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

    /// Columns covered by the blocks (at least `cols`).
    pub(super) fn padded_cols<S: Isa, D: Decode<S>>(&self) -> usize {
        self.blocks * D::CODES
    }
}

/// Columns per row the vector code at width `S` works through (see
/// [`crate::gemv::covered_cols`]); `cols` where the portable code runs.
pub(crate) fn covered_cols<S: Isa>(bits: u32, group_size: usize, cols: usize) -> usize {
    fn of<S: Isa, D: Decode<S>>(group_size: usize, cols: usize) -> usize {
        Layout::of::<S, D>(cols, group_size.max(1)).map_or(cols, |l| l.padded_cols::<S, D>())
    }
    match bits {
        2 => of::<S, decode::D2>(group_size, cols),
        3 => of::<S, decode::Shuf<3>>(group_size, cols),
        4 => of::<S, decode::D4>(group_size, cols),
        5 => of::<S, decode::Shuf<5>>(group_size, cols),
        6 => of::<S, decode::Shuf<6>>(group_size, cols),
        _ => of::<S, decode::D8>(group_size, cols),
    }
}

/// Start of row `r`'s codes for in-place block loads: the matrix itself when every block's
/// `READ` bytes stay inside it, else a copy of the row followed by 64 zero bytes (kept alive in
/// `copy`).
pub(super) fn row_base<S: Isa, D: Decode<S>>(
    w: &PackedMatrix,
    r: usize,
    blocks: usize,
    copy: &mut Vec<u8>,
) -> *const u8 {
    let row = w.row_codes(r);
    let in_bounds =
        blocks == 0 || (r * w.row_bytes() + (blocks - 1) * D::BYTES + D::READ) <= w.packed().len();
    if in_bounds {
        row.as_ptr()
    } else {
        copy.clear();
        copy.extend_from_slice(row);
        copy.resize(row.len() + 64, 0);
        copy.as_ptr()
    }
}

/// Zero-initialised f32s starting on a 64-byte boundary, so that full-width loads of them
/// never straddle two cache lines (split loads cost AVX-512 GEMV about a fifth of its speed).
pub(super) struct AlignedF32 {
    buf: Vec<f32>,
    off: usize,
    len: usize,
}

impl AlignedF32 {
    pub(super) fn zeros(len: usize) -> Self {
        let buf = vec![0f32; len + 15];
        let off = buf.as_ptr().align_offset(64).min(15);
        AlignedF32 { buf, off, len }
    }

    pub(super) fn as_slice(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// Scales (and zero-points, if per group) of groups `g .. g + LANES` as f32, from `scales`
/// and `zeros` running from a row's first group to the end of the matrix. Past the row's
/// `ng` groups the lanes hold the next row's (finite) values, which callers meet with zeros;
/// only the matrix's last rows take zero-padded copies. A scalar f16 conversion per group,
/// or copies for every row, cost the short rows of small models ~25 ns each.
#[inline(always)]
pub(super) unsafe fn group_params<S: Isa>(
    scales: &[u16],
    zeros: Option<&[u8]>,
    g: usize,
    ng: usize,
) -> (S::F, Option<S::F>) {
    if g + S::LANES <= scales.len() {
        let z = zeros.map(|z| S::load_u8(z.as_ptr().add(g)));
        (S::load_f16(scales.as_ptr().add(g)), z)
    } else {
        // `scales` runs to the end of the matrix, so it holds all `ng` groups of the row.
        let n = ng - g;
        let (mut sp, mut zp) = ([0u16; 16], [0u8; 16]);
        sp[..n].copy_from_slice(&scales[g..g + n]);
        let z = zeros.map(|z| {
            zp[..n].copy_from_slice(&z[g..g + n]);
            S::load_u8(zp.as_ptr())
        });
        (S::load_f16(sp.as_ptr()), z)
    }
}

/// Per-vector-lane table `f(shift(k, j))`, indexed `k * LANES + j`.
pub(super) fn shift_table<S: Isa, D: Decode<S>>(f: impl Fn(i32) -> f32) -> Vec<f32> {
    let mut t = vec![0f32; D::CODES];
    for k in 0..D::NV {
        for j in 0..S::LANES {
            t[k * S::LANES + j] = f(D::shift(k, j));
        }
    }
    t
}

/// `x` in decoder order for `blocks` blocks: entry `k * LANES + j` of block `b` is column
/// `b * CODES + NV*j + k` times `factor[k * LANES + j]`, or 0 past the end of `x`.
pub(super) fn permute_x<S: Isa, D: Decode<S>>(
    x: &[f32],
    blocks: usize,
    factor: &[f32],
    out: &mut [f32],
) {
    let (nv, lanes) = (D::NV, S::LANES);
    for (b, ob) in out[..blocks * D::CODES]
        .chunks_exact_mut(D::CODES)
        .enumerate()
    {
        let xb = &x[(b * D::CODES).min(x.len())..];
        if xb.len() >= D::CODES {
            for (i, o) in ob.iter_mut().enumerate() {
                let (k, j) = (i / lanes, i % lanes);
                *o = xb[nv * j + k] * factor[i];
            }
        } else {
            for (i, o) in ob.iter_mut().enumerate() {
                let (k, j) = (i / lanes, i % lanes);
                *o = xb.get(nv * j + k).map_or(0.0, |v| v * factor[i]);
            }
        }
    }
}
