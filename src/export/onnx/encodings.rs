//! Qualcomm's encodings file beside `model.onnx`: AIMET's JSON (version 1.0.0), which the QNN
//! converters read with `--quantization_overrides` and Qualcomm AI Hub reads beside an ONNX
//! model, so they keep qpipe's grids instead of choosing their own.
//!
//! Every entry names a tensor of the exported graph: a weight by the output of its
//! DequantizeLinear (the weight's checkpoint name), an input by the tensor its
//! QuantizeLinear reads. AIMET's convention is `x = (q + offset) * scale` over unsigned codes
//! `q`, so `offset` is minus the zero-point of unsigned codes and `-2^(bw-1)` for signed
//! (symmetric) ones; per-block scales are listed per output channel, then per block along the
//! input, which is the packed checkpoint's own `[rows, groups]` order. `bw` is the width of
//! the ONNX type the codes are stored in, so a widened int3 weight is a 4-bit encoding whose
//! values use half its codes.

use crate::checkpoint::write::write_atomic;
use crate::error::{Error, Result};
use crate::quant::{ActivationQuant, Granularity, IntFormat, Scheme};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// AIMET's name for how many scales an encoding has (`PER_TENSOR`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum EncType {
    #[serde(rename = "PER_TENSOR")]
    Tensor,
    #[serde(rename = "PER_CHANNEL")]
    Channel,
    #[serde(rename = "PER_BLOCK")]
    Block,
}

/// One tensor's encoding (AIMET 1.0.0).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Encoding {
    name: String,
    dtype: &'static str,
    enc_type: EncType,
    bw: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_sym: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scale: Vec<f32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    offset: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    block_size: Option<usize>,
}

/// A tensor the encodings file cannot describe, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Omitted {
    /// The tensor.
    pub name: String,
    /// Why AIMET's format has no encoding for it.
    pub reason: String,
}

/// The encodings of a graph as it is built.
#[derive(Debug, Default)]
pub struct Collector {
    params: Vec<Encoding>,
    activations: Vec<Encoding>,
    omitted: Vec<Omitted>,
}

/// What [`Collector::write`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// The encodings file.
    pub path: PathBuf,
    /// Weights with an encoding.
    pub params: usize,
    /// Inputs with an encoding.
    pub activations: usize,
    /// Quantized tensors left to the graph's own QDQ nodes.
    pub omitted: Vec<Omitted>,
}

impl Collector {
    /// The weight `name` (of `cols` inputs per output channel) stored with `format`'s grid in
    /// `bw`-bit ONNX codes: its scales and zero-points row-major `[rows, groups]`.
    pub fn weight(
        &mut self,
        name: &str,
        format: IntFormat,
        bw: u32,
        cols: usize,
        scales: &[half::f16],
        zeros: &[u8],
    ) {
        let signed = format.scheme != Scheme::Asymmetric;
        let (enc_type, block_size) = match format.granularity {
            Granularity::Tensor => (EncType::Tensor, None),
            Granularity::Channel => (EncType::Channel, None),
            g => {
                let len = g.group_len(cols);
                if !cols.is_multiple_of(len) {
                    self.omitted.push(Omitted {
                        name: name.to_string(),
                        reason: format!(
                            "{cols} inputs are not whole blocks of {len}, which AIMET's PER_BLOCK needs"
                        ),
                    });
                    return;
                }
                (EncType::Block, Some(len))
            }
        };
        let offset = if signed {
            vec![-(1i64 << (bw - 1)); scales.len()]
        } else {
            zeros.iter().map(|&z| -i64::from(z)).collect()
        };
        self.params.push(Encoding {
            name: name.to_string(),
            dtype: "INT",
            enc_type,
            bw,
            is_sym: Some(signed),
            scale: scales.iter().map(|s| s.to_f32()).collect(),
            offset,
            block_size,
        });
    }

    /// A weight kept in a float type of `bits` (16 or 32), which the converter must not
    /// quantize.
    pub fn float_weight(&mut self, name: &str, bits: Option<u32>) {
        match bits {
            Some(bw) => self.params.push(Encoding {
                name: name.to_string(),
                dtype: "FLOAT",
                enc_type: EncType::Tensor,
                bw,
                is_sym: None,
                scale: vec![],
                offset: vec![],
                block_size: None,
            }),
            None => self.omitted.push(Omitted {
                name: name.to_string(),
                reason: "bf16 has no AIMET float encoding (FLOAT bw 16 is IEEE half)".into(),
            }),
        }
    }

