//! Where a model's tensors come from when it is built: a checkpoint (f32 candle tensors, shape
//! checks that name the file and tensor) or an in-memory map (training), and configs from
//! config.json.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result, Subject};
use crate::model::qlinear::QLinear;
use crate::packed::Packed;
use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::PathBuf;

/// A source of f32 tensors for model construction.
pub enum Weights<'a> {
    /// Tensors of a checkpoint, materialised on the CPU.
    Checkpoint(&'a Checkpoint),
    /// Tensors already in memory, used as they are (shared, so training updates reach the
    /// model): the training example builds its model from its variables this way.
    Memory(&'a HashMap<String, Tensor>),
    /// A packed checkpoint: its quantized weights become packed [`QLinear`]s, multiplied as
    /// stored; every other tensor is read as from a checkpoint.
    Packed(&'a Packed),
}

impl<'a> Weights<'a> {
    /// Tensors of `checkpoint`, materialised on the CPU.
    pub fn new(checkpoint: &'a Checkpoint) -> Self {
        Weights::Checkpoint(checkpoint)
    }

    /// Whether a tensor called `name` exists.
    pub fn has(&self, name: &str) -> bool {
        match self {
            Weights::Checkpoint(c) => c.get(name).is_some(),
            Weights::Memory(m) => m.contains_key(name),
            Weights::Packed(p) => {
                p.checkpoint.get(name).is_some() || p.manifest.tensors.contains_key(name)
            }
        }
    }

    /// Tensor `name` as f32 with exactly `shape`; an error names the file and what differs.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let checkpoint = match self {
            Weights::Checkpoint(c) => c,
            Weights::Packed(p) => &p.checkpoint,
            Weights::Memory(m) => {
                let t = m.get(name).ok_or_else(|| {
                    Error::invalid(
                        Subject::other("<memory>"),
                        format!("no tensor named '{name}'"),
                    )
                })?;
                if t.dims() != shape || t.dtype() != DType::F32 {
                    return Err(Error::invalid(
                        Subject::other("<memory>"),
                        format!(
                            "tensor '{name}' is {:?} {:?}, expected F32 {shape:?}",
                            t.dtype(),
                            t.dims()
                        ),
                    ));
                }
                return Ok(t.clone());
            }
        };
        let view = checkpoint.tensor(name)?;
        if view.shape != shape {
            return Err(Error::invalid(
                view.file,
                format!(
                    "tensor '{name}' has shape {:?}, the config implies {shape:?}",
                    view.shape
                ),
            ));
        }
        view.check_finite()?;
        let t = view.to_candle(&Device::Cpu)?;
        t.to_dtype(DType::F32)
            .map_err(Error::compute(format!("{}: '{name}'", view.file.display())))
    }

    /// A [`QLinear`] from `{prefix}.weight` `[out, in]` and, if present, `{prefix}.bias` `[out]`.
    pub fn linear(&self, prefix: &str, out: usize, inp: usize) -> Result<QLinear> {
        let name = format!("{prefix}.weight");
        let bias_name = format!("{prefix}.bias");
        let bias = if self.has(&bias_name) {
            Some(self.tensor(&bias_name, &[out])?)
        } else {
            None
        };
        if let Weights::Packed(p) = self {
            if let Some(e) = p.manifest.tensors.get(&name) {
                if e.shape != [out, inp] {
                    return Err(Error::invalid(
                        p.checkpoint.first_file(),
                        format!(
                            "packed weight '{name}' has shape {:?}, the config implies [{out}, {inp}]",
                            e.shape
                        ),
                    ));
                }
                let weight = p.weight(&name)?;
                return QLinear::packed(name, e.format, (out, inp), weight, bias, e.input_quant);
            }
        }
        let weight = self.tensor(&name, &[out, inp])?;
        Ok(QLinear::new(name, weight, bias))
    }
}

/// config.json of `checkpoint` parsed as `T`, or an error naming the file and the bad field.
pub fn config<T: DeserializeOwned>(checkpoint: &Checkpoint) -> Result<T> {
    let path = config_path(checkpoint);
    let value = checkpoint
        .config()
        .ok_or_else(|| Error::invalid(&path, "config.json is missing; a forward pass needs it"))?;
    serde_json::from_value(value.clone())
        .map_err(|e| Error::invalid(&path, format!("unusable config: {e}")))
}

/// Where config.json of `checkpoint` is (or would be).
pub fn config_path(checkpoint: &Checkpoint) -> PathBuf {
    checkpoint.dir().join("config.json")
}

/// An error for a config value that cannot work, naming config.json.
pub fn bad_config(checkpoint: &Checkpoint, message: impl Into<String>) -> Error {
    Error::invalid(config_path(checkpoint), message)
}
