//! Activation formats ([`Activation`]: float, A8, A16) and the per-tensor activation
//! fake-quantization applied to a layer's input in a forward pass, with the range chosen by any
//! calibrator from the layer's input histogram.
//!
//! Activation scales stay f32 (runtimes keep them in registers, not in the checkpoint), and 16
//! bits need zero-points beyond u8, so this is separate from the weight [`super::Quantizer`].

use super::calibrate::activation_range;
use super::format::Symmetry;
use super::{Calibrator, Histogram};
use candle_core::Tensor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The format of a matmul's input activations. Serialized by name (`float`, `a8`, `a16`), as
/// target rules and cost estimates write it; genomes keep their bit-width encoding through
/// [`by_bits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Not quantized.
    Float,
    /// 8-bit integers.
    A8,
    /// 16-bit integers.
    A16,
}

impl Activation {
    /// Every activation format.
    pub const ALL: [Activation; 3] = [Activation::Float, Activation::A8, Activation::A16];

    /// Bits per value when quantized; `None` for float.
    pub fn bits(self) -> Option<u32> {
        match self {
            Activation::Float => None,
            Activation::A8 => Some(8),
            Activation::A16 => Some(16),
        }
    }

    /// The quantized format of `bits` bits, if qpipe simulates it (8 or 16).
    pub fn quantized(bits: u32) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.bits() == Some(bits))
    }

    /// The lowercase name rules and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Float => "float",
            Activation::A8 => "a8",
            Activation::A16 => "a16",
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Activation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Activation::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("'{s}' is not an activation format (float, a8, a16)"))
    }
}

/// Serde of per-layer activations as bit widths (`null` for float, `8`, `16`), the encoding
/// genomes have in `qpipe.json` and search state files:
/// `#[serde(with = "crate::quant::activation::by_bits")]` on a `Vec<Activation>`.
pub mod by_bits {
    use super::*;

