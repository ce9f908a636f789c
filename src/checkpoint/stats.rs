//! Per-tensor weight statistics, streamed from the memory map in parallel blocks.
//!
//! Two passes: the first gathers count, min, max, sum and sum of squares of the finite values,
//! shifted by the mean of the tensor's first block (f64 accumulators, merged in a fixed order so
//! results do not depend on the thread count);
//! the second counts outliers |w - mean| > 6 std, which needs mean and std from the first.
//! (Centred, so that non-zero-mean tensors such as norm gains are not all "outliers".)

use super::{Checkpoint, TensorView};
use crate::error::Result;
use rayon::prelude::*;
use serde::Serialize;

/// Elements per parallel work item: big enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 20;
/// Elements decoded to f32 at a time on the stack.
const BLOCK: usize = 4096;
/// Outlier threshold in standard deviations.
pub const OUTLIER_STD: f32 = 6.0;

/// Summary statistics of one float tensor; min/max/mean/std are over finite values only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorStats {
    /// Tensor name.
    pub name: String,
    /// Stored dtype.
    pub dtype: String,
    /// Number of elements.
    pub numel: u64,
    /// Smallest finite value.
    pub min: f32,
    /// Largest finite value.
    pub max: f32,
    /// Largest finite |w|.
    pub absmax: f32,
    /// Mean of finite values.
    pub mean: f64,
    /// Population standard deviation of finite values.
    pub std: f64,
    /// Share of finite values with |w - mean| > 6 std.
    pub outlier_share: f64,
    /// Count of NaN elements.
    pub nan: u64,
    /// Count of +/-Inf elements.
    pub inf: u64,
}

/// Sums of one tensor's finite values, shifted by a value `k` near their mean (that of the
/// first block): sums of `v - k` and `(v - k)²` neither overflow for values near f32's limits nor cancel
/// for a tensor far from zero (a constant 1e19 tensor has std 0, not inf).
#[derive(Clone, Copy)]
struct Moments {
    finite: u64,
    nan: u64,
    inf: u64,
    min: f32,
    max: f32,
    sum: f64,
    sumsq: f64,
}

/// Largest |v| and |k| for which the f32 lanes of [`Moments::add`] cannot overflow: 8 squared
/// differences of at most 2e18 stay far below f32::MAX.
const LANE_LIMIT: f32 = 1e18;

impl Moments {
    const EMPTY: Moments = Moments {
        finite: 0,
        nan: 0,
        inf: 0,
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        sum: 0.0,
        sumsq: 0.0,
    };

    fn merge(self, o: Moments) -> Moments {
        Moments {
            finite: self.finite + o.finite,
            nan: self.nan + o.nan,
            inf: self.inf + o.inf,
            min: self.min.min(o.min),
            max: self.max.max(o.max),
            sum: self.sum + o.sum,
            sumsq: self.sumsq + o.sumsq,
        }
    }

    /// Adds a block shifted by `k`; the branch-free lane loop runs when the block holds only
    /// finite values of moderate size (the norm), f64 per element otherwise.
    fn add(&mut self, x: &[f32], k: f32) {
        // False for NaN and Inf too, which take the per-element path that counts them.
        let moderate = k.abs() <= LANE_LIMIT && x.iter().all(|v| v.abs() <= LANE_LIMIT);
        if moderate {
            // 16 f32 lanes summed over runs of 8 (128 elements), then flushed to f64: the
            // compiler vectorises the f32 lanes, and 8-term f32 partial sums lose nothing
            // measurable before they join the f64 totals.
            const L: usize = 16;
            const RUN: usize = L * 8;
            let (mut mn, mut mx) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L]);
            let (mut s64, mut q64) = (0f64, 0f64);
            let mut runs = x.chunks_exact(RUN);
            for run in &mut runs {
                let (mut s, mut q) = ([0f32; L], [0f32; L]);
                for c in run.chunks_exact(L) {
                    for i in 0..L {
                        let v = c[i];
                        mn[i] = if v < mn[i] { v } else { mn[i] };
                        mx[i] = if v > mx[i] { v } else { mx[i] };
                        let d = v - k;
                        s[i] += d;
                        q[i] += d * d;
                    }
                }
                s64 += s.iter().map(|&v| v as f64).sum::<f64>();
                q64 += q.iter().map(|&v| v as f64).sum::<f64>();
            }
            for &v in runs.remainder() {
                mn[0] = mn[0].min(v);
                mx[0] = mx[0].max(v);
                let d = (v - k) as f64;
                s64 += d;
                q64 += d * d;
            }
            self.finite += x.len() as u64;
            self.min = mn.iter().fold(self.min, |a, &b| a.min(b));
            self.max = mx.iter().fold(self.max, |a, &b| a.max(b));
            self.sum += s64;
            self.sumsq += q64;
        } else {
            for &v in x {
                if v.is_nan() {
                    self.nan += 1;
                } else if v.is_infinite() {
                    self.inf += 1;
                } else {
                    self.finite += 1;
                    self.min = self.min.min(v);
                    self.max = self.max.max(v);
                    let d = v as f64 - k as f64;
                    self.sum += d;
                    self.sumsq += d * d;
                }
            }
        }
    }

    /// Mean of the finite values, given the shift `k` the sums were taken with.
    fn mean(&self, k: f32) -> f64 {
        k as f64 + self.sum / self.finite.max(1) as f64
    }

    /// Population standard deviation of the finite values (the shift cancels).
    fn std(&self) -> f64 {
        let n = self.finite.max(1) as f64;
        let m = self.sum / n;
        (self.sumsq / n - m * m).max(0.0).sqrt()
    }
}

