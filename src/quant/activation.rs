//! Per-tensor activation fake-quantization (A8 / A16) applied to a layer's input in a forward
//! pass, with the range chosen by any calibrator from the layer's input histogram.
//!
//! Activation scales stay f32 (runtimes keep them in registers, not in the checkpoint), and 16
//! bits need zero-points beyond u8, so this is separate from the weight [`super::Quantizer`].

use super::calibrate::activation_range;
use super::{Calibrator, Histogram};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Activation bit widths qpipe simulates.
pub const ACTIVATION_BITS: [u32; 2] = [8, 16];

/// A per-tensor affine quantizer for activations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActivationQuant {
    /// 8 or 16.
    pub bits: u32,
    /// Symmetric (zero-point 0, codes ±(2^(b-1) - 1)) or asymmetric (codes 0..2^b - 1).
    pub symmetric: bool,
    /// Step between codes.
    pub scale: f32,
    /// Code of 0.0.
    pub zero: f32,
}

impl ActivationQuant {
    /// The quantizer covering `[lo, hi]` (widened to include 0).
    pub fn new(bits: u32, symmetric: bool, lo: f32, hi: f32) -> Result<Self, String> {
        if !ACTIVATION_BITS.contains(&bits) {
            return Err(format!(
                "activations are quantized to 8 or 16 bits, not {bits}"
            ));
        }
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(format!(
                "activation range [{lo}, {hi}] is not a finite interval"
            ));
        }
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let (scale, zero) = if symmetric {
            let qmax = ((1u32 << (bits - 1)) - 1) as f32;
            (lo.abs().max(hi) / qmax, 0.0)
        } else {
            let levels = ((1u64 << bits) - 1) as f32;
            let s = (hi - lo) / levels;
            (s, if s > 0.0 { (-lo / s).round() } else { 0.0 })
        };
        Ok(ActivationQuant {
            bits,
            symmetric,
            scale,
            zero,
        })
    }

    /// The quantizer `cal` picks from the input histogram `h`.
    pub fn calibrated(
        cal: Calibrator,
        h: &Histogram,
        bits: u32,
        symmetric: bool,
    ) -> Result<Self, String> {
        let (lo, hi) = activation_range(cal, h, bits, symmetric);
        Self::new(bits, symmetric, lo, hi)
    }

    /// The code range `(min, max)`.
    fn codes(&self) -> (f32, f32) {
        if self.symmetric {
            let q = ((1u32 << (self.bits - 1)) - 1) as f32;
            (-q, q)
        } else {
            (0.0, ((1u64 << self.bits) - 1) as f32)
        }
    }

    /// `x` quantized and dequantized: clamp(round(x / scale) + zero) - zero, times scale.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.scale == 0.0 {
            return x.zeros_like();
        }
        let (lo, hi) = self.codes();
        let inv = 1.0 / self.scale as f64;
        x.affine(inv, self.zero as f64)?
            .round()?
            .clamp(lo, hi)?
            .affine(self.scale as f64, -(self.zero as f64) * self.scale as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values() -> Vec<f32> {
        (0..4001).map(|i| (i as f32 - 2000.0) / 997.0).collect()
    }

    #[test]
    fn error_is_at_most_half_a_step_inside_the_range_and_clipped_outside() {
        let xs = values();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        for (bits, symmetric) in [(8, true), (8, false), (16, true), (16, false)] {
            let q = ActivationQuant::new(bits, symmetric, -1.0, 1.5).unwrap();
            let out: Vec<f32> = q.apply(&t).unwrap().to_vec1().unwrap();
            let (lo, hi) = if symmetric { (-1.5, 1.5) } else { (-1.0, 1.5) };
            for (&x, &y) in xs.iter().zip(&out) {
                let clipped = x.clamp(lo, hi);
                let tol = q.scale / 2.0 + 1e-6 * x.abs().max(1.0);
                assert!((y - clipped).abs() <= tol, "{bits} {symmetric}: {x} -> {y}");
            }
        }
        // 16 bits is ~256x finer than 8.
        let a8 = ActivationQuant::new(8, false, -1.0, 1.5).unwrap();
        let a16 = ActivationQuant::new(16, false, -1.0, 1.5).unwrap();
        assert!((a8.scale / a16.scale - 257.0).abs() < 1.0);
    }

    #[test]
    fn zero_is_exact_and_bad_requests_are_refused() {
        let q = ActivationQuant::new(8, false, -0.3, 2.0).unwrap();
        let z = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(q.apply(&z).unwrap().to_vec1::<f32>().unwrap(), vec![0.0; 3]);
        assert!(ActivationQuant::new(4, true, -1.0, 1.0).is_err());
        assert!(ActivationQuant::new(8, true, f32::NAN, 1.0).is_err());
    }
}
