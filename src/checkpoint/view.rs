//! Zero-copy views of one tensor in a mapped checkpoint, and their conversion to f32 / candle.

use crate::error::{Error, Result};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use safetensors::Dtype;
use std::path::Path;

/// One tensor's metadata and raw little-endian bytes, borrowed from the memory map.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Tensor name as stored in the checkpoint.
    pub name: &'a str,
    /// Element type as stored.
    pub dtype: Dtype,
    /// Shape, outermost dimension first.
    pub shape: &'a [usize],
    /// Raw bytes; not necessarily aligned to the element size.
    pub bytes: &'a [u8],
    /// The file these bytes live in (for error messages).
    pub file: &'a Path,
}

/// Element types qpipe can compute with.
pub const FLOAT_DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

impl TensorView<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the dtype is one qpipe computes with (F32, F16, BF16).
    pub fn is_float(&self) -> bool {
        FLOAT_DTYPES.contains(&self.dtype)
    }

    fn require_float(&self) -> Result<()> {
        if self.is_float() {
            Ok(())
        } else {
            Err(Error::unsupported(
                self.file,
                format!(
                    "tensor '{}' has dtype {:?}; qpipe computes with F32, F16 and BF16 only",
                    self.name, self.dtype
                ),
            ))
        }
    }

    /// Decodes elements `start..start + out.len()` to f32 into `out`.
    ///
    /// Works in place on a caller buffer so that large tensors can be streamed in blocks
    /// without ever materialising the whole tensor in f32.
    pub fn decode_f32(&self, start: usize, out: &mut [f32]) -> Result<()> {
        self.require_float()?;
        let width = self.dtype.bitsize() / 8;
        let bytes = &self.bytes[start * width..(start + out.len()) * width];
        match self.dtype {
            Dtype::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Dtype::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            _ => {
                // Blocks of f16 through half's SIMD slice conversion (F16C when the CPU has it).
                let mut halves = [f16::ZERO; 256];
                for (o, c) in out.chunks_mut(256).zip(bytes.chunks(512)) {
                    let h = &mut halves[..o.len()];
                    for (x, b) in h.iter_mut().zip(c.chunks_exact(2)) {
                        *x = f16::from_bits(u16::from_le_bytes([b[0], b[1]]));
                    }
                    h.convert_to_f32_slice(o);
                }
            }
        }
        Ok(())
    }

    /// The whole tensor as an f32 vector (allocates numel x 4 bytes; use for single tensors).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.numel()];
        self.decode_f32(0, &mut out)?;
        Ok(out)
    }

    /// Converts to a candle tensor in the stored dtype (F32, F16 or BF16) on `device`.
    pub fn to_candle(&self, device: &candle_core::Device) -> Result<candle_core::Tensor> {
        self.require_float()?;
        let dtype = match self.dtype {
            Dtype::F32 => candle_core::DType::F32,
            Dtype::F16 => candle_core::DType::F16,
            _ => candle_core::DType::BF16,
        };
        candle_core::Tensor::from_raw_buffer(self.bytes, dtype, self.shape, device).map_err(|e| {
            Error::invalid(
                self.file,
                format!("tensor '{}': cannot build a candle tensor: {e}", self.name),
            )
        })
    }
}
