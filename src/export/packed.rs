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

use crate::checkpoint::write::{write_safetensors, LazyTensor};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::quant::{ActivationQuant, Calibrator, Format, IntQuantized, QuantizedTensor, Scheme};
use half::f16;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

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
    /// `[rows, cols]` of the original weight.
    pub shape: [usize; 2],
    /// Original dtype (`F32`, `F16`, `BF16`).
    pub dtype: String,
    /// Quantizer of the layer's input, when the target quantizes activations.
    pub input_quant: Option<ActivationQuant>,
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

/// What to store for one weight.
pub struct Choice<'a> {
    /// Format and calibrator.
    pub format: Format,
    /// Calibrator.
    pub calibrator: Calibrator,
    /// Per-input-column importance for the calibrator.
    pub importance: Option<&'a [f32]>,
    /// Input quantizer to record.
    pub input_quant: Option<ActivationQuant>,
}

/// What a write produced.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// Bytes of the file.
    pub file_bytes: u64,
    /// Bytes of the quantized weights (codes, scales, zero-points, blocks).
    pub quantized_bytes: u64,
    /// Tensors in the file.
    pub tensors: usize,
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
fn parts(name: &str, e: &Entry) -> Vec<(String, Dtype, Vec<usize>)> {
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

/// Bytes of part `k` (as [`parts`] lists them) of a quantized tensor.
fn part_bytes(q: &QuantizedTensor, k: usize) -> Result<Vec<u8>> {
    Ok(match (q, k) {
        (QuantizedTensor::Int(q), 0) => q.packed.clone(),
        (QuantizedTensor::Int(q), 1) => q.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        (QuantizedTensor::Int(q), _) => q.zeros.clone(),
        (QuantizedTensor::Gguf(q), _) => q
            .data()
            .map_err(|e| {
                Error::invalid(
                    Path::new("<gguf block data>"),
                    crate::error::candle_message(&e),
                )
            })?
            .into_owned(),
        (QuantizedTensor::Float(_, b), _) => b.clone(),
    })
}

/// Writes `checkpoint`'s tensors to `path`, the weights named in `choices` quantized (from
/// `model`'s float weights) and everything else as stored. Atomic: a temp file renamed at the
/// end; nothing is left behind on error.
///
/// Float tensors are copied straight from the memory map. A quantized weight is computed once
/// when its first part is written and dropped after its last: safetensors lays data out by
/// dtype size, so the F16 scales of every tensor come before their U8 codes, and the quantized
/// weights (the size of the output, not of the float model) are held between those phases.
pub fn write(
    path: &Path,
    checkpoint: &Checkpoint,
    model: &Model,
    choices: &BTreeMap<String, Choice<'_>>,
    provenance: &Provenance,
) -> Result<Written> {
    let linears: HashMap<&str, &crate::model::QLinear> =
        model.linears().into_iter().map(|l| (l.name(), l)).collect();
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        tensors: BTreeMap::new(),
        provenance: provenance.clone(),
    };
    for (name, c) in choices {
        let linear = linears.get(name.as_str()).ok_or_else(|| {
            Error::invalid(
                checkpoint.first_file(),
                format!("'{name}' is not a matmul weight of the model"),
            )
        })?;
        let view = checkpoint.tensor(name)?;
        let (rows, cols) = linear.shape();
        c.format
            .check(rows, cols)
            .map_err(|m| Error::unsupported(Path::new(name), m))?;
        manifest.tensors.insert(
            name.clone(),
            Entry {
                format: c.format,
                calibrator: c.calibrator,
                shape: [rows, cols],
                dtype: format!("{:?}", view.dtype),
                input_quant: c.input_quant,
            },
        );
    }
    // Quantized weights in flight: computed at their first part, dropped after their last.
    let pending: Mutex<HashMap<String, (Arc<QuantizedTensor>, usize)>> = Mutex::new(HashMap::new());
    let quantized_bytes: u64 = manifest
        .tensors
        .values()
        .map(|e| e.format.storage_bytes(e.shape[0], e.shape[1]) as u64)
        .sum();
    let mut tensors: Vec<(String, LazyTensor<'_>)> = Vec::new();
    for view in checkpoint.tensors() {
        let name = view.name;
        let Some(entry) = manifest.tensors.get(name) else {
            let bytes = view.bytes;
            tensors.push((
                name.to_string(),
                LazyTensor::new(view.dtype, view.shape.to_vec(), move || bytes.to_vec()),
            ));
            continue;
        };
        let list = parts(name, entry);
        let count = list.len();
        let (linear, choice, pending) = (linears[name], &choices[name], &pending);
        for (k, (part, dtype, shape)) in list.into_iter().enumerate() {
            let produce = move || -> Result<Vec<u8>> {
                let q = {
                    let mut map = pending.lock().unwrap_or_else(|e| e.into_inner());
                    let slot = match map.remove(name) {
                        Some(s) => s,
                        None => (
                            Arc::new(linear.quantized(
                                choice.format,
                                choice.calibrator,
                                choice.importance,
                            )?),
                            count,
                        ),
                    };
                    if slot.1 > 1 {
                        map.insert(name.to_string(), (slot.0.clone(), slot.1 - 1));
                    }
                    slot.0
                };
                part_bytes(&q, k)
            };
            tensors.push((part, LazyTensor::try_new(dtype, shape, produce)));
        }
    }
    let count = tensors.len();
    let json = serde_json::to_string(&manifest)
        .map_err(|e| Error::invalid(path, format!("cannot serialise the manifest: {e}")))?;
    write_safetensors(
        path,
        &tensors,
        Some(HashMap::from([(METADATA_KEY.to_string(), json)])),
    )?;
    let file_bytes = std::fs::metadata(path).map_err(Error::io(path))?.len();
    Ok(Written {
        file_bytes,
        quantized_bytes,
        tensors: count,
    })
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
            e.format
                .check(rows, cols)
                .map_err(|m| Error::invalid(&file, format!("'{name}': {m}")))?;
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
        }
        Ok(Packed {
            checkpoint,
            manifest,
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
                // Catches inconsistent fields (e.g. zero-points beyond the code range) now.
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
