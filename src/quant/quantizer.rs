//! The affine integer quantizer a calibrated range defines: built from the range (its scale
//! rounded up to the f16 it is stored as), code and round trip of a value, and the squared
//! round-trip error that the mse calibration minimises, evaluated for a batch of quantizers in
//! one pass over the values.

use super::format::Scheme;
use rayon::prelude::*;

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
/// Most quantizers [`batch_sq_errors`] evaluates in one pass over the values. It is the mse
/// search's batch of clip ratios: enough that its coarse scan usually stops inside the first
/// batch, few enough that little is evaluated past the stop.
pub(super) const BATCH: usize = 3;

/// The pairwise f32 sum of eight lanes, as f64.
#[inline(always)]
fn sum_lanes(a: &[f32; LANES]) -> f64 {
    (((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))) as f64
}

/// How a quantizer's scale is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRounding {
    /// Up to the next f16, as weight scales are stored, so the range stays covered.
    UpToF16,
    /// Kept as computed (scales that are never stored, e.g. while searching a histogram).
    Exact,
}

impl Quantizer {
    /// The quantizer covering [lo, hi] with `bits` and `scheme`, its scale rounded as `scale`
    /// says.
    #[inline(always)]
    pub fn for_range(
        bits: u32,
        scheme: Scheme,
        lo: f32,
        hi: f32,
        scale: ScaleRounding,
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
        let scale = match scale {
            ScaleRounding::UpToF16 => round_up_f16(raw)?,
            ScaleRounding::Exact => raw,
        };
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

/// [`Quantizer::sq_error`] of `xs` under each of up to `BATCH` quantizers: f32 lanes over
/// runs of at most `RUN` values, f64 across runs. Each value is loaded once for all the
/// quantizers, whose sums are independent (one quantizer at a time, a short group is
/// latency-bound). Large inputs (whole tensors) are summed in parallel over fixed chunks,
/// reduced in order, so the result does not depend on the thread count.
#[inline(always)]
pub(super) fn batch_sq_errors(qs: &[Quantizer], xs: &[f32], imp: Option<&[f32]>) -> [f64; BATCH] {
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
