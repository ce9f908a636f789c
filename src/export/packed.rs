//! Writes packed checkpoints (`*.qpipe.safetensors`, layout in [`crate::packed`]): every chosen
//! weight quantized in its format from the float model, the rest copied as stored or, where
//! the target computes in F16, narrowed to F16.

use crate::checkpoint::write::{write_safetensors, LazyTensor};
use crate::checkpoint::{Checkpoint, FloatType, TensorView};
use crate::error::{Error, Result, Subject};
use crate::model::Model;
use crate::packed::{parts, Entry, Manifest, Provenance, FORMAT_VERSION, METADATA_KEY};
use crate::quant::{
    ActivationQuant, Calibrator, Factor, Format, QuantizedTensor, Rescale, Rounding, Transform,
};
use crate::search::fitness::Evaluator;
use crate::search::genome::{Genome, Rest};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What to store for one weight.
pub struct Choice<'a> {
    /// Format.
    pub format: Format,
    /// Calibrator.
    pub calibrator: Calibrator,
    /// Per-input-column importance for the calibrator (of the input as the stored weight
    /// reads it).
    pub importance: Option<Cow<'a, [f32]>>,
    /// The input's GPTQ factor, to round with GPTQ (else to nearest).
    pub gptq: Option<&'a Factor>,
    /// Input quantizer to record.
    pub input_quant: Option<ActivationQuant>,
    /// The transform of its input (recorded).
    pub transform: Transform,
    /// How the weight is rescaled before quantizing: its columns by its input's transform,
    /// its rows where it produces a transformed input.
    pub rescale: Rescale<'a>,
}

/// Per tensor outside the choices (a norm's weight, a bias), the divisors of its first
/// dimension that transforms fold into it.
pub type Folded<'a> = BTreeMap<String, &'a [f32]>;

/// What `evaluator` measured for `g`, as the writers store it: per weight its choice (format,
/// calibrator, importance, GPTQ factor, input quantizer, transform and rescaling), and the
/// other tensors the transforms fold into.
pub fn choices<'e>(
    evaluator: &'e Evaluator<'_>,
    g: &Genome,
) -> Result<(BTreeMap<String, Choice<'e>>, Folded<'e>)> {
    let divisors = evaluator.fold_divisors(g);
    let choices = evaluator
        .space()
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let gene = g.genes[i];
            let choice = Choice {
                format: gene.format,
                calibrator: gene.calibrator,
                importance: Some(evaluator.scaled_importance(i, gene.transform)),
                gptq: evaluator.factor(i, &gene)?,
                input_quant: evaluator.input_quant(g, i),
                transform: gene.transform,
                rescale: Rescale {
                    columns: evaluator.scales(i, gene.transform),
                    rows: divisors.rows.get(&i).copied(),
                },
            };
            Ok((s.name.clone(), choice))
        })
        .collect::<Result<_>>()?;
    Ok((choices, divisors.others))
}

/// What a write produced.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// Bytes of the file (header included).
    pub file_bytes: u64,
    /// Bytes of every stored tensor: the quantized weights' codes, scales, zero-points and
    /// blocks, and the other tensors (the size bits per weight count).
    pub tensor_bytes: u64,
    /// Of those, the quantized weights'.
    pub quantized_bytes: u64,
    /// Tensors in the file.
    pub tensors: usize,
}

/// How the tensors no format is chosen for (norms, biases, ...) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Others {
    /// Copied as stored.
    AsStored,
    /// Float tensors narrowed to this type where their values fit it (finite in it), the
    /// rest as stored.
    Narrowed(FloatType),
}

impl Others {
    /// The float type `view` is written in (`None`: its bytes as stored).
    fn narrowing(self, view: &TensorView<'_>) -> Result<Option<FloatType>> {
        let (Others::Narrowed(to), Some(from)) = (self, FloatType::from_dtype(view.dtype)) else {
            return Ok(None);
        };
        if to.width() >= from.width() {
            return Ok(None);
        }
        let values = view.to_f32_vec()?;
        let back = |v: f32| match to {
            FloatType::F16 => half::f16::from_f32(v).is_finite(),
            FloatType::BF16 => half::bf16::from_f32(v).is_finite(),
            FloatType::F32 => true,
        };
        Ok(values.iter().all(|&v| back(v)).then_some(to))
    }

    /// How `view` is written: the float type it is narrowed to (`None`: as stored) and the
    /// bytes it takes; decided once per tensor, by `rest` and the writer alike.
    fn plan(self, view: &TensorView<'_>) -> Result<(Option<FloatType>, u64)> {
        let to = self.narrowing(view)?;
        let bytes = to.map_or(view.bytes.len(), |t| t.width() * view.numel());
        Ok((to, bytes as u64))
    }
}

/// `view`'s bytes as [`Others::plan`] decided: narrowed to `to`, or as stored; with its first
/// dimension divided by `divisors` (a fold) if given, in the type it is written in.
fn encoded(
    view: &TensorView<'_>,
    to: Option<FloatType>,
    divisors: Option<&[f32]>,
) -> Result<Vec<u8>> {
    let Some(d) = divisors else {
        return Ok(match to {
            Some(to) => to.encode(&view.to_f32_vec()?),
            None => view.bytes.to_vec(),
        });
    };
    let stored = FloatType::from_dtype(view.dtype);
    let (Some(ty), Some(&rows)) = (to.or(stored), view.shape.first()) else {
        return Err(Error::unsupported(
            Subject::tensor(view.name),
            format!(
                "a transform folds into it, but it is stored as {:?}",
                view.dtype
            ),
        ));
    };
    if d.len() != rows {
        return Err(Error::invalid(
            Subject::tensor(view.name),
            format!("{} fold divisors for {rows} rows", d.len()),
        ));
    }
    let mut values = view.to_f32_vec()?;
    Rescale {
        columns: None,
        rows: Some(d),
    }
    .apply(&mut values, view.numel() / rows.max(1));
    let bytes = ty.encode(&values);
    let mut back = vec![0f32; values.len()];
    ty.decode(&bytes, &mut back);
    if back.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(
            Subject::tensor(view.name),
            format!("the folded transform's scales take its values beyond {ty:?}"),
        ));
    }
    Ok(bytes)
}

