//! `model.gguf` for llama.cpp from a compress run's choices: each weight's GGUF block type,
//! importance, calibrator and GPTQ factor handed to the [`crate::gguf::writer`]; weights left
//! in f32 and every other tensor are written as F32.

use super::packed::{Choice, Folded};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result, Subject};
use crate::gguf::writer::{self, Input, Written};
use crate::quant::{FloatType, Format};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Writes `checkpoint` with `choices` (HF tensor names) as a GGUF file at `path`; a choice that
/// is neither a GGUF block type nor f32 is an error naming the tensor.
pub fn write(
    checkpoint: &Checkpoint,
    choices: &BTreeMap<String, Choice<'_>>,
    folded: &Folded<'_>,
    path: &Path,
) -> Result<Written> {
    let mut types = HashMap::new();
    let mut inputs = HashMap::new();
    for (name, c) in choices {
        match c.format {
            Format::Gguf(t) => {
                types.insert(name.clone(), t);
            }
            Format::Float(FloatType::F32) => {}
            other => {
                return Err(Error::unsupported(
                    Subject::tensor(name),
                    format!("GGUF export stores GGUF block types and f32, not {other}"),
                ))
            }
        }
        let input = Input {
            importance: c.importance.as_deref(),
            calibrator: c.calibrator,
            gptq: c.gptq,
            rescale: c.rescale,
        };
        inputs.insert(name.clone(), input);
    }
    writer::write(checkpoint, &types, &inputs, folded, path)
}
