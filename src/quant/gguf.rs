//! GGUF block formats through candle's `quantized` module (llama.cpp's exact layouts).
//!
//! candle implements llama.cpp's importance-matrix quantization for the k-quants only; the
//! legacy 32-blocks (Q4_0 ... Q8_0) are quantized without it (candle would panic if asked).

use super::format::{Format, GgufType};
use crate::error::candle_message;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

/// Quantizes row-major `w` [rows, cols] to `t`, using the per-column importance where the
/// block type supports it. The shape must pass `Format::check` first.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    t: GgufType,
    imp: Option<&[f32]>,
) -> Result<QTensor, String> {
    Format::Gguf(t).check(rows, cols)?;
    let src = Tensor::from_slice(w, (rows, cols), &Device::Cpu).map_err(|e| candle_message(&e))?;
    let q = match imp {
        Some(imp) if t.supports_importance() => QTensor::quantize_imatrix(&src, imp, t.ggml()),
        _ => QTensor::quantize(&src, t.ggml()),
    };
    q.map_err(|e| format!("{}: {}", Format::Gguf(t), candle_message(&e)))
}

/// Dequantizes a block-quantized tensor to row-major f32 with candle's own dequantizer.
pub fn dequantize(q: &QTensor) -> Result<Vec<f32>, String> {
    q.dequantize(&Device::Cpu)
        .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
        .map_err(|e| candle_message(&e))
}
