//! The input Hessians GPTQ rounds with: one float pass accumulates E[x xᵀ] per distinct
//! QLinear input. Layers fed the very same input (q/k/v, gate/up) share one Hessian: a layer
//! whose input equals, value for value, the input of the layer observed just before it is
//! recorded as sharing that layer's sum, so nothing structural is assumed about the model.
//! Streamed: each forward's inputs are multiplied into the f64 sums and dropped.

use crate::checkpoint::write::{write_safetensors, LazyTensor};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result, Subject};
use crate::model::{ActivationObserver, Model};
use crate::quant::gptq::HessianSum;
use crate::quant::{Factor, Hessian};
use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The metadata entry of a saved Hessians file.
const METADATA: &str = "qpipe_hessians";
/// Version of the saved layout.
const FORMAT_VERSION: u32 = 1;

/// What a saved Hessians file's metadata says; input `i` is the tensor `input.{i}`, its upper
/// triangle row by row (n (n + 1) / 2 values: the Hessians are symmetric).
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u32,
    /// What they were computed from (the saver's key: model and tokens).
    key: String,
    /// Per input, its dimension and tokens.
    inputs: Vec<(usize, u64)>,
    of: BTreeMap<String, usize>,
}

/// E[x xᵀ] of every distinct input of a model's multiplied weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Hessians {
    /// Per distinct input, in forward order.
    pub inputs: Vec<Hessian>,
    /// Per weight name, the index of its input's Hessian.
    pub of: BTreeMap<String, usize>,
}

impl Hessians {
    /// The Hessian of the input of the weight `name`.
    pub fn get(&self, name: &str) -> Option<&Hessian> {
        self.of.get(name).map(|&i| &self.inputs[i])
    }

    /// Writes them to `path` (safetensors, atomically), tagged with `key`, what they were
    /// computed from, so a later run can tell whether they still apply.
    pub fn save(&self, path: &Path, key: &str) -> Result<()> {
        let header = Header {
            version: FORMAT_VERSION,
            key: key.to_string(),
            inputs: self.inputs.iter().map(|h| (h.dim(), h.tokens())).collect(),
            of: self.of.clone(),
        };
        let json = serde_json::to_string(&header)
            .map_err(|e| Error::invalid(path, format!("cannot encode metadata: {e}")))?;
        let tensors: Vec<(String, LazyTensor<'_>)> = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let n = h.dim();
                let tensor = LazyTensor::f32(vec![n * (n + 1) / 2], move || {
                    let v = h.values();
                    (0..n)
                        .flat_map(|r| v[r * n + r..(r + 1) * n].to_vec())
                        .collect()
                });
                (format!("input.{i}"), tensor)
            })
            .collect();
        write_safetensors(
            path,
            &tensors,
            Some(HashMap::from([(METADATA.to_string(), json)])),
        )
    }

    /// Reads Hessians written by [`Hessians::save`], with their key; every part is checked.
    pub fn load(path: &Path) -> Result<(Hessians, String)> {
        let file = Checkpoint::open(path)?;
        let bad = |m: String| Error::invalid(path, m);
        let header: Header = file
            .metadata(METADATA)
            .ok_or_else(|| bad("not a qpipe Hessians file (no qpipe_hessians metadata)".into()))
            .and_then(|m| {
                serde_json::from_str(m)
                    .map_err(|e| bad(format!("bad qpipe_hessians metadata: {e}")))
            })?;
        if header.version != FORMAT_VERSION {
            return Err(Error::unsupported(
                path,
                format!(
                    "Hessians format version {} (this qpipe reads {FORMAT_VERSION})",
                    header.version
                ),
            ));
        }
        if let Some((name, i)) = header.of.iter().find(|(_, &i)| i >= header.inputs.len()) {
            return Err(bad(format!("{name}: input {i} of {}", header.inputs.len())));
        }
        let mut inputs = Vec::with_capacity(header.inputs.len());
        for (i, &(n, tokens)) in header.inputs.iter().enumerate() {
            let name = format!("input.{i}");
            let view = file.tensor(&name)?;
            if view.shape != [n * (n + 1) / 2] {
                return Err(bad(format!(
                    "{name}: shape {:?}, not the upper triangle of {n}x{n}",
                    view.shape
                )));
            }
            let triangle = view.to_f32_vec()?;
            let mut values = vec![0f32; n * n];
            let mut at = 0;
            for r in 0..n {
                for c in r..n {
                    values[r * n + c] = triangle[at];
                    values[c * n + r] = triangle[at];
                    at += 1;
                }
            }
            inputs.push(Hessian::new(n, tokens, values).map_err(|m| bad(format!("{name}: {m}")))?);
        }
        Ok((
            Hessians {
                inputs,
                of: header.of,
            },
            header.key,
        ))
    }

    /// The GPTQ factor of every input (in parallel), shared by the weights that read it.
    pub fn factors(&self) -> Result<Factors> {
        let factors = self
            .inputs
            .par_iter()
            .map(|h| Factor::new(h).map(Arc::new))
            .collect::<Vec<_>>();
        let mut by_input = Vec::with_capacity(factors.len());
        for (i, f) in factors.into_iter().enumerate() {
            let owner = self
                .of
                .iter()
                .find(|(_, &k)| k == i)
                .map_or("?", |(n, _)| n.as_str());
            by_input.push(f.map_err(|m| Error::invalid(Subject::tensor(owner), m))?);
        }
        Ok(Factors {
            of: self
                .of
                .iter()
                .map(|(n, &i)| (n.clone(), by_input[i].clone()))
                .collect(),
        })
    }
}

