//! Calibrators: choose the clipping range that an integer quantizer covers.
//!
//! The same four methods serve weights (per group, channel or tensor, from the exact values,
//! optionally weighted by a per-input-channel importance vector) and activations (per tensor,
//! from a [`Histogram`]):
//! - `minmax`: the full range.
//! - `percentile(p)`: the p-th percentile of |x| (symmetric) or the (1-p, p) quantiles.
//! - `mse`: coarse-to-fine search of the clip ratio (1 down to 0.1) minimising the
//!   (importance-weighted) squared error of the real quantize-dequantize round trip. Ratio 1 is
//!   minmax and wins ties, so mse is never worse than minmax.
//! - `entropy`: TensorRT's threshold search minimising KL(P || Q) between the magnitude
//!   histogram clipped at the threshold and its quantized version.

use super::format::{IntFormat, Scheme, Symmetry};
use super::histogram::Histogram;
use super::quantizer::{batch_sq_errors, finite_range, Quantizer, ScaleRounding, BATCH};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A method for choosing the clipping range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Calibrator {
    /// Full range of the data.
    MinMax,
    /// Percentile, in hundredths of a percent (9990 = 99.9%).
    Percentile(u32),
    /// Clip ratio with the least (importance-weighted) squared error.
    Mse,
    /// TensorRT-style KL-divergence threshold.
    Entropy,
}

impl Calibrator {
    /// The four methods with their default parameters.
    pub const ALL: [Calibrator; 4] = [
        Calibrator::MinMax,
        Calibrator::Percentile(9990),
        Calibrator::Mse,
        Calibrator::Entropy,
    ];
}

impl fmt::Display for Calibrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Calibrator::MinMax => f.write_str("minmax"),
            Calibrator::Percentile(p) => write!(f, "percentile:{}", *p as f64 / 100.0),
            Calibrator::Mse => f.write_str("mse"),
            Calibrator::Entropy => f.write_str("entropy"),
        }
    }
}

impl FromStr for Calibrator {
    type Err = String;

    /// Parses `minmax`, `mse`, `entropy`, `percentile` (99.9) or `percentile:P` with 50 < P <= 100.
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "minmax" => Ok(Calibrator::MinMax),
            "mse" => Ok(Calibrator::Mse),
            "entropy" => Ok(Calibrator::Entropy),
            "percentile" => Ok(Calibrator::Percentile(9990)),
            _ => lower
                .strip_prefix("percentile:")
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|p| *p > 50.0 && *p <= 100.0)
                .map(|p| Calibrator::Percentile((p * 100.0).round() as u32))
                .ok_or_else(|| {
                    format!("unknown calibrator '{s}': expected minmax, percentile[:P] (50 < P <= 100), mse or entropy")
                }),
        }
    }
}

/// Clip ratios `mse` tries first: dense near 1, where 4-8 bit optima sit, and reaching down to
/// 0.1 for rows whose range is set by a few far outliers.
const MSE_COARSE: [f32; 7] = [1.0, 0.85, 0.7, 0.5, 0.35, 0.2, 0.1];
/// Coarse ratios evaluated together: as many as one pass of the error takes (see [`BATCH`]).
const MSE_COARSE_BATCH: usize = BATCH;
/// Extra ratios tried between the best coarse ratio's neighbours.
const MSE_REFINE: usize = 2;
const _: () = assert!(MSE_REFINE <= BATCH);

/// The errors of clipping at ratios of the full range, for the mse search, a batch at a time.
/// A trait (not a closure) so that `#[inline(always)]` reaches the hot loop, also in the AVX2
/// build.
trait ClipError {
    /// Entry `i < ratios.len() <= BATCH` is the error at `ratios[i]`.
    fn errors(&mut self, ratios: &[f32]) -> Result<[f64; BATCH], String>;
}

/// Weight values (one group, row or tensor) with optional importance.
struct WeightClip<'a> {
    fmt: IntFormat,
    lo: f32,
    hi: f32,
    xs: &'a [f32],
    imp: Option<&'a [f32]>,
}

impl ClipError for WeightClip<'_> {
    #[inline(always)]
    fn errors(&mut self, rs: &[f32]) -> Result<[f64; BATCH], String> {
        let mut qs = [Quantizer::default(); BATCH];
        for (q, &r) in qs.iter_mut().zip(rs) {
            *q = Quantizer::for_range(
                self.fmt.bits,
                self.fmt.scheme,
                self.lo * r,
                self.hi * r,
                ScaleRounding::UpToF16,
            )?;
        }
        Ok(batch_sq_errors(&qs[..rs.len()], self.xs, self.imp))
    }
}