    /// Writes each activation's bits.
    pub fn serialize<S: Serializer>(v: &[Activation], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| a.bits()))
    }

    /// Reads bit widths; anything but null, 8 or 16 is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Activation>, D::Error> {
        Vec::<Option<u32>>::deserialize(d)?
            .into_iter()
            .map(|bits| match bits {
                None => Ok(Activation::Float),
                Some(b) => Activation::quantized(b).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "activations are quantized to 8 or 16 bits, not {b}"
                    ))
                }),
            })
            .collect()
    }
}

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
    pub fn new(bits: u32, symmetry: Symmetry, lo: f32, hi: f32) -> Result<Self, String> {
        let symmetric = symmetry == Symmetry::Symmetric;
        if Activation::quantized(bits).is_none() {
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
        // A range too small for a normal step (an input that was always 0) gets the smallest
        // normal one: every value of the range still quantizes to itself, and 1 / scale stays
        // finite.
        let (scale, zero) = if symmetric {
            let qmax = ((1u32 << (bits - 1)) - 1) as f32;
            ((lo.abs().max(hi) / qmax).max(f32::MIN_POSITIVE), 0.0)
        } else {
            let levels = ((1u64 << bits) - 1) as f32;
            let s = ((hi - lo) / levels).max(f32::MIN_POSITIVE);
            (s, (-lo / s).round().min(levels))
        };
        Ok(ActivationQuant {
            bits,
            symmetric,
            scale,
            zero,
        })
    }

    /// Checks a quantizer read from a file: 8 or 16 bits, a normal positive scale whose
    /// reciprocal is finite, and a zero-point that is a code (0 when symmetric).
    pub fn validate(&self) -> Result<(), String> {
        if Activation::quantized(self.bits).is_none() {
            return Err(format!("{} bits (8 or 16 are supported)", self.bits));
        }
        if !(self.scale.is_normal() && self.scale > 0.0 && (1.0 / self.scale).is_finite()) {
            return Err(format!(
                "scale {:e} is not a positive normal step",
                self.scale
            ));
        }
        let (_, top) = self.codes();
        let zero_ok = if self.symmetric {
            self.zero == 0.0
        } else {
            self.zero.fract() == 0.0 && (0.0..=top).contains(&self.zero)
        };
        if !zero_ok {
            return Err(format!(
                "zero-point {} is not a code of {} {}-bit codes",
                self.zero,
                if self.symmetric {
                    "symmetric"
                } else {
                    "unsigned"
                },
                self.bits
            ));
        }
        Ok(())
    }

    /// The quantizer `cal` picks from the input histogram `h`.
    pub fn calibrated(
        cal: Calibrator,
        h: &Histogram,
        bits: u32,
        symmetry: Symmetry,
    ) -> Result<Self, String> {
        let (lo, hi) = activation_range(cal, h, bits, symmetry);
        Self::new(bits, symmetry, lo, hi)
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
        use Symmetry::{Asymmetric, Symmetric};
        for (bits, symmetry) in [
            (8, Symmetric),
            (8, Asymmetric),
            (16, Symmetric),
            (16, Asymmetric),
        ] {
            let q = ActivationQuant::new(bits, symmetry, -1.0, 1.5).unwrap();
            let symmetric = symmetry == Symmetric;
            let out: Vec<f32> = q.apply(&t).unwrap().to_vec1().unwrap();
            let (lo, hi) = if symmetric { (-1.5, 1.5) } else { (-1.0, 1.5) };
            for (&x, &y) in xs.iter().zip(&out) {
                let clipped = x.clamp(lo, hi);
                let tol = q.scale / 2.0 + 1e-6 * x.abs().max(1.0);
                assert!((y - clipped).abs() <= tol, "{bits} {symmetric}: {x} -> {y}");
            }
        }
        // 16 bits is ~256x finer than 8.
        let a8 = ActivationQuant::new(8, Symmetry::Asymmetric, -1.0, 1.5).unwrap();
        let a16 = ActivationQuant::new(16, Symmetry::Asymmetric, -1.0, 1.5).unwrap();
        assert!((a8.scale / a16.scale - 257.0).abs() < 1.0);
    }

    #[test]
    fn activations_keep_their_names_and_bit_widths_in_files() {
        for (a, name, bits) in [
            (Activation::Float, "float", "null"),
            (Activation::A8, "a8", "8"),
            (Activation::A16, "a16", "16"),
        ] {
            assert_eq!(a.to_string(), name);
            assert_eq!(name.parse::<Activation>().unwrap(), a);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::to_string(&a.bits()).unwrap(), bits);
            if let Some(b) = a.bits() {
                assert_eq!(Activation::quantized(b), Some(a));
            }
        }
        #[derive(Serialize, Deserialize)]
        struct Layers(#[serde(with = "by_bits")] Vec<Activation>);
        let json = "[null,16,8]";
        let layers: Layers = serde_json::from_str(json).unwrap();
        assert_eq!(
            layers.0,
            [Activation::Float, Activation::A16, Activation::A8]
        );
        assert_eq!(serde_json::to_string(&layers).unwrap(), json);
        assert!(serde_json::from_str::<Layers>("[4]").is_err());
        assert!("a4".parse::<Activation>().is_err());
        assert_eq!(Activation::quantized(4), None);
    }

    #[test]
    fn zero_is_exact_and_bad_requests_are_refused() {
        let q = ActivationQuant::new(8, Symmetry::Asymmetric, -0.3, 2.0).unwrap();
        let z = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(q.apply(&z).unwrap().to_vec1::<f32>().unwrap(), vec![0.0; 3]);
        assert!(ActivationQuant::new(4, Symmetry::Symmetric, -1.0, 1.0).is_err());
        assert!(ActivationQuant::new(8, Symmetry::Symmetric, f32::NAN, 1.0).is_err());
    }
}
