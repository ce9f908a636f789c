//! Storage formats for one weight matrix: integer (2..8 bits), GGUF block types, or float.
//!
//! Every format knows its exact storage size for a shape (codes + scales + zero-points), so that
//! bits per weight are counted, never estimated.

pub use crate::checkpoint::FloatType;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How many weights share one scale (and zero-point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Granularity {
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per output row.
    Channel,
    /// One scale per run of this many weights along a row (32, 64, 128 or 256); a ragged last
    /// group covers the rest of the row.
    Group(usize),
}

/// The allowed group sizes.
pub const GROUP_SIZES: [usize; 4] = [32, 64, 128, 256];

impl Granularity {
    /// Weights per scale along a row of `cols` (`Tensor` counts as one group per row here;
    /// its single scale is repeated when it is expanded for kernels).
    pub fn group_len(self, cols: usize) -> usize {
        match self {
            Granularity::Group(g) => g.min(cols.max(1)),
            _ => cols.max(1),
        }
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Granularity::Tensor => f.write_str("tensor"),
            Granularity::Channel => f.write_str("channel"),
            Granularity::Group(n) => write!(f, "g{n}"),
        }
    }
}

impl FromStr for Granularity {
    type Err = String;

    /// Parses `tensor`, `channel` or `gN` (N one of [`GROUP_SIZES`]).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tensor" => Ok(Granularity::Tensor),
            "channel" => Ok(Granularity::Channel),
            g => g
                .strip_prefix('g')
                .and_then(|n| n.parse().ok())
                .filter(|n| GROUP_SIZES.contains(n))
                .map(Granularity::Group)
                .ok_or_else(|| {
                    format!("unknown granularity '{s}': expected tensor|channel|g32|g64|g128|g256")
                }),
        }
    }
}

/// How codes map to values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scheme {
    /// w = s * q, q in [-(2^(b-1)-1), 2^(b-1)-1]; stored as code q + 2^(b-1).
    Symmetric,
    /// w = s * (code - z), code in [0, 2^b - 1], integer zero-point z per scale.
    Asymmetric,
    /// Symmetric with s a power of two (shift-only dequantization on integer hardware).
    PowerOfTwo,
}

impl Scheme {
    /// Every scheme.
    pub const ALL: [Scheme; 3] = [Scheme::Symmetric, Scheme::Asymmetric, Scheme::PowerOfTwo];

    /// The name in format names: `sym`, `asym`, `pow2`.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Symmetric => "sym",
            Scheme::Asymmetric => "asym",
            Scheme::PowerOfTwo => "pow2",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheme {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scheme::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown scheme '{s}': expected sym|asym|pow2"))
    }
}

/// An integer format: bit width, granularity and scheme. Scales are stored as f16, zero-points as u8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IntFormat {
    /// Bits per code: 2, 3, 4, 5, 6 or 8.
    pub bits: u32,
    /// Weights per scale.
    pub granularity: Granularity,
    /// Code-to-value mapping.
    pub scheme: Scheme,
}

/// The allowed integer bit widths.
pub const INT_BITS: [u32; 6] = [2, 3, 4, 5, 6, 8];

impl IntFormat {
    /// Number of (scale, zero) groups for a [rows, cols] matrix.
    pub fn groups(&self, rows: usize, cols: usize) -> usize {
        match self.granularity {
            Granularity::Tensor => 1,
            g => rows * cols.div_ceil(g.group_len(cols)),
        }
    }

    /// Exact bytes: packed codes (rows padded to whole bytes), f16 scales, u8 zero-points.
    pub fn storage_bytes(&self, rows: usize, cols: usize) -> usize {
        let codes = rows * (cols * self.bits as usize).div_ceil(8);
        let groups = self.groups(rows, cols);
        let zeros = if self.scheme == Scheme::Asymmetric {
            groups
        } else {
            0
        };
        codes + 2 * groups + zeros
    }
}

/// GGUF block types (exact llama.cpp layouts, quantized through candle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GgufType {
    /// 8-bit, blocks of 32, one f16 scale.
    Q8_0,
    /// 5-bit symmetric, blocks of 32.
    Q5_0,
    /// 5-bit with min, blocks of 32.
    Q5_1,
    /// 4-bit symmetric, blocks of 32.
    Q4_0,
    /// 4-bit with min, blocks of 32.
    Q4_1,
    /// 2-bit k-quant, super-blocks of 256.
    Q2K,
    /// 3-bit k-quant, super-blocks of 256.
    Q3K,
    /// 4-bit k-quant, super-blocks of 256.
    Q4K,
    /// 5-bit k-quant, super-blocks of 256.
    Q5K,
    /// 6-bit k-quant, super-blocks of 256.
    Q6K,
}