/// The ratio in (0, 1] minimising the error: the coarse grid, then a refinement between the
/// best coarse point's neighbours. Ratio 1 is tried first and wins ties. The coarse scan stops
/// once the error has doubled past the best (below its optimum the clipping error only
/// grows); it is evaluated in batches and replayed on their errors, so it chooses exactly
/// what a one-ratio-at-a-time scan would.
#[inline(always)]
fn search_ratio(err: &mut impl ClipError) -> Result<f32, String> {
    let (mut best_r, mut best_e, mut best_i) = (1.0f32, f64::INFINITY, 0usize);
    'scan: for (c, part) in MSE_COARSE.chunks(MSE_COARSE_BATCH).enumerate() {
        let es = err.errors(part)?;
        for (i, (&r, &e)) in part.iter().zip(&es).enumerate() {
            if e < best_e {
                (best_r, best_e, best_i) = (r, e, c * MSE_COARSE_BATCH + i);
            }
            if e > 2.0 * best_e {
                break 'scan;
            }
        }
    }
    let hi = if best_i == 0 {
        1.0
    } else {
        MSE_COARSE[best_i - 1]
    };
    let lo = MSE_COARSE
        .get(best_i + 1)
        .copied()
        .unwrap_or(MSE_COARSE[best_i] * 0.5);
    let rs: [f32; MSE_REFINE] =
        std::array::from_fn(|k| lo + (hi - lo) * (k + 1) as f32 / (MSE_REFINE + 1) as f32);
    let es = err.errors(&rs)?;
    for (&r, &e) in rs.iter().zip(&es) {
        if e < best_e {
            (best_r, best_e) = (r, e);
        }
    }
    Ok(best_r)
}

/// The quantizer `cal` picks for weights `xs` (one group, row or tensor) in format `fmt`.
#[inline(always)]
pub fn weight_quantizer(
    cal: Calibrator,
    fmt: IntFormat,
    xs: &[f32],
    imp: Option<&[f32]>,
) -> Result<Quantizer, String> {
    let (lo, hi) = finite_range(xs)?;
    #[inline(always)]
    fn q_for(fmt: IntFormat, lo: f32, hi: f32) -> Result<Quantizer, String> {
        Quantizer::for_range(fmt.bits, fmt.scheme, lo, hi, ScaleRounding::UpToF16)
    }
    let q = |lo, hi| q_for(fmt, lo, hi);
    match cal {
        Calibrator::MinMax => q(lo, hi),
        Calibrator::Percentile(p) => {
            let p = p as f64 / 10_000.0;
            if fmt.scheme == Scheme::Asymmetric {
                let mut v = xs.to_vec();
                q(quantile(&mut v, 1.0 - p), quantile(&mut v, p))
            } else {
                let mut v: Vec<f32> = xs.iter().map(|x| x.abs()).collect();
                let a = quantile(&mut v, p);
                q(-a, a)
            }
        }
        Calibrator::Mse => {
            let r = search_ratio(&mut WeightClip {
                fmt,
                lo,
                hi,
                xs,
                imp,
            })?;
            q(lo * r, hi * r)
        }
        Calibrator::Entropy => {
            let amax = lo.abs().max(hi.abs());
            // Bins scale with the sample count (a 32-weight group cannot fill 2048 bins).
            let bins = (4 * xs.len())
                .next_power_of_two()
                .clamp(64, super::histogram::MAG_BINS);
            let width = amax / bins as f32;
            let mut mag = vec![0u64; bins];
            if width > 0.0 {
                for &x in xs {
                    mag[((x.abs() / width) as usize).min(bins - 1)] += 1;
                }
            }
            let t = entropy_threshold(&mag, width, 1 << (fmt.bits - 1), 64);
            q(lo.max(-t), hi.min(t))
        }
    }
}

/// The q-quantile of `v` (linear interpolation between order statistics); reorders `v`.
fn quantile(v: &mut [f32], q: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, (pos - pos.floor()) as f32);
    let (_, &mut a, rest) = v.select_nth_unstable_by(i, f32::total_cmp);
    if frac == 0.0 || rest.is_empty() {
        return a;
    }
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min);
    a + (b - a) * frac
}

/// TensorRT's entropy calibration: the clip magnitude minimising KL(P || Q), where P is the
/// magnitude histogram clipped at the candidate (outliers folded into its last bin) and Q is P
/// merged into `quant_bins` levels and spread back over its non-empty bins. Candidates run from
/// `quant_bins` to all bins, at most `max_candidates` of them; ties go to the wider threshold.
pub fn entropy_threshold(
    mag: &[u64],
    bin_width: f32,
    quant_bins: usize,
    max_candidates: usize,
) -> f32 {
    let n = mag.len();
    let mut bins = mag.to_vec();
    if n > 1 {
        // The spike of exact zeros would dominate P; TensorRT ignores it the same way.
        bins[0] = bins[1];
    }
    // Only non-empty bins contribute to any sum, so the search visits just those: the same
    // terms in the same order as the dense algorithm, hence the same result, bit for bit.
    let nonzero: Vec<(usize, f64)> = bins
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(k, &c)| (k, c as f64))
        .collect();
    let total: f64 = nonzero.iter().map(|(_, c)| c).sum();
    if total == 0.0 {
        return n as f32 * bin_width;
    }
    let start = quant_bins.min(n).max(1);
    let stride = ((n - start) / max_candidates.max(1)).max(1);
    let mut candidates: Vec<usize> = (start..=n).step_by(stride).collect();
    if candidates.last() != Some(&n) {
        candidates.push(n);
    }
    let mut chunks = vec![(0f64, 0f64); quant_bins];
    let mut best = (f64::INFINITY, n);
    for i in candidates {
        let kl = clipped_kl(&nonzero, i, quant_bins, total, &mut chunks);
        if kl <= best.0 {
            best = (kl, i);
        }
    }
    best.1 as f32 * bin_width
}

