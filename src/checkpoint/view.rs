//! Zero-copy views of one tensor in a mapped checkpoint, and their conversion to f32 / candle.

use super::codec::FloatType;
use crate::error::{Error, Result};
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

impl TensorView<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the dtype is one qpipe computes with (F32, F16, BF16).
    pub fn is_float(&self) -> bool {
        FloatType::from_dtype(self.dtype).is_some()
    }

    /// The float type, or an error naming the tensor and its unsupported dtype.
    pub fn float_type(&self) -> Result<FloatType> {
        FloatType::from_dtype(self.dtype).ok_or_else(|| {
            Error::unsupported(
                self.file,
                format!(
                    "tensor '{}' has dtype {:?}; qpipe computes with F32, F16 and BF16 only",
                    self.name, self.dtype
                ),
            )
        })
    }

    /// Decodes elements `start..start + out.len()` to f32 into `out`.
    ///
    /// Works in place on a caller buffer so that large tensors can be streamed in blocks
    /// without ever materialising the whole tensor in f32.
    pub fn decode_f32(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let t = self.float_type()?;
        let w = t.width();
        t.decode(&self.bytes[start * w..(start + out.len()) * w], out);
        Ok(())
    }

    /// Errors naming the tensor, the element and its value if any element is NaN or Inf: a
    /// model with one computes nothing but NaN, so loading refuses it before any work.
    pub fn check_finite(&self) -> Result<()> {
        let mut buf = [0f32; 4096];
        let mut at = 0;
        while at < self.numel() {
            let n = buf.len().min(self.numel() - at);
            self.decode_f32(at, &mut buf[..n])?;
            if let Some(i) = buf[..n].iter().position(|v| !v.is_finite()) {
                return Err(Error::invalid(
                    self.file,
                    format!(
                        "tensor '{}' holds {} at element {}",
                        self.name,
                        buf[i],
                        at + i
                    ),
                ));
            }
            at += n;
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
        let dtype = match self.float_type()? {
            FloatType::F32 => candle_core::DType::F32,
            FloatType::F16 => candle_core::DType::F16,
            FloatType::BF16 => candle_core::DType::BF16,
        };
        candle_core::Tensor::from_raw_buffer(self.bytes, dtype, self.shape, device).map_err(|e| {
            Error::invalid(
                self.file,
                format!(
                    "tensor '{}': cannot build a candle tensor: {}",
                    self.name,
                    crate::error::candle_message(&e)
                ),
            )
        })
    }
}
