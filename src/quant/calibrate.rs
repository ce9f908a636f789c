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

use super::format::{IntFormat, Scheme};
use super::histogram::Histogram;
use rayon::prelude::*;
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

/// An affine integer quantizer: code = clamp(round(x / scale) + zero), value = scale * (code - zero).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quantizer {
    /// Step between adjacent codes (0 for an all-zero range).
    pub scale: f32,
    /// Code representing 0.0.
    pub zero: u8,
    inv: f32,
    lo_code: f32,
    hi_code: f32,
}

/// Adding 2^23 to a float in [0, 2^23) rounds it to the nearest integer (ties to even) and
/// leaves that integer in the low mantissa bits: rounding and conversion with plain adds and
/// masks, which vectorise where `round()` and saturating `as` casts do not.
const ROUND: f32 = 8_388_608.0;
/// Inputs longer than this (whole tensors) have their error summed in parallel.
const PAR_ERROR: usize = 1 << 18;
/// Squared errors are summed in this many f32 lanes over runs of at most `RUN` values (each
/// lane holds at most `RUN / LANES` terms: exact enough), and in f64 across runs.
const LANES: usize = 8;
const RUN: usize = 256;

/// The pairwise f32 sum of eight lanes, as f64.
#[inline(always)]
fn sum_lanes(a: &[f32; LANES]) -> f64 {
    (((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))) as f64
}

impl Quantizer {
    /// The quantizer covering [lo, hi] with `bits` and `scheme`. With `f16_scale` the scale is
    /// rounded up to the next f16 (as stored), so the range stays covered.
    #[inline(always)]
    pub fn for_range(
        bits: u32,
        scheme: Scheme,
        lo: f32,
        hi: f32,
        f16_scale: bool,
    ) -> Result<Self, String> {
        let levels = ((1u32 << bits) - 1) as f32;
        let half = (1u32 << (bits - 1)) as f32;
        let qmax = half - 1.0;
        let amax = lo.abs().max(hi.abs());
        let (raw, lo_code) = match scheme {
            Scheme::Asymmetric => ((hi.max(0.0) - lo.min(0.0)) / levels, 0.0),
            Scheme::Symmetric => (amax / qmax, 1.0),
            Scheme::PowerOfTwo => {
                let s = amax / qmax;
                let p = if s > 0.0 {
                    s.log2().ceil().clamp(-24.0, 15.0).exp2()
                } else {
                    0.0
                };
                (p, 1.0)
            }
        };
        let scale = if f16_scale { round_up_f16(raw)? } else { raw };
        // One division per quantizer: the mse search builds one per candidate ratio.
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let zero = match scheme {
            // -lo/scale lies in [0, levels] here, inside ROUND's exact range.
            Scheme::Asymmetric => ((-lo.min(0.0) * inv + ROUND) - ROUND).clamp(0.0, levels),
            _ => half,
        };
        Ok(Quantizer {
            scale,
            zero: zero as u8,
            inv,
            lo_code,
            hi_code: levels,
        })
    }

    /// `x` scaled, shifted and clamped to the code range, plus 2^23 (see [`ROUND`]).
    #[inline(always)]
    fn biased(&self, x: f32) -> f32 {
        let t = x * self.inv + self.zero as f32;
        let t = if t < self.lo_code { self.lo_code } else { t };
        let t = if t > self.hi_code { self.hi_code } else { t };
        t + ROUND
    }

    /// The code for `x`.
    #[inline(always)]
    pub fn code(&self, x: f32) -> u8 {
        (self.biased(x).to_bits() & 0xff) as u8
    }

    /// `x` quantized and dequantized.
    #[inline(always)]
    pub fn fake(&self, x: f32) -> f32 {
        self.scale * ((self.biased(x) - ROUND) - self.zero as f32)
    }

