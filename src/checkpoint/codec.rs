//! The float element types qpipe computes with, and their little-endian byte codecs: shared by
//! checkpoint views, the float passthrough formats and the test fixtures.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};

/// A float element type: F32, F16 or BF16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FloatType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl FloatType {
    /// The float type of a safetensors dtype, if it is one qpipe computes with.
    pub fn from_dtype(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(FloatType::F32),
            Dtype::F16 => Some(FloatType::F16),
            Dtype::BF16 => Some(FloatType::BF16),
            _ => None,
        }
    }

    /// The safetensors dtype.
    pub fn dtype(self) -> Dtype {
        match self {
            FloatType::F32 => Dtype::F32,
            FloatType::F16 => Dtype::F16,
            FloatType::BF16 => Dtype::BF16,
        }
    }

    /// Bytes per element.
    pub fn width(self) -> usize {
        if self == FloatType::F32 {
            4
        } else {
            2
        }
    }

    /// Decodes `out.len()` elements from `bytes` (which may be unaligned).
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            FloatType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            FloatType::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            FloatType::F16 => {
                // Blocks of f16 through half's SIMD slice conversion (F16C when the CPU has it).
                let mut halves = [f16::ZERO; 256];
                for (o, c) in out.chunks_mut(256).zip(bytes.chunks(512)) {
                    let h = &mut halves[..o.len()];
                    for (x, b) in h.iter_mut().zip(c.chunks_exact(2)) {
                        *x = f16::from_le_bytes([b[0], b[1]]);
                    }
                    h.convert_to_f32_slice(o);
                }
            }
        }
    }

    /// Encodes `values` (rounding to nearest for the 16-bit types).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            FloatType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            FloatType::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            FloatType::BF16 => values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}