/// Runs `f` on every `BLOCK`-sized run of elements in `range` of `view`, decoded to f32.
fn for_blocks(
    view: &TensorView<'_>,
    range: std::ops::Range<usize>,
    mut f: impl FnMut(&[f32]),
) -> Result<()> {
    let mut buf = [0f32; BLOCK];
    let mut at = range.start;
    while at < range.end {
        let n = BLOCK.min(range.end - at);
        view.decode_f32(at, &mut buf[..n])?;
        f(&buf[..n]);
        at += n;
    }
    Ok(())
}

/// Statistics for every float tensor of `checkpoint` (others are skipped), in file order.
pub fn compute(checkpoint: &Checkpoint) -> Result<Vec<TensorStats>> {
    let views: Vec<TensorView<'_>> = checkpoint.tensors().filter(|v| v.is_float()).collect();
    // Work items: (view index, element range). Collected in order, so merging is deterministic.
    let items: Vec<(usize, std::ops::Range<usize>)> = views
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            let n = v.numel();
            (0..n.div_ceil(CHUNK).max(1)).map(move |c| (i, c * CHUNK..((c + 1) * CHUNK).min(n)))
        })
        .collect();

    // Each tensor's shift: the mean of its first block's finite values (0 when it has none),
    // near the tensor's mean unless the tensor drifts, so the shifted sums cancel little.
    let shifts: Vec<f32> = views
        .par_iter()
        .map(|v| {
            let mut buf = [0f32; BLOCK];
            let n = BLOCK.min(v.numel());
            v.decode_f32(0, &mut buf[..n])?;
            let (sum, count) = buf[..n]
                .iter()
                .filter(|x| x.is_finite())
                .fold((0f64, 0u32), |(s, c), &x| (s + f64::from(x), c + 1));
            Ok(if count == 0 {
                0.0
            } else {
                (sum / f64::from(count)) as f32
            })
        })
        .collect::<Result<_>>()?;
    let partial: Vec<Moments> = items
        .par_iter()
        .map(|(i, r)| {
            let mut m = Moments::EMPTY;
            for_blocks(&views[*i], r.clone(), |x| m.add(x, shifts[*i]))?;
            Ok(m)
        })
        .collect::<Result<_>>()?;
    let mut moments = vec![Moments::EMPTY; views.len()];
    for ((i, _), m) in items.iter().zip(&partial) {
        moments[*i] = moments[*i].merge(*m);
    }

    let bounds: Vec<(f64, f64)> = moments
        .iter()
        .zip(&shifts)
        .map(|(m, &k)| (m.mean(k), f64::from(OUTLIER_STD) * m.std()))
        .collect();
    let counts: Vec<u64> = items
        .par_iter()
        .map(|(i, r)| {
            let (mean, t) = bounds[*i];
            let mut n = 0u64;
            for_blocks(&views[*i], r.clone(), |x| {
                n += x
                    .iter()
                    .filter(|v| (f64::from(**v) - mean).abs() > t && v.is_finite())
                    .count() as u64;
            })?;
            Ok(n)
        })
        .collect::<Result<_>>()?;
    let mut outliers = vec![0u64; views.len()];
    for ((i, _), n) in items.iter().zip(&counts) {
        outliers[*i] += n;
    }

    Ok(views
        .iter()
        .zip(&moments)
        .zip(&outliers)
        .zip(&shifts)
        .map(|(((v, m), &out), &k)| TensorStats {
            name: v.name.to_string(),
            dtype: format!("{:?}", v.dtype),
            numel: v.numel() as u64,
            min: if m.finite > 0 { m.min } else { f32::NAN },
            max: if m.finite > 0 { m.max } else { f32::NAN },
            absmax: if m.finite > 0 {
                m.min.abs().max(m.max.abs())
            } else {
                f32::NAN
            },
            mean: m.mean(k),
            std: m.std(),
            outlier_share: out as f64 / m.finite.max(1) as f64,
            nan: m.nan,
            inf: m.inf,
        })
        .collect())
}
