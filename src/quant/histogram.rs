//! Signed value histograms with 2048 bins per sign, for activation calibration.
//!
//! The range is [-R, R] with R a power of two: when new data exceeds it, R doubles and adjacent
//! bin pairs merge, which is exact (no re-binning by interpolation), so adding data in batches
//! or merging histograms in a fixed order gives the same bins as one pass.

use serde::{Deserialize, Serialize};

/// Bins on each side of zero (so magnitude histograms have this many bins).
pub const MAG_BINS: usize = 2048;
const BINS: usize = 2 * MAG_BINS;
/// Smallest range, so an all-zero input still has a well-defined bin width.
const MIN_RANGE: f32 = 1.0 / (1u64 << 40) as f32;

/// A histogram of finite values plus their exact count, min and max.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    bins: Vec<u64>,
    range: f32,
    count: u64,
    min: f32,
    max: f32,
    nonfinite: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bins: vec![0; BINS],
            range: MIN_RANGE,
            count: 0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            nonfinite: 0,
        }
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// A histogram of `xs`.
    pub fn of(xs: &[f32]) -> Self {
        let mut h = Self::new();
        h.add(xs);
        h
    }

    /// Doubles the range: old bin i lies inside new bin BINS/4 + i/2.
    fn double(&mut self) {
        let mut merged = vec![0u64; BINS];
        for (i, &c) in self.bins.iter().enumerate() {
            merged[BINS / 4 + i / 2] += c;
        }
        self.bins = merged;
        self.range *= 2.0;
    }

    /// Adds the finite values of `xs`; NaN/Inf are counted separately and otherwise ignored.
    pub fn add(&mut self, xs: &[f32]) {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &x in xs {
            if x.is_finite() {
                lo = lo.min(x);
                hi = hi.max(x);
            } else {
                self.nonfinite += 1;
            }
        }
        if lo > hi {
            return;
        }
        while lo.abs().max(hi.abs()) >= self.range {
            self.double();
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        let inv_w = BINS as f32 / (2.0 * self.range);
        for &x in xs.iter().filter(|x| x.is_finite()) {
            let i = ((x + self.range) * inv_w) as usize;
            self.bins[i.min(BINS - 1)] += 1;
            self.count += 1;
        }
    }

    /// Adds `other`'s counts (exactly: both are brought to the larger range first).
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            self.nonfinite += other.nonfinite;
            return;
        }
        let mut o = other.clone();
        while self.range < o.range {
            self.double();
        }
        while o.range < self.range {
            o.double();
        }
        for (a, b) in self.bins.iter_mut().zip(&o.bins) {
            *a += b;
        }
        self.count += o.count;
        self.nonfinite += o.nonfinite;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// Number of finite values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Number of NaN/Inf values seen (not binned).
    pub fn nonfinite(&self) -> u64 {
        self.nonfinite
    }

    /// Smallest finite value (+inf when empty).
    pub fn min(&self) -> f32 {
        self.min
    }

    /// Largest finite value (-inf when empty).
    pub fn max(&self) -> f32 {
        self.max
    }

    /// Largest finite |x|.
    pub fn absmax(&self) -> f32 {
        if self.count == 0 {
            0.0
        } else {
            self.min.abs().max(self.max.abs())
        }
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> f32 {
        2.0 * self.range / BINS as f32
    }

    /// Counts of |x| in `MAG_BINS` bins of `bin_width()` starting at 0.
    pub fn magnitudes(&self) -> Vec<u64> {
        (0..MAG_BINS)
            .map(|k| self.bins[MAG_BINS + k] + self.bins[MAG_BINS - 1 - k])
            .collect()
    }

    /// Signed bins as (centre, count) pairs, for error integrals.
    pub fn centres(&self) -> impl Iterator<Item = (f32, u64)> + '_ {
        let w = self.bin_width();
        self.bins
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(move |(i, &c)| (-self.range + (i as f32 + 0.5) * w, c))
    }

    /// The value below which a share `q` of the values lie (linear within a bin, clamped to
    /// the exact min/max).
    pub fn quantile(&self, q: f64) -> f32 {
        quantile_of(&self.bins, -self.range, self.bin_width(), self.count, q)
            .clamp(self.min, self.max)
    }

    /// The magnitude below which a share `q` of the |values| lie.
    pub fn abs_quantile(&self, q: f64) -> f32 {
        quantile_of(&self.magnitudes(), 0.0, self.bin_width(), self.count, q).min(self.absmax())
    }
}

fn quantile_of(bins: &[u64], start: f32, w: f32, count: u64, q: f64) -> f32 {
    let target = q.clamp(0.0, 1.0) * count as f64;
    let mut seen = 0f64;
    for (i, &c) in bins.iter().enumerate() {
        if c > 0 && seen + c as f64 >= target {
            let frac = ((target - seen) / c as f64) as f32;
            return start + (i as f32 + frac) * w;
        }
        seen += c as f64;
    }
    start + bins.len() as f32 * w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_merges_equal_one_pass() {
        let xs: Vec<f32> = (0..10_000)
            .map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0)
            .collect();
        let whole = Histogram::of(&xs);
        let mut batched = Histogram::new();
        // Small values first, so the range has to grow several times.
        let mut sorted = xs.clone();
        sorted.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
        for chunk in sorted.chunks(777) {
            batched.add(chunk);
        }
        assert_eq!(batched, whole);
        let mut merged = Histogram::of(&sorted[..100]);
        merged.merge(&Histogram::of(&sorted[100..]));
        assert_eq!(merged, whole);
        assert_eq!(
            (whole.count(), whole.min(), whole.max()),
            (10_000, -10.0, 10.0)
        );
    }

    #[test]
    fn quantiles_and_magnitudes() {
        let xs: Vec<f32> = (0..100_000)
            .map(|i| i as f32 / 100_000.0 * 2.0 - 1.0)
            .collect();
        let h = Histogram::of(&xs);
        assert!((h.quantile(0.5)).abs() < 2e-3);
        assert!((h.quantile(0.9) - 0.8).abs() < 2e-3);
        assert!((h.abs_quantile(0.5) - 0.5).abs() < 2e-3);
        assert_eq!(h.magnitudes().iter().sum::<u64>(), 100_000);
        let mut nan = Histogram::of(&[1.0, f32::NAN, f32::INFINITY]);
        nan.add(&[]);
        assert_eq!((nan.count(), nan.nonfinite()), (1, 2));
    }
}
