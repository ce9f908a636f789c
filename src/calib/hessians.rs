//! The input Hessians GPTQ rounds with: one float pass accumulates E[x xᵀ] per distinct
//! QLinear input. Layers fed the very same input (q/k/v, gate/up) share one Hessian: a layer
//! whose input equals, value for value, the input of the layer observed just before it is
//! recorded as sharing that layer's sum, so nothing structural is assumed about the model.
//! Streamed: each forward's inputs are multiplied into the f64 sums and dropped.

use crate::error::{Error, Result, Subject};
use crate::model::{ActivationObserver, Model};
use crate::quant::gptq::HessianSum;
use crate::quant::{Factor, Hessian};
use candle_core::Tensor;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// E[x xᵀ] of every distinct input of a model's multiplied weights.
#[derive(Debug, Clone)]
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