    /// `acc` plus the squared round-trip errors of eight values (times their weights), lane by
    /// lane.
    #[inline(always)]
    fn accumulate(
        &self,
        v: &[f32; LANES],
        w: Option<&[f32; LANES]>,
        mut acc: [f32; LANES],
    ) -> [f32; LANES] {
        for l in 0..LANES {
            let d = v[l] - self.fake(v[l]);
            acc[l] += match w {
                Some(w) => w[l] * d * d,
                None => d * d,
            };
        }
        acc
    }

    /// Squared round-trip error of `xs`, weighted by `imp` applied cyclically (imp[i % len]) so
    /// that a per-column vector weights a whole matrix or one group alike (see
    /// [`batch_sq_errors`] for how it is summed).
    #[inline(always)]
    pub fn sq_error(&self, xs: &[f32], imp: Option<&[f32]>) -> f64 {
        batch_sq_errors(std::slice::from_ref(self), xs, imp)[0]
    }
}

/// The smallest value on the f16 grid that is >= s (scales are stored as f16, and rounding up
/// never clips the range). Bit arithmetic on the f32, so it inlines into the search loop.
#[inline(always)]
fn round_up_f16(s: f32) -> Result<f32, String> {
    const F16_MAX: f32 = 65504.0;
    const F16_MIN_NORMAL: f32 = 6.103_515_6e-5; // 2^-14
    const SUBNORMAL_STEP: f32 = 5.960_464_5e-8; // 2^-24
    if s <= 0.0 {
        return Ok(0.0);
    }
    let up = if s < F16_MIN_NORMAL {
        (s / SUBNORMAL_STEP).ceil() * SUBNORMAL_STEP
    } else {
        // f16 keeps 10 of f32's 23 mantissa bits: clear the other 13, carry up if any were set.
        let bits = s.to_bits();
        let kept = bits & !0x1fff;
        f32::from_bits(if kept == bits { bits } else { kept + 0x2000 })
    };
    if up > F16_MAX || !up.is_finite() {
        return Err(format!(
            "scale {s:e} does not fit in f16 (weights larger than ~{F16_MAX:e})"
        ));
    }
    Ok(up)
}

/// Exact (min, max) of `xs`, or an error if any value is NaN/Inf.
#[inline(always)]
pub fn finite_range(xs: &[f32]) -> Result<(f32, f32), String> {
    let (mut lo, mut hi, mut bad) = (f32::INFINITY, f32::NEG_INFINITY, false);
    for &x in xs {
        lo = if x < lo { x } else { lo };
        hi = if x > hi { x } else { hi };
        bad |= !x.is_finite();
    }
    if bad {
        return Err("weights contain NaN or Inf".into());
    }
    if xs.is_empty() {
        return Ok((0.0, 0.0));
    }
    Ok((lo, hi))
}

/// Clip ratios `mse` tries first: dense near 1, where 4-8 bit optima sit, and reaching down to
/// 0.1 for rows whose range is set by a few far outliers.
const MSE_COARSE: [f32; 7] = [1.0, 0.85, 0.7, 0.5, 0.35, 0.2, 0.1];
/// Coarse ratios evaluated together: enough that the scan usually stops inside the first
/// batch, few enough that little is evaluated past the stop.
const MSE_COARSE_BATCH: usize = 3;
/// Extra ratios tried between the best coarse ratio's neighbours.
const MSE_REFINE: usize = 2;

/// Most clip ratios the mse search evaluates together.
const BATCH: usize = MSE_COARSE_BATCH;
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
                true,
            )?;
        }
        Ok(batch_sq_errors(&qs[..rs.len()], self.xs, self.imp))
    }
}