/// KL(P || Q) for threshold bin `i` over the non-empty bins; `chunks` is scratch for the
/// (sum, non-empty count) of each of the `nq` quantized levels.
fn clipped_kl(
    nonzero: &[(usize, f64)],
    i: usize,
    nq: usize,
    total: f64,
    chunks: &mut [(f64, f64)],
) -> f64 {
    let split = nonzero.partition_point(|&(k, _)| k < i);
    let (kept_bins, outlier_bins) = nonzero.split_at(split);
    let outliers: f64 = outlier_bins.iter().map(|(_, c)| c).sum();
    let kept: f64 = kept_bins.iter().map(|(_, c)| c).sum();
    if kept == 0.0 {
        return f64::INFINITY;
    }
    if outliers > 0.0 && kept_bins.last().map(|&(k, _)| k) != Some(i - 1) {
        // The outliers land in an empty last bin, where Q is zero.
        return f64::INFINITY;
    }
    chunks.fill((0.0, 0.0));
    // Level j covers bins j*i/nq <= k < (j+1)*i/nq, i.e. j = floor(k * nq / i).
    for &(k, c) in kept_bins {
        let ch = &mut chunks[k * nq / i];
        ch.0 += c;
        ch.1 += 1.0;
    }
    let mut kl = 0.0;
    for &(k, c) in kept_bins {
        let (sum, count) = chunks[k * nq / i];
        let reference = if k == i - 1 { c + outliers } else { c };
        let p = reference / total;
        let q = sum / count / kept;
        kl += p * (p / q).ln();
    }
    kl
}

/// An activation histogram, its error integrated over bin centres.
struct HistogramClip<'a, C: Fn(f32) -> (f32, f32)> {
    h: &'a Histogram,
    bits: u32,
    scheme: Scheme,
    clip: C,
}

impl<C: Fn(f32) -> (f32, f32)> ClipError for HistogramClip<'_, C> {
    fn errors(&mut self, rs: &[f32]) -> Result<[f64; BATCH], String> {
        let mut es = [0f64; BATCH];
        for (e, &r) in es.iter_mut().zip(rs) {
            let (lo, hi) = (self.clip)(self.h.absmax() * r);
            let q = Quantizer::for_range(self.bits, self.scheme, lo, hi, ScaleRounding::Exact)?;
            *e = self
                .h
                .centres()
                .map(|(c, n)| n as f64 * ((c - q.fake(c)) as f64).powi(2))
                .sum();
        }
        Ok(es)
    }
}

/// The per-tensor activation range `cal` picks from histogram `h` for `bits`.
pub fn activation_range(
    cal: Calibrator,
    h: &Histogram,
    bits: u32,
    symmetry: Symmetry,
) -> (f32, f32) {
    if h.count() == 0 {
        return (0.0, 0.0);
    }
    let clip = |t: f32| {
        if symmetry == Symmetry::Symmetric {
            (-t, t)
        } else {
            (h.min().max(-t), h.max().min(t))
        }
    };
    match cal {
        Calibrator::MinMax => clip(h.absmax()),
        Calibrator::Percentile(p) => {
            let p = p as f64 / 10_000.0;
            if symmetry == Symmetry::Symmetric {
                clip(h.abs_quantile(p))
            } else {
                (h.quantile(1.0 - p), h.quantile(p))
            }
        }
        Calibrator::Entropy => clip(entropy_threshold(
            &h.magnitudes(),
            h.bin_width(),
            1 << (bits - 1),
            usize::MAX,
        )),
        Calibrator::Mse => {
            let scheme = match symmetry {
                Symmetry::Symmetric => Scheme::Symmetric,
                Symmetry::Asymmetric => Scheme::Asymmetric,
            };
            let mut hist = HistogramClip {
                h,
                bits,
                scheme,
                clip,
            };
            // Activation scales are f32, so every candidate is valid and the search cannot fail.
            let r = search_ratio(&mut hist).unwrap_or(1.0);
            clip(h.absmax() * r)
        }
    }
}