/// GPTQ factors by weight name.
#[derive(Debug, Clone, Default)]
pub struct Factors {
    of: BTreeMap<String, Arc<Factor>>,
}

impl Factors {
    /// The factor of the input of the weight `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Factor>> {
        self.of.get(name)
    }
}

/// Where an observed layer's inputs go.
#[derive(Debug, Clone, Copy)]
struct Entry {
    input: usize,
    /// Whether this layer adds to the sum (the first layer of its input) or only reads it.
    owns: bool,
}

#[derive(Default)]
struct State {
    sums: Vec<HessianSum>,
    entries: BTreeMap<String, Entry>,
    /// The last input added to a sum, and which.
    last: Option<(usize, Vec<f32>)>,
}

struct Collector {
    state: Mutex<State>,
}

impl ActivationObserver for Collector {
    fn observe(&self, linear: &str, input: &Tensor) -> candle_core::Result<()> {
        let cols = input.dim(1)?;
        let values: Vec<f32> = input.flatten_all()?.to_vec1()?;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let same_as_last = |s: &State| match &s.last {
            Some((i, v)) if *v == values => Some(*i),
            _ => None,
        };
        let entry = match s.entries.get(linear).copied() {
            Some(e) => e,
            None => {
                let e = match same_as_last(&s) {
                    Some(input) => Entry { input, owns: false },
                    None => {
                        s.sums.push(HessianSum::new(cols));
                        Entry {
                            input: s.sums.len() - 1,
                            owns: true,
                        }
                    }
                };
                s.entries.insert(linear.to_string(), e);
                e
            }
        };
        if entry.owns {
            s.sums[entry.input].add(&values);
            s.last = Some((entry.input, values));
        } else if same_as_last(&s) != Some(entry.input) {
            candle_core::bail!(
                "{linear}: its input no longer equals the input it shared on an earlier sequence"
            );
        }
        Ok(())
    }
}

/// Runs the float `model` over `sequences` and accumulates the input Hessian of every weight
/// that multiplies (matmuls and a tied LM head).
pub fn collect(model: &Model, sequences: &[&[u32]]) -> Result<Hessians> {
    if sequences.is_empty() {
        return Err(Error::invalid(
            Subject::other("<calibration data>"),
            "no calibration sequences for the input Hessians",
        ));
    }
    let collector = Arc::new(Collector {
        state: Mutex::new(State::default()),
    });
    let linears = super::observed_pass(model, sequences, collector.clone(), |_| Ok(()))
        .map_err(Error::compute("input Hessians"))?;
    let state = std::mem::take(&mut *collector.state.lock().unwrap_or_else(|e| e.into_inner()));
    for l in &linears {
        if !state.entries.contains_key(l.name()) {
            return Err(Error::invalid(
                Subject::tensor(l.name()),
                "never saw an input in the calibration pass",
            ));
        }
    }
    Ok(Hessians {
        inputs: state.sums.into_iter().map(HessianSum::finish).collect(),
        of: state
            .entries
            .into_iter()
            .map(|(n, e)| (n, e.input))
            .collect(),
    })
}