    /// The input tensor `name` quantized by `q`.
    pub fn activation(&mut self, name: &str, q: ActivationQuant) {
        let offset = if q.symmetric {
            -(1i64 << (q.bits - 1))
        } else {
            -(q.zero as i64)
        };
        self.activations.push(Encoding {
            name: name.to_string(),
            dtype: "INT",
            enc_type: EncType::Tensor,
            bw: q.bits,
            is_sym: Some(q.symmetric),
            scale: vec![q.scale],
            offset: vec![offset],
            block_size: None,
        });
    }

    /// The file's JSON.
    pub fn json(&self) -> Result<String> {
        #[derive(Serialize)]
        struct File<'a> {
            version: &'static str,
            activation_encodings: &'a [Encoding],
            param_encodings: &'a [Encoding],
            excluded_layers: [(); 0],
        }
        let file = File {
            version: "1.0.0",
            activation_encodings: &self.activations,
            param_encodings: &self.params,
            excluded_layers: [],
        };
        // Compact: per-block scales run to millions of numbers (SmolLM2's W4A16 file is
        // 3x larger pretty-printed).
        let mut text = serde_json::to_string(&file).map_err(|e| {
            Error::invalid(
                crate::Subject::other("<encodings>"),
                format!("cannot encode the encodings: {e}"),
            )
        })?;
        text.push('\n');
        Ok(text)
    }

    /// Writes the encodings to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<Written> {
        write_atomic(path, self.json()?.as_bytes())?;
        Ok(Written {
            path: path.to_path_buf(),
            params: self.params.len(),
            activations: self.activations.len(),
            omitted: self.omitted.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Symmetry;

    fn f16s(v: &[f32]) -> Vec<half::f16> {
        v.iter().map(|&x| half::f16::from_f32(x)).collect()
    }

    fn int(s: &str) -> IntFormat {
        match s.parse::<crate::quant::Format>().unwrap() {
            crate::quant::Format::Int(f) => f,
            _ => unreachable!(),
        }
    }

    #[test]
    fn offsets_follow_aimets_unsigned_convention() {
        let mut c = Collector::default();
        c.weight(
            "w_sym",
            int("int4-g32-sym"),
            4,
            64,
            &f16s(&[0.5, 0.25, 0.125, 1.0]),
            &[],
        );
        c.weight(
            "w_asym",
            int("int3-channel-asym"),
            4,
            64,
            &f16s(&[0.1, 0.2]),
            &[3, 5],
        );
        let a = ActivationQuant::new(16, Symmetry::Asymmetric, -1.0, 3.0).unwrap();
        c.activation("x", a);
        let json: serde_json::Value = serde_json::from_str(&c.json().unwrap()).unwrap();
        let sym = &json["param_encodings"][0];
        assert_eq!(sym["enc_type"], "PER_BLOCK");
        assert_eq!(sym["block_size"], 32);
        assert_eq!(sym["is_sym"], true);
        assert_eq!(sym["offset"], serde_json::json!([-8, -8, -8, -8]));
        // x = (q + offset) * scale over unsigned codes: code z is 0.0.
        let asym = &json["param_encodings"][1];
        assert_eq!(asym["enc_type"], "PER_CHANNEL");
        assert_eq!(asym["offset"], serde_json::json!([-3, -5]));
        // The f16 scale's value, written as the shortest decimal that reads back as it.
        assert_eq!(
            asym["scale"][0].as_f64().unwrap() as f32,
            half::f16::from_f32(0.1).to_f32()
        );
        let act = &json["activation_encodings"][0];
        assert_eq!(act["bw"], 16);
        assert_eq!(act["offset"][0].as_i64().unwrap(), -(a.zero as i64));
        assert_eq!(act["scale"][0].as_f64().unwrap() as f32, a.scale);
    }

    #[test]
    fn partial_blocks_are_omitted_with_the_reason() {
        let mut c = Collector::default();
        c.weight("down", int("int4-g256-sym"), 4, 640, &f16s(&[1.0; 6]), &[]);
        assert!(c.params.is_empty());
        assert_eq!(c.omitted[0].name, "down");
        assert!(c.omitted[0].reason.contains("640"), "{:?}", c.omitted);
    }
}
