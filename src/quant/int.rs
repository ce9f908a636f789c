//! Integer quantization of a weight matrix: calibrate each group, then pack codes with
//! qpipe-kernels (layout documented there). Parallel over rows and deterministic: every row is
//! computed by one thread in a fixed order, and whole-tensor error sums are reduced in order.

use super::calibrate::{weight_quantizer, Calibrator};
use super::format::{Granularity, IntFormat, Scheme};
use super::gptq::Factor;
use super::quantizer::Quantizer;
use half::f16;
use qpipe_kernels::pack::{pack, packed_len};
use qpipe_kernels::{PackedMatrix, Zeros};
use rayon::prelude::*;

/// A packed integer matrix: codes, f16 scales and (asymmetric only) u8 zero-points.
#[derive(Debug, Clone, PartialEq)]
pub struct IntQuantized {
    /// The format it was quantized to.
    pub format: IntFormat,
    /// Output rows.
    pub rows: usize,
    /// Input columns.
    pub cols: usize,
    /// Codes, row after row, each row `packed_len(cols, bits)` bytes.
    pub packed: Vec<u8>,
    /// One scale per group (row-major), or a single one for per-tensor granularity.
    pub scales: Vec<f16>,
    /// One zero-point per scale for asymmetric formats; empty otherwise.
    pub zeros: Vec<u8>,
}

impl IntQuantized {
    /// Exact bytes of codes, scales and zero-points.
    pub fn storage_bytes(&self) -> usize {
        self.packed.len() + 2 * self.scales.len() + self.zeros.len()
    }

    /// Scales as f16 bits, one per (row, group): what the kernels index.
    fn kernel_scales(&self) -> Vec<u16> {
        let per_row = self.cols.div_ceil(self.group_len());
        if self.scales.len() == 1 {
            vec![self.scales[0].to_bits(); self.rows * per_row]
        } else {
            self.scales.iter().map(|s| s.to_bits()).collect()
        }
    }

    fn group_len(&self) -> usize {
        self.format.granularity.group_len(self.cols)
    }

    /// Runs `f` on a kernels view of this matrix; fails if the fields are inconsistent (they
    /// are public so that packed checkpoints can be read back into them).
    pub fn with_kernel_view<T>(&self, f: impl FnOnce(&PackedMatrix<'_>) -> T) -> Result<T, String> {
        let scales = self.kernel_scales();
        let zeros = match (self.format.scheme, self.zeros.as_slice()) {
            (Scheme::Asymmetric, [z]) => Zeros::Constant(*z),
            (Scheme::Asymmetric, zs) => Zeros::PerGroup(zs),
            _ => Zeros::Constant(1 << (self.format.bits - 1)),
        };
        let view = PackedMatrix::new(
            self.format.bits,
            self.rows,
            self.cols,
            self.group_len(),
            &self.packed,
            &scales,
            zeros,
        )
        .map_err(|e| {
            format!(
                "inconsistent {}x{} quantized matrix: {e}",
                self.rows, self.cols
            )
        })?;
        Ok(f(&view))
    }

    /// Dequantized values, row-major.
    pub fn dequantize(&self) -> Result<Vec<f32>, String> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.with_kernel_view(|m| m.dequantize(&mut out))?;
        Ok(out)
    }
}

/// What one row produces: packed-to-be codes, or dequantized values.
enum RowOut<'a> {
    Codes(&'a mut [u8]),
    Values(&'a mut [f32]),
}

/// What every row of one matrix shares.
#[derive(Clone, Copy)]
struct RowJob<'a> {
    cal: Calibrator,
    fmt: IntFormat,
    /// Per-column importance.
    imp: Option<&'a [f32]>,
    /// The whole-tensor quantizer, for per-tensor granularity.
    shared: Option<Quantizer>,
}