impl GgufType {
    /// All GGUF types qpipe offers.
    pub const ALL: [GgufType; 10] = [
        GgufType::Q8_0,
        GgufType::Q5_0,
        GgufType::Q5_1,
        GgufType::Q4_0,
        GgufType::Q4_1,
        GgufType::Q2K,
        GgufType::Q3K,
        GgufType::Q4K,
        GgufType::Q5K,
        GgufType::Q6K,
    ];

    /// candle's dtype for this block type.
    pub fn ggml(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType as G;
        match self {
            GgufType::Q8_0 => G::Q8_0,
            GgufType::Q5_0 => G::Q5_0,
            GgufType::Q5_1 => G::Q5_1,
            GgufType::Q4_0 => G::Q4_0,
            GgufType::Q4_1 => G::Q4_1,
            GgufType::Q2K => G::Q2K,
            GgufType::Q3K => G::Q3K,
            GgufType::Q4K => G::Q4K,
            GgufType::Q5K => G::Q5K,
            GgufType::Q6K => G::Q6K,
        }
    }

    /// Weights per block (32, or 256 for k-quants).
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }

    fn name(self) -> &'static str {
        match self {
            GgufType::Q8_0 => "q8_0",
            GgufType::Q5_0 => "q5_0",
            GgufType::Q5_1 => "q5_1",
            GgufType::Q4_0 => "q4_0",
            GgufType::Q4_1 => "q4_1",
            GgufType::Q2K => "q2_k",
            GgufType::Q3K => "q3_k",
            GgufType::Q4K => "q4_k",
            GgufType::Q5K => "q5_k",
            GgufType::Q6K => "q6_k",
        }
    }
}

/// A storage format for one weight matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Format {
    /// qpipe integer format.
    Int(IntFormat),
    /// GGUF block type.
    Gguf(GgufType),
    /// Kept in float.
    Float(FloatType),
}

impl Format {
    /// Whether the format can store a [rows, cols] matrix; the error says why not.
    pub fn check(&self, rows: usize, cols: usize) -> Result<(), String> {
        if rows == 0 || cols == 0 {
            return Err(format!("{self} cannot store an empty {rows}x{cols} matrix"));
        }
        if let Format::Gguf(t) = self {
            let b = t.block_size();
            if !cols.is_multiple_of(b) {
                return Err(format!(
                    "{self} needs rows whose length is a multiple of {b}, got {cols}"
                ));
            }
        }
        Ok(())
    }

    /// Exact storage bytes for a [rows, cols] matrix (assumes `check` passed).
    pub fn storage_bytes(&self, rows: usize, cols: usize) -> usize {
        match self {
            Format::Int(f) => f.storage_bytes(rows, cols),
            Format::Gguf(t) => rows * cols / t.block_size() * t.ggml().type_size(),
            Format::Float(t) => rows * cols * t.width(),
        }
    }

    /// Bits per weight including scales and zero-points.
    pub fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        self.storage_bytes(rows, cols) as f64 * 8.0 / (rows * cols) as f64
    }

    /// Whether dividing a row by a constant before quantizing divides its stored values by the
    /// same constant (up to float rounding of the scales): every scale belongs to one row and
    /// may take any value. Not so for a per-tensor scale, nor for power-of-two scales.
    pub fn row_scalable(&self) -> bool {
        match self {
            Format::Int(f) => {
                f.granularity != Granularity::Tensor && f.scheme != Scheme::PowerOfTwo
            }
            Format::Gguf(_) | Format::Float(_) => true,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Int(i) => write!(f, "int{}-{}-{}", i.bits, i.granularity, i.scheme),
            Format::Gguf(t) => f.write_str(t.name()),
            Format::Float(FloatType::F32) => f.write_str("f32"),
            Format::Float(FloatType::F16) => f.write_str("f16"),
            Format::Float(FloatType::BF16) => f.write_str("bf16"),
        }
    }
}

impl FromStr for Format {
    type Err = String;