/// [`Quantizer::sq_error`] of `xs` under each of up to `BATCH` quantizers: f32 lanes over
/// runs of at most `RUN` values, f64 across runs. Each value is loaded once for all the
/// quantizers, whose sums are independent (one quantizer at a time, a short group is
/// latency-bound). Large inputs (whole tensors) are summed in parallel over fixed chunks,
/// reduced in order, so the result does not depend on the thread count.
#[inline(always)]
fn batch_sq_errors(qs: &[Quantizer], xs: &[f32], imp: Option<&[f32]>) -> [f64; BATCH] {
    if xs.len() > PAR_ERROR {
        return par_batch_sq_errors(qs, xs, imp);
    }
    const L: usize = LANES;
    let lanes = |v: &[f32]| -> [f32; L] { v.try_into().expect("a chunk of L values") };
    let mut total = [0f64; BATCH];
    // Rows of the matrix (or the one group): each starts at column 0 of `imp`.
    let row_len = imp.map_or(xs.len().max(1), |w| w.len());
    for row in xs.chunks(row_len) {
        for (i, run) in row.chunks(RUN).enumerate() {
            let w = imp.map(|w| &w[i * RUN..i * RUN + run.len()]);
            let mut acc = [[0f32; L]; BATCH];
            let full = run.len() / L * L;
            for (j, v) in run[..full].chunks_exact(L).enumerate() {
                let v = lanes(v);
                // Unswitched by hand, so that the unweighted loop has no multiply by 1.
                match w {
                    None => {
                        for (q, a) in qs.iter().zip(acc.iter_mut()) {
                            *a = q.accumulate(&v, None, *a);
                        }
                    }
                    Some(w) => {
                        let w = lanes(&w[j * L..(j + 1) * L]);
                        for (q, a) in qs.iter().zip(acc.iter_mut()) {
                            *a = q.accumulate(&v, Some(&w), *a);
                        }
                    }
                }
            }
            for (q, a) in qs.iter().zip(acc.iter_mut()) {
                for (k, &x) in run[full..].iter().enumerate() {
                    let d = x - q.fake(x);
                    a[0] += w.map_or(1.0, |w| w[full + k]) * d * d;
                }
            }
            for (t, a) in total.iter_mut().zip(&acc) {
                *t += sum_lanes(a);
            }
        }
    }
    total
}

/// [`batch_sq_errors`] of a whole tensor, over fixed chunks in parallel, reduced in order.
#[inline(never)]
fn par_batch_sq_errors(qs: &[Quantizer], xs: &[f32], imp: Option<&[f32]>) -> [f64; BATCH] {
    let chunk = imp.map_or(PAR_ERROR, |w| w.len() * (PAR_ERROR / w.len()).max(1));
    let parts: Vec<[f64; BATCH]> = xs
        .par_chunks(chunk)
        .map(|c| batch_sq_errors(qs, c, imp))
        .collect();
    let mut total = [0f64; BATCH];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
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
        Quantizer::for_range(fmt.bits, fmt.scheme, lo, hi, true)
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
            let q = Quantizer::for_range(self.bits, self.scheme, lo, hi, false)?;
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
pub fn activation_range(cal: Calibrator, h: &Histogram, bits: u32, symmetric: bool) -> (f32, f32) {
    if h.count() == 0 {
        return (0.0, 0.0);
    }
    let clip = |t: f32| {
        if symmetric {
            (-t, t)
        } else {
            (h.min().max(-t), h.max().min(t))
        }
    };
    match cal {
        Calibrator::MinMax => clip(h.absmax()),
        Calibrator::Percentile(p) => {
            let p = p as f64 / 10_000.0;
            if symmetric {
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
            let scheme = if symmetric {
                Scheme::Symmetric
            } else {
                Scheme::Asymmetric
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

#[cfg(test)]
mod tests {
    use super::round_up_f16;
    use half::f16;

    #[test]
    fn round_up_f16_is_the_next_f16_at_or_above() {
        let mut x = 1e-9f32;
        while x < 60000.0 {
            let up = round_up_f16(x).unwrap();
            let h = f16::from_f32(up);
            assert_eq!(h.to_f32(), up, "{x}: {up} is on the f16 grid");
            assert!(up >= x, "{x}: {up}");
            let below = f16::from_bits(h.to_bits() - 1).to_f32();
            assert!(
                below < x,
                "{x}: {up} is the smallest f16 >= x (next below {below})"
            );
            x *= 1.0137;
        }
        assert_eq!(round_up_f16(0.0).unwrap(), 0.0);
        assert!(round_up_f16(70000.0).is_err());
    }
}
