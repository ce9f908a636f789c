//! Writes packed checkpoints (`*.qpipe.safetensors`, layout in [`crate::packed`]): every chosen
//! weight quantized in its format from the float model, the rest copied as stored.

use crate::checkpoint::write::{write_safetensors, LazyTensor};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result, Subject};
use crate::model::Model;
use crate::packed::{parts, Entry, Manifest, Provenance, FORMAT_VERSION, METADATA_KEY};
use crate::quant::{ActivationQuant, Calibrator, Format, QuantizedTensor};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

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
                    Subject::other("<gguf block data>"),
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
            .map_err(|m| Error::unsupported(Subject::tensor(name), m))?;
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
