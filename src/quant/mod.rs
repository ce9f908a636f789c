//! Quantization: formats, calibrators, and quantize/dequantize of weight matrices.
//!
//! One entry point per direction for every format: [`quantize`] produces a [`QuantizedTensor`]
//! whose `storage_bytes` are exact, and [`fake_quantize`] gives the values a forward pass sees
//! (quantize then dequantize) without packing, for the search's inner loop.

pub mod activation;
pub mod blocks;
pub mod calibrate;
pub mod format;
pub mod gguf;
pub mod gptq;
pub mod histogram;
pub mod int;
pub mod kquants;
pub mod quantizer;
pub mod transform;

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
pub use gptq::{Factor, Hessian};
pub use histogram::Histogram;
pub use int::IntQuantized;
pub use quantizer::{Quantizer, ScaleRounding};
pub use transform::{Rescale, Transform};

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

/// How a weight's values are rounded onto its format's grid: a gene of the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Rounding {
    /// Each value to its nearest grid point (after the calibrator's clip search).
    #[default]
    Nearest,
    /// GPTQ: column by column, each column's error compensated by the columns after it
    /// (needs the layer's input Hessian).
    Gptq,
}

impl Rounding {
    /// Both methods.
    pub const ALL: [Rounding; 2] = [Rounding::Nearest, Rounding::Gptq];

    /// Rounding to nearest (the default, left out of files).
    pub fn is_nearest(&self) -> bool {
        *self == Rounding::Nearest
    }

    /// Whether weights stored in `format` can be rounded this way.
    pub fn applies_to(self, format: Format) -> bool {
        match self {
            Rounding::Nearest => true,
            Rounding::Gptq => match format {
                Format::Int(_) => true,
                Format::Gguf(_) => true,
                Format::Float(_) => false,
            },
        }
    }
}

impl std::fmt::Display for Rounding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rounding::Nearest => "rtn",
            Rounding::Gptq => "gptq",
        })
    }
}

impl std::str::FromStr for Rounding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rtn" => Ok(Rounding::Nearest),
            "gptq" => Ok(Rounding::Gptq),
            _ => Err(format!("unknown rounding '{s}': expected rtn or gptq")),
        }
    }
}

/// The rounding of one weight: to nearest, or GPTQ with its input's factor.
fn gptq_for(format: Format, gptq: Option<&Factor>) -> Result<Option<&Factor>, String> {
    match gptq {
        Some(_) if !Rounding::Gptq.applies_to(format) => {
            Err(format!("GPTQ rounding does not apply to {format}"))
        }
        g => Ok(g),
    }
}

/// Quantizes row-major `w` [rows, cols] into `format`. `cal` chooses integer ranges (and for the
/// GGUF 32-blocks, `minmax` llama.cpp's reference scales, anything else qpipe's search; the
/// k-quants run llama.cpp's own); `imp` is an optional per-column importance vector; `gptq`,
/// the layer input's factor, rounds with GPTQ instead of to nearest.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    format: Format,
    cal: Calibrator,
    imp: Option<&[f32]>,
    gptq: Option<&Factor>,
) -> Result<QuantizedTensor, String> {
    format.check(rows, cols)?;
    let gptq = gptq_for(format, gptq)?;
    match format {
        Format::Int(f) => int::quantize(w, rows, cols, f, cal, imp, gptq).map(QuantizedTensor::Int),
        Format::Gguf(t) => {
            gguf::quantize(w, rows, cols, t, cal, imp, gptq).map(QuantizedTensor::Gguf)
        }
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
    gptq: Option<&Factor>,
) -> Result<Vec<f32>, String> {
    format.check(rows, cols)?;
    match format {
        Format::Int(f) => int::fake_quantize(w, rows, cols, f, cal, imp, gptq_for(format, gptq)?),
        _ => quantize(w, rows, cols, format, cal, imp, gptq)?.dequantize(),
    }
}
