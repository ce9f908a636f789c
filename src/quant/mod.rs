//! Quantization: formats, calibrators, and quantize/dequantize of weight matrices.
//!
//! One entry point per direction for every format: [`quantize`] produces a [`QuantizedTensor`]
//! whose `storage_bytes` are exact, and [`fake_quantize`] gives the values a forward pass sees
//! (quantize then dequantize) without packing, for the search's inner loop.

pub mod activation;
pub mod calibrate;
pub mod format;
pub mod gguf;
pub mod histogram;
pub mod int;
pub mod quantizer;

pub use activation::{Activation, ActivationQuant};

/// Serde (de)serialisation of a value as its display name (`int4-g32-asym`, `q4_k`, `mse`,
/// `percentile:99.9`), for files people read: `#[serde(with = "crate::quant::by_name")]`.
pub mod by_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    /// Writes the value's name.
    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    /// Parses a name.
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}
pub use calibrate::Calibrator;
pub use format::{FloatType, Format, GgufType, Granularity, IntFormat, Scheme, Symmetry};
pub use histogram::Histogram;
pub use int::IntQuantized;
pub use quantizer::{Quantizer, ScaleRounding};

/// A weight matrix stored in some format.
pub enum QuantizedTensor {
    /// qpipe integer format.
    Int(IntQuantized),
    /// GGUF block format (candle's storage, llama.cpp layout).
    Gguf(candle_core::quantized::QTensor),
    /// Float passthrough: little-endian bytes in `FloatType`.
    Float(FloatType, Vec<u8>),
}

impl QuantizedTensor {
    /// Exact bytes this tensor occupies in storage.
    pub fn storage_bytes(&self) -> usize {
        match self {
            QuantizedTensor::Int(q) => q.storage_bytes(),
            QuantizedTensor::Gguf(q) => q.storage_size_in_bytes(),
            QuantizedTensor::Float(_, b) => b.len(),
        }
    }

    /// Row-major f32 values.
    pub fn dequantize(&self) -> Result<Vec<f32>, String> {
        match self {
            QuantizedTensor::Int(q) => q.dequantize(),
            QuantizedTensor::Gguf(q) => gguf::dequantize(q),
            QuantizedTensor::Float(t, b) => {
                let mut out = vec![0f32; b.len() / t.width()];
                t.decode(b, &mut out);
                Ok(out)
            }
        }
    }
}

/// Quantizes row-major `w` [rows, cols] into `format`. `cal` chooses integer ranges (GGUF types
/// run llama.cpp's own search); `imp` is an optional per-column importance vector.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    format: Format,
    cal: Calibrator,
    imp: Option<&[f32]>,
) -> Result<QuantizedTensor, String> {
    format.check(rows, cols)?;
    match format {
        Format::Int(f) => int::quantize(w, rows, cols, f, cal, imp).map(QuantizedTensor::Int),
        Format::Gguf(t) => gguf::quantize(w, rows, cols, t, imp).map(QuantizedTensor::Gguf),
        Format::Float(t) => {
            quantizer::finite_range(w)?;
            let bytes = t.encode(w);
            Ok(QuantizedTensor::Float(t, bytes))
        }
    }
}

/// The values a forward pass sees after storing `w` in `format` (quantize, then dequantize).
pub fn fake_quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    format: Format,
    cal: Calibrator,
    imp: Option<&[f32]>,
) -> Result<Vec<f32>, String> {
    format.check(rows, cols)?;
    match format {
        Format::Int(f) => int::fake_quantize(w, rows, cols, f, cal, imp),
        _ => quantize(w, rows, cols, format, cal, imp)?.dequantize(),
    }
}