    /// Parses `int4-g32-asym`, `int8-channel-sym`, `int2-tensor-pow2`, `q4_k`, `f16`, ...
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "f32" => return Ok(Format::Float(FloatType::F32)),
            "f16" => return Ok(Format::Float(FloatType::F16)),
            "bf16" => return Ok(Format::Float(FloatType::BF16)),
            _ => {}
        }
        if let Some(t) = GgufType::ALL.iter().find(|t| t.name() == lower) {
            return Ok(Format::Gguf(*t));
        }
        let usage = "expected intB-GRAN-SCHEME (B in 2,3,4,5,6,8; GRAN tensor|channel|g32|g64|g128|g256; \
                     SCHEME sym|asym|pow2), a GGUF type (q8_0 q5_0 q5_1 q4_0 q4_1 q2_k q3_k q4_k q5_k q6_k) or f32|f16|bf16";
        let bad = || format!("unknown format '{s}': {usage}");
        let parts: Vec<&str> = lower.split('-').collect();
        let [bits, gran, scheme] = parts.as_slice() else {
            return Err(bad());
        };
        let bits: u32 = bits
            .strip_prefix("int")
            .and_then(|b| b.parse().ok())
            .ok_or_else(bad)?;
        if !INT_BITS.contains(&bits) {
            return Err(bad());
        }
        let granularity = gran.parse().map_err(|_| bad())?;
        let scheme = scheme.parse().map_err(|_| bad())?;
        Ok(Format::Int(IntFormat {
            bits,
            granularity,
            scheme,
        }))
    }
}

/// Whether an activation range is centred on zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symmetry {
    /// Zero-point 0, codes ±(2^(b-1) - 1): the range is ±absmax.
    Symmetric,
    /// Codes 0..2^b - 1 over [min, max] (widened to include 0).
    Asymmetric,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            "int4-g32-asym",
            "int8-channel-sym",
            "int2-tensor-pow2",
            "int3-g256-sym",
            "q4_k",
            "q8_0",
            "f16",
            "bf16",
        ] {
            assert_eq!(s.parse::<Format>().unwrap().to_string(), s);
        }
        for bad in [
            "int7-g32-sym",
            "int4-g48-sym",
            "int4-g32",
            "q7_k",
            "int4-g32-foo",
        ] {
            assert!(bad.parse::<Format>().is_err(), "{bad}");
        }
    }

    #[test]
    fn storage_bytes_are_exact() {
        let f: Format = "int4-g32-asym".parse().unwrap();
        // 576x576: codes 576*288 B, 576*18 groups of (2 B scale + 1 B zero).
        assert_eq!(f.storage_bytes(576, 576), 576 * 288 + 576 * 18 * 3);
        assert!((f.bits_per_weight(576, 576) - 4.75).abs() < 1e-12);
        let f: Format = "int3-channel-sym".parse().unwrap();
        // 10 codes of 3 bits = 30 bits -> 4 bytes per row, plus one f16 scale per row.
        assert_eq!(f.storage_bytes(7, 10), 7 * 4 + 7 * 2);
        let f: Format = "int8-tensor-sym".parse().unwrap();
        assert_eq!(f.storage_bytes(4, 4), 16 + 2);
        // Ragged last group: 100 cols in g64 -> 2 groups per row.
        let f: Format = "int4-g64-sym".parse().unwrap();
        assert_eq!(f.storage_bytes(3, 100), 3 * 50 + 3 * 2 * 2);
        // GGUF sizes are llama.cpp's: Q4_0 = 18 bytes per 32 weights, Q4_K = 144 per 256.
        assert_eq!(
            Format::Gguf(GgufType::Q4_0).storage_bytes(2, 64),
            2 * 2 * 18
        );
        assert_eq!(Format::Gguf(GgufType::Q4K).storage_bytes(1, 256), 144);
        assert_eq!(Format::Gguf(GgufType::Q6K).bits_per_weight(1, 256), 6.5625);
    }

    #[test]
    fn k_quants_need_rows_divisible_by_256() {
        let q4k = Format::Gguf(GgufType::Q4K);
        assert!(q4k.check(576, 1536).is_ok());
        let e = q4k.check(1536, 576).unwrap_err();
        assert!(e.contains("multiple of 256, got 576"), "{e}");
        assert!(Format::Gguf(GgufType::Q4_0).check(4, 576).is_ok());
        assert!(Format::Gguf(GgufType::Q4_0).check(4, 100).is_err());
    }
}
