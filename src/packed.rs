//! Packed checkpoints (`*.qpipe.safetensors`): every chosen weight stored in its format, the rest
//! as it was, readable back into a model that multiplies the packed weights directly.
//!
//! Layout, per quantized tensor `NAME`:
//! - integer formats: `NAME.qweight` (U8 `[rows, row_bytes]`, codes packed as documented in
//!   `qpipe_kernels::pack`), `NAME.scales` (F16, one per group in row-major order, or one for a
//!   per-tensor scale) and, when asymmetric, `NAME.zeros` (U8, one per scale);
//! - GGUF block types: `NAME.qweight` (U8, llama.cpp's block bytes, row after row);
//! - float passthrough: `NAME` itself in the chosen float dtype.
//!
//! `__metadata__["qpipe"]` holds a [`Manifest`]: format version, per tensor its format,
//! calibrator, original shape and dtype and input quantizer, and the provenance.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::quant::{
    ActivationQuant, Calibrator, FloatType, Format, IntQuantized, QuantizedTensor, Rounding,
    Scheme, Transform,
};
use half::f16;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Version of the packed layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The `__metadata__` key holding the [`Manifest`].
pub const METADATA_KEY: &str = "qpipe";

/// Where a packed checkpoint came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// sha256 of the input weight files, concatenated in load order.
    pub input_sha256: String,
    /// sha256 of the calibration text.
    pub calibration_sha256: String,
    /// Search seed.
    pub seed: u64,
    /// qpipe version that wrote it.
    pub qpipe_version: String,
    /// The command line.
    pub command: Vec<String>,
}

/// One stored weight's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Storage format.
    #[serde(with = "crate::quant::by_name")]
    pub format: Format,
    /// Calibrator that chose its ranges.
    #[serde(with = "crate::quant::by_name")]
    pub calibrator: Calibrator,
    /// How its values were rounded onto the grid (`rtn` when absent).
    #[serde(
        default,
        skip_serializing_if = "Rounding::is_nearest",
        with = "crate::quant::by_name"
    )]
    pub rounding: Rounding,
    /// `[rows, cols]` of the original weight.
    pub shape: [usize; 2],
    /// Original dtype (`F32`, `F16`, `BF16`).
    pub dtype: FloatType,
    /// Quantizer of the layer's input, when the target quantizes activations (of the input
    /// as it arrives, already divided by a transform's scales folded upstream).
    pub input_quant: Option<ActivationQuant>,
    /// The transform of its input (`none` when absent): its columns were multiplied by the
    /// scales whose inverse is folded into the input's producer, so the file computes as is.
    #[serde(
        default,
        skip_serializing_if = "Transform::is_none",
        with = "crate::quant::by_name"
    )]
    pub transform: Transform,
}

/// The `__metadata__["qpipe"]` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Per quantized weight (checkpoint name of the float weight).
    pub tensors: BTreeMap<String, Entry>,
    /// Where it came from.
    pub provenance: Provenance,
}

impl Manifest {
    /// The manifest of `checkpoint`, validated: present, of this version, and every part of
    /// every entry stored with the right dtype and size.
    pub fn read(checkpoint: &Checkpoint) -> Result<Manifest> {
        let file = checkpoint.first_file().to_path_buf();
        let json = checkpoint.metadata(METADATA_KEY).ok_or_else(|| {
            Error::invalid(
                &file,
                "not a qpipe packed checkpoint (no __metadata__ \"qpipe\" manifest)",
            )
        })?;
        let manifest: Manifest = serde_json::from_str(json)
            .map_err(|e| Error::invalid(&file, format!("unreadable qpipe manifest: {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(Error::unsupported(
                &file,
                format!(
                    "packed format version {} (this qpipe reads version {FORMAT_VERSION})",
                    manifest.format_version
                ),
            ));
        }
        for (name, e) in &manifest.tensors {
            let [rows, cols] = e.shape;
            let bad = |m: String| Error::invalid(&file, format!("'{name}': {m}"));
            if rows == 0 || cols == 0 {
                return Err(bad(format!("shape {rows} x {cols} has no elements")));
            }
            e.format.check(rows, cols).map_err(bad)?;
            if let Some(q) = e.input_quant {
                q.validate()
                    .map_err(|m| bad(format!("input quantizer: {m}")))?;
            }
            for (part, dtype, shape) in parts(name, e) {
                let view = checkpoint.get(&part).ok_or_else(|| {
                    Error::invalid(&file, format!("'{name}' in {} lacks '{part}'", e.format))
                })?;
                if view.dtype != dtype || view.shape != shape.as_slice() {
                    return Err(Error::invalid(
                        &file,
                        format!(
                            "'{part}' is {:?} {:?}, {} needs {dtype:?} {shape:?}",
                            view.dtype, view.shape, e.format
                        ),
                    ));
                }
            }
            if let Format::Int(f) = e.format {
                // Every scale a finite step (0 for an all-zero group), every zero-point a code.
                let scales = checkpoint.tensor(&format!("{name}.scales"))?.bytes;
                if let Some(i) = scales
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .position(|s| !(s.is_finite() && s >= f16::ZERO))
                {
                    let s = f16::from_le_bytes([scales[2 * i], scales[2 * i + 1]]);
                    return Err(bad(format!("scale {i} is {s}, not a finite step >= 0")));
                }
                if f.scheme == Scheme::Asymmetric {
                    let top = (1u32 << f.bits) - 1;
                    let zeros = checkpoint.tensor(&format!("{name}.zeros"))?.bytes;
                    if let Some(i) = zeros.iter().position(|&z| u32::from(z) > top) {
                        return Err(bad(format!(
                            "zero-point {i} is {}, past the {}-bit codes' {top}",
                            zeros[i], f.bits
                        )));
                    }
                }
            }
        }
        Ok(manifest)
    }
}