/// Bytes and parameters of `checkpoint`'s tensors outside `quantized`, written as `others`
/// says: what every genome's size adds to its quantized weights.
pub fn rest(checkpoint: &Checkpoint, quantized: &[&str], others: Others) -> Result<Rest> {
    let mut rest = Rest::default();
    for view in checkpoint.tensors() {
        if quantized.contains(&view.name) {
            continue;
        }
        rest.bytes += others.plan(&view)?.1;
        rest.parameters += view.numel() as u64;
    }
    Ok(rest)
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
/// `model`'s float weights) and everything else as `others` says, divided where `folded`
/// says. Atomic: a temp file renamed at the end; nothing is left behind on error.
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
    others: Others,
    folded: &Folded<'_>,
) -> Result<Written> {
    let linears: HashMap<&str, &crate::model::QLinear> = model
        .quantizable()
        .into_iter()
        .map(|l| (l.name(), l))
        .collect();
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        tensors: BTreeMap::new(),
        provenance: provenance.clone(),
    };
    for (name, c) in choices {
        let linear = linears.get(name.as_str()).ok_or_else(|| {
            Error::invalid(
                checkpoint.first_file(),
                format!("'{name}' is not a quantizable weight of the model"),
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
                rounding: if c.gptq.is_some() {
                    Rounding::Gptq
                } else {
                    Rounding::Nearest
                },
                shape: [rows, cols],
                dtype: FloatType::from_dtype(view.dtype).ok_or_else(|| {
                    Error::unsupported(
                        Subject::tensor(name),
                        format!("{:?} is not a float dtype", view.dtype),
                    )
                })?,
                input_quant: c.input_quant,
                transform: c.transform,
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
    let mut other_bytes = 0u64;
    for view in checkpoint.tensors() {
        let name = view.name;
        let Some(entry) = manifest.tensors.get(name) else {
            let (to, bytes) = others.plan(&view)?;
            other_bytes += bytes;
            let divisors = folded.get(name).copied();
            tensors.push((
                name.to_string(),
                LazyTensor::try_new(
                    to.map_or(view.dtype, FloatType::dtype),
                    view.shape.to_vec(),
                    move || encoded(&view, to, divisors),
                ),
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
                                choice.importance.as_deref(),
                                choice.gptq,
                                choice.rescale,
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
        tensor_bytes: quantized_bytes + other_bytes,
        quantized_bytes,
        tensors: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::write::LazyTensor;
    use safetensors::Dtype;

    /// F16 narrowing keeps a tensor whose values F16 cannot hold as it was, and the bytes `rest`
    /// counts are the bytes written.
    #[test]
    fn narrowing_to_f16_skips_what_f16_cannot_hold_and_rest_counts_what_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let tensors = vec![
            (
                "norm".to_string(),
                LazyTensor::f32(vec![4], || vec![1.0, 0.5, -2.0, 3.25]),
            ),
            (
                "huge".to_string(),
                LazyTensor::f32(vec![2], || vec![1e6, 1.0]),
            ),
            (
                "w".to_string(),
                LazyTensor::f32(vec![2, 2], || vec![0.0; 4]),
            ),
        ];
        write_safetensors(&path, &tensors, None).unwrap();
        let checkpoint = Checkpoint::open(&path).unwrap();
        let narrowed = rest(&checkpoint, &["w"], Others::Narrowed(FloatType::F16)).unwrap();
        assert_eq!(
            narrowed,
            Rest {
                bytes: 4 * 2 + 2 * 4,
                parameters: 6
            }
        );
        let kept = rest(&checkpoint, &["w"], Others::AsStored).unwrap();
        assert_eq!(
            kept,
            Rest {
                bytes: 6 * 4,
                parameters: 6
            }
        );
        let norm = checkpoint.tensor("norm").unwrap();
        let f16 = Others::Narrowed(FloatType::F16);
        let (to, size) = f16.plan(&norm).unwrap();
        assert_eq!((to.map(FloatType::dtype), size), (Some(Dtype::F16), 8));
        let bytes = encoded(&norm, to, None).unwrap();
        let mut back = [0f32; 4];
        FloatType::F16.decode(&bytes, &mut back);
        assert_eq!(back, [1.0, 0.5, -2.0, 3.25]);
        let huge = checkpoint.tensor("huge").unwrap();
        assert_eq!(f16.plan(&huge).unwrap(), (None, 8));
        assert_eq!(encoded(&huge, None, None).unwrap(), huge.bytes);
        // A fold divides in the written type; one that overflows it is refused.
        let halved = encoded(&norm, to, Some(&[2.0, 2.0, 2.0, 0.5])).unwrap();
        FloatType::F16.decode(&halved, &mut back);
        assert_eq!(back, [0.5, 0.25, -1.0, 6.5]);
        let err = encoded(&norm, to, Some(&[1e-5, 1.0, 1.0, 1.0])).unwrap_err();
        assert!(err.to_string().contains("beyond F16"), "{err}");
    }
}