/// Calibrates each group of `row` (or uses the job's whole-tensor quantizer, or the row's
/// `given` ones) and writes its codes or values; returns the row's quantizers. Inlined into
/// both builds of [`row_work`].
#[inline(always)]
fn row_work_body(
    job: RowJob<'_>,
    row: &[f32],
    given: Option<&[Quantizer]>,
    mut out: RowOut<'_>,
) -> Result<Vec<Quantizer>, String> {
    let RowJob {
        cal,
        fmt,
        imp,
        shared,
    } = job;
    let g = fmt.granularity.group_len(row.len());
    let mut qs = Vec::with_capacity(if shared.is_some() {
        0
    } else {
        row.len().div_ceil(g)
    });
    for (k, xs) in row.chunks(g).enumerate() {
        let q = match (shared, given) {
            (Some(q), _) => q,
            (None, Some(given)) => {
                qs.push(given[k]);
                given[k]
            }
            (None, None) => {
                let q = weight_quantizer(cal, fmt, xs, imp.map(|v| &v[k * g..k * g + xs.len()]))?;
                qs.push(q);
                q
            }
        };
        match &mut out {
            RowOut::Codes(c) => {
                for (c, &x) in c[k * g..k * g + xs.len()].iter_mut().zip(xs) {
                    *c = q.code(x);
                }
            }
            RowOut::Values(v) => {
                for (v, &x) in v[k * g..k * g + xs.len()].iter_mut().zip(xs) {
                    *v = q.fake(x);
                }
            }
        }
    }
    Ok(qs)
}

/// [`row_work_body`] compiled with AVX2 and FMA enabled. Rust never contracts a*b+c into an
/// FMA by itself, so this build computes bit-identical results, only wider.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_work_avx2(
    job: RowJob<'_>,
    row: &[f32],
    given: Option<&[Quantizer]>,
    out: RowOut<'_>,
) -> Result<Vec<Quantizer>, String> {
    row_work_body(job, row, given, out)
}

/// Runs one row with the widest build this CPU supports.
fn row_work(
    job: RowJob<'_>,
    row: &[f32],
    given: Option<&[Quantizer]>,
    out: RowOut<'_>,
) -> Result<Vec<Quantizer>, String> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features this build was compiled for.
        return unsafe { row_work_avx2(job, row, given, out) };
    }
    row_work_body(job, row, given, out)
}

/// Checks the shapes, then builds the job for `w`: for per-tensor granularity with the one
/// quantizer calibrated on all of it.
fn row_job<'a>(
    w: &[f32],
    rows: usize,
    cols: usize,
    fmt: IntFormat,
    cal: Calibrator,
    imp: Option<&'a [f32]>,
) -> Result<RowJob<'a>, String> {
    check_shape(w, rows, cols, imp)?;
    let shared = if fmt.granularity == Granularity::Tensor {
        Some(weight_quantizer(cal, fmt, w, imp)?)
    } else {
        None
    };
    Ok(RowJob {
        cal,
        fmt,
        imp,
        shared,
    })
}

fn check_shape(w: &[f32], rows: usize, cols: usize, imp: Option<&[f32]>) -> Result<(), String> {
    if rows == 0 || cols == 0 {
        return Err(format!("cannot quantize an empty {rows}x{cols} matrix"));
    }
    if w.len() != rows * cols {
        return Err(format!("{} values for a {rows}x{cols} matrix", w.len()));
    }
    match imp {
        Some(v) if v.len() != cols => Err(format!(
            "importance has {} entries for {cols} columns",
            v.len()
        )),
        _ => Ok(()),
    }
}

/// The values `w` is stored as when `gptq` rounds it, and every row's quantizers: the
/// calibrator chooses them on the original weights, then GPTQ rounds onto them.
fn gptq_values(
    job: RowJob<'_>,
    w: &[f32],
    rows: usize,
    cols: usize,
    gptq: &Factor,
) -> Result<(Vec<f32>, Vec<Vec<Quantizer>>), String> {
    let per_row: Vec<Vec<Quantizer>> = w
        .par_chunks(cols)
        .map(|row| row_work(job, row, None, RowOut::Values(&mut vec![0f32; cols])))
        .collect::<Result<_, String>>()?;
    let g = job.fmt.granularity.group_len(cols);
    let grid = |r: usize, c: usize, x: f32| match job.shared {
        Some(q) => q.fake(x),
        None => per_row[r][c / g].fake(x),
    };
    let values = gptq.round(w, rows, cols, &grid)?;
    Ok((values, per_row))
}