/// sha256 of `paths` read in order, hex.
pub fn sha256_files<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for p in paths {
        let mut f = std::fs::File::open(p).map_err(Error::io(p))?;
        loop {
            let n = f.read(&mut buf).map_err(Error::io(p))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The stored parts of one quantized weight: `(suffix, dtype, shape)` in writing order.
pub(crate) fn parts(name: &str, e: &Entry) -> Vec<(String, Dtype, Vec<usize>)> {
    let [rows, cols] = e.shape;
    match e.format {
        Format::Int(f) => {
            let row_bytes = qpipe_kernels::packed_len(cols, f.bits);
            let scales = f.groups(rows, cols);
            let mut p = vec![
                (format!("{name}.qweight"), Dtype::U8, vec![rows, row_bytes]),
                (format!("{name}.scales"), Dtype::F16, vec![scales]),
            ];
            if f.scheme == Scheme::Asymmetric {
                p.push((format!("{name}.zeros"), Dtype::U8, vec![scales]));
            }
            p
        }
        Format::Gguf(_) => vec![(
            format!("{name}.qweight"),
            Dtype::U8,
            vec![e.format.storage_bytes(rows, cols)],
        )],
        Format::Float(t) => vec![(name.to_string(), t.dtype(), vec![rows, cols])],
    }
}

/// A packed checkpoint opened for reading: its tensors (mapped) and its manifest.
pub struct Packed {
    /// The safetensors file (and config.json / tokenizer.json beside it).
    pub checkpoint: Checkpoint,
    /// What the writer recorded.
    pub manifest: Manifest,
}

impl Packed {
    /// Opens and validates `path` (a `*.qpipe.safetensors` file or the directory holding it):
    /// the manifest must be present and every part of every entry stored with the right dtype
    /// and size.
    pub fn open(path: &Path) -> Result<Packed> {
        let checkpoint = Checkpoint::open(path)?;
        let manifest = Manifest::read(&checkpoint)?;
        Ok(Packed {
            checkpoint,
            manifest,
        })
    }

    /// `path` as [`Packed::open`] reads it when it holds a qpipe manifest, else a float
    /// checkpoint seen as a packed one with nothing quantized (every tensor as stored): so the
    /// exports can also write the float reference.
    pub fn open_or_float(path: &Path) -> Result<Packed> {
        let checkpoint = Checkpoint::open(path)?;
        if checkpoint.metadata(METADATA_KEY).is_some() {
            let manifest = Manifest::read(&checkpoint)?;
            return Ok(Packed {
                checkpoint,
                manifest,
            });
        }
        Ok(Packed {
            checkpoint,
            manifest: Manifest {
                format_version: FORMAT_VERSION,
                tensors: BTreeMap::new(),
                provenance: Provenance {
                    input_sha256: String::new(),
                    calibration_sha256: String::new(),
                    seed: 0,
                    qpipe_version: env!("CARGO_PKG_VERSION").to_string(),
                    command: Vec::new(),
                },
            },
        })
    }

    /// The stored weight `name` (a key of the manifest) as a [`QuantizedTensor`].
    pub fn weight(&self, name: &str) -> Result<QuantizedTensor> {
        let file = self.checkpoint.first_file();
        let e = self
            .manifest
            .tensors
            .get(name)
            .ok_or_else(|| Error::invalid(file, format!("'{name}' is not a packed weight")))?;
        let [rows, cols] = e.shape;
        let part = |suffix: &str| -> Result<&[u8]> {
            Ok(self.checkpoint.tensor(&format!("{name}{suffix}"))?.bytes)
        };
        Ok(match e.format {
            Format::Int(format) => {
                let zeros = if format.scheme == Scheme::Asymmetric {
                    part(".zeros")?.to_vec()
                } else {
                    Vec::new()
                };
                let q = IntQuantized {
                    format,
                    rows,
                    cols,
                    packed: part(".qweight")?.to_vec(),
                    scales: part(".scales")?
                        .chunks_exact(2)
                        .map(|b| f16::from_le_bytes([b[0], b[1]]))
                        .collect(),
                    zeros,
                };
                // Catches inconsistent sizes now (ranges were checked when the manifest was read).
                q.with_kernel_view(|_| ())
                    .map_err(|m| Error::invalid(file, format!("'{name}': {m}")))?;
                QuantizedTensor::Int(q)
            }
            Format::Gguf(t) => {
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    t.ggml(),
                    part(".qweight")?,
                    vec![rows, cols],
                    &candle_core::Device::Cpu,
                )
                .map_err(|err| {
                    Error::invalid(
                        file,
                        format!("'{name}': {}", crate::error::candle_message(&err)),
                    )
                })?;
                QuantizedTensor::Gguf(q)
            }
            Format::Float(t) => QuantizedTensor::Float(t, part("")?.to_vec()),
        })
    }
}