/// Quantizes row-major `w` [rows, cols] to `fmt` with ranges chosen by `cal`; `imp` is an
/// optional per-column importance (e.g. mean x^2 of the layer input) weighting the error.
/// With `gptq`, values are rounded by GPTQ onto the grid the calibrator chose (else to
/// nearest).
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    fmt: IntFormat,
    cal: Calibrator,
    imp: Option<&[f32]>,
    gptq: Option<&Factor>,
) -> Result<IntQuantized, String> {
    let job = row_job(w, rows, cols, fmt, cal, imp)?;
    let rounded = gptq
        .map(|f| gptq_values(job, w, rows, cols, f))
        .transpose()?;
    let (values, given) = match &rounded {
        Some((v, q)) => (v.as_slice(), Some(q)),
        None => (w, None),
    };
    let row_bytes = packed_len(cols, fmt.bits);
    let mut packed = vec![0u8; rows * row_bytes];
    let per_row: Vec<Vec<Quantizer>> = packed
        .par_chunks_mut(row_bytes)
        .zip(values.par_chunks(cols))
        .enumerate()
        .map(|(r, (out, row))| {
            let mut codes = vec![0u8; cols];
            let given = given.map(|q| q[r].as_slice());
            let qs = row_work(job, row, given, RowOut::Codes(&mut codes))?;
            pack(&codes, fmt.bits, out).map_err(|e| e.to_string())?;
            Ok(qs)
        })
        .collect::<Result<_, String>>()?;
    let qs: Vec<Quantizer> = match job.shared {
        Some(q) => vec![q],
        None => per_row.into_iter().flatten().collect(),
    };
    let scales = qs.iter().map(|q| f16::from_f32(q.scale)).collect();
    let zeros = if fmt.scheme == Scheme::Asymmetric {
        qs.iter().map(|q| q.zero).collect()
    } else {
        Vec::new()
    };
    Ok(IntQuantized {
        format: fmt,
        rows,
        cols,
        packed,
        scales,
        zeros,
    })
}

/// `w` quantized and dequantized in one pass, without packing: the values `quantize` followed
/// by `dequantize` gives, at a fraction of the cost (the search's inner loop).
pub fn fake_quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    fmt: IntFormat,
    cal: Calibrator,
    imp: Option<&[f32]>,
    gptq: Option<&Factor>,
) -> Result<Vec<f32>, String> {
    let job = row_job(w, rows, cols, fmt, cal, imp)?;
    if let Some(f) = gptq {
        return gptq_values(job, w, rows, cols, f).map(|(v, _)| v);
    }
    let mut out = vec![0f32; w.len()];
    out.par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .try_for_each(|(o, row)| row_work(job, row, None, RowOut::Values(o)).map(drop))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_build_is_bit_identical_to_the_baseline_build() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1e-3 * (1.0 + (i % 13) as f32))
            .collect();
        let imp: Vec<f32> = (0..1000).map(|i| 0.1 + (i % 17) as f32).collect();
        for fmt in [
            "int4-g32-asym",
            "int3-g128-sym",
            "int8-channel-pow2",
            "int2-g64-asym",
        ] {
            let Ok(crate::quant::Format::Int(fmt)) = fmt.parse() else {
                unreachable!()
            };
            for cal in Calibrator::ALL {
                for imp in [None, Some(imp.as_slice())] {
                    let (mut a, mut b) = (vec![0f32; 1000], vec![0f32; 1000]);
                    let job = RowJob {
                        cal,
                        fmt,
                        imp,
                        shared: None,
                    };
                    let qa = row_work_body(job, &row, None, RowOut::Values(&mut a)).unwrap();
                    // SAFETY: features detected above.
                    let qb =
                        unsafe { row_work_avx2(job, &row, None, RowOut::Values(&mut b)) }.unwrap();
                    assert_eq!(qa, qb, "{fmt:?} {cal}");
                    assert_eq!(
                        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}
