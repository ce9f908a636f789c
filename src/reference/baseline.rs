//! The float model's run on a fixed batch of calibration sequences, kept so variants of the
//! model (one tensor quantized for sensitivity, a whole genome for the search) can be scored
//! against it with real forward passes that start part-way: the hidden states entering every
//! layer are stored, so a variant that equals the float model before layer L starts at L.
//!
//! The loss is the mean KL(float || variant) of the next-token distributions over every
//! position for causal LMs (against the top-K reference, see [`TopK`]), and the mean 1 - cosine
//! of the sentence embeddings for encoders.

use crate::model::bert::{additive_mask, mean_pool_normalize};
use crate::model::{Model, Overrides};
use crate::reference::TopK;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// What a loss measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Mean KL(float || quantized) of the next-token distributions over every position.
    MeanKl,
    /// Mean 1 - cosine between float and quantized sentence embeddings.
    OneMinusCos,
}

impl Metric {
    /// Short label for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Metric::MeanKl => "delta-KL",
            Metric::OneMinusCos => "1 - cos",
        }
    }
}

/// The float run: hidden states at every layer boundary and the outputs to compare with.
pub struct Baseline {
    /// `hidden[l]` enters layer `l`; `hidden[layers]` leaves the last one.
    hidden: Vec<Tensor>,
    /// The token ids and the (all-ones) attention mask, to embed again with a variant's tables.
    ids: Tensor,
    mask: Tensor,
    reference: Reference,
}

enum Reference {
    /// Top-K next-token log-probabilities, position by position, sequences in order.
    Logits(TopK),
    /// Sentence embeddings `[sequences, hidden]` and the (all-ones) mask and additive mask.
    Embeddings {
        rows: Vec<Vec<f32>>,
        mask: Tensor,
        additive: Tensor,
    },
}

/// Positions whose logits are in memory at once: 128 x a 49152-token vocabulary is 25 MB, under
/// glibc's largest mmap threshold, so the buffers are reused instead of freshly zeroed pages.
const LOGIT_CHUNK: usize = 128;

impl Baseline {
    /// Runs the float `model` on `ids` `[sequences, seq]` (u32), keeping the top `top_k`
    /// log-probabilities per position for a causal LM.
    pub fn run(model: &Model, ids: &Tensor, top_k: usize) -> candle_core::Result<Baseline> {
        let mask = ids.ones_like()?;
        let first = model.embed(ids, &mask, None)?;
        let reference = match model {
            Model::Llama(_) => None,
            Model::Bert(_) => Some((mask.clone(), additive_mask(&mask)?)),
        };
        let mut baseline = Baseline {
            hidden: vec![first],
            ids: ids.clone(),
            mask,
            reference: match reference {
                None => Reference::Logits(TopK::new(top_k)),
                Some((mask, additive)) => Reference::Embeddings {
                    rows: Vec::new(),
                    mask,
                    additive,
                },
            },
        };
        for l in 0..layers(model) {
            let next = baseline.advance(model, baseline.hidden[l].clone(), l..l + 1, None)?;
            baseline.hidden.push(next);
        }
        let last = &baseline.hidden[layers(model)];
        match (model, &mut baseline.reference) {
            (Model::Llama(m), Reference::Logits(top)) => {
                for_each_chunk(last, |_, h| top.push(&m.logits(h, None)?.squeeze(0)?))?;
            }
            (Model::Bert(_), Reference::Embeddings { rows, mask, .. }) => {
                *rows = mean_pool_normalize(last, mask)?.to_vec2()?;
            }
            _ => candle_core::bail!("the reference does not match the model family"),
        }
        let finite = match &baseline.reference {
            Reference::Logits(top) => top
                .logprobs
                .iter()
                .chain(&top.rest)
                .all(|v| v.is_finite() || *v == f32::NEG_INFINITY),
            Reference::Embeddings { rows, .. } => rows.iter().flatten().all(|v| v.is_finite()),
        };
        if !finite {
            candle_core::bail!(
                "the float model's outputs are NaN or Inf on these tokens (its config.json or \
                 weights hold values it cannot compute with)"
            );
        }
        Ok(baseline)
    }

    /// The metric losses are measured in.
    pub fn metric(&self) -> Metric {
        match self.reference {
            Reference::Logits(_) => Metric::MeanKl,
            Reference::Embeddings { .. } => Metric::OneMinusCos,
        }
    }

    /// The float hidden states entering layer `layer` (`layers` for the output of the last).
    pub fn hidden(&self, layer: usize) -> &Tensor {
        &self.hidden[layer.min(self.hidden.len() - 1)]
    }

    /// The hidden states a variant that equals the float model before layer `layer` has
    /// entering it: the float ones, except at layer 0, where the embedding tables `overrides`
    /// replaces are looked up again.
    pub fn entering(
        &self,
        model: &Model,
        layer: usize,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        match overrides {
            Some(o) if layer == 0 => model.embed(&self.ids, &self.mask, Some(o)),
            _ => Ok(self.hidden(layer).clone()),
        }
    }

    /// Runs layers `range` of `model` on hidden states `h` with `overrides`.
    pub fn advance(
        &self,
        model: &Model,
        h: Tensor,
        range: Range<usize>,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        match (model, &self.reference) {
            (Model::Llama(m), _) => m.run_layers(h, range, overrides),
            (Model::Bert(m), Reference::Embeddings { additive, .. }) => {
                m.run_layers(h, additive, range, overrides)
            }
            _ => candle_core::bail!("the reference does not match the model family"),
        }
    }

    /// The loss of the variant whose last hidden states are `h` (the LM head also sees
    /// `overrides`).
    pub fn loss(
        &self,
        model: &Model,
        h: &Tensor,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<f64> {
        match (model, &self.reference) {
            (Model::Llama(m), Reference::Logits(reference)) => {
                let mut total = 0.0;
                for_each_chunk(h, |first, h| {
                    let logits = m.logits(h, overrides)?.squeeze(0)?;
                    let vocab = logits.dim(1)?;
                    let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
                    total += reference.kl(first, &values, vocab).iter().sum::<f64>();
                    Ok(())
                })?;
                Ok(total / reference.positions() as f64)
            }
            (Model::Bert(_), Reference::Embeddings { rows, mask, .. }) => {
                let got = mean_pool_normalize(h, mask)?.to_vec2::<f32>()?;
                let loss: f64 = rows.iter().zip(&got).map(|(a, b)| 1.0 - cosine(a, b)).sum();
                Ok(loss / rows.len() as f64)
            }
            _ => candle_core::bail!("the reference does not match the model family"),
        }
    }

    /// The loss of the variant described by `overrides`, which must equal the float model
    /// before layer `start`: recomputes from `start` on.
    pub fn loss_from(
        &self,
        model: &Model,
        start: usize,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<f64> {
        let n = layers(model);
        let start = start.min(n);
        let h = self.entering(model, start, overrides)?;
        let h = self.advance(model, h, start..n, overrides)?;
        self.loss(model, &h, overrides)
    }
}

/// Number of transformer layers of `model`.
pub fn layers(model: &Model) -> usize {
    match model {
        Model::Llama(m) => m.num_layers(),
        Model::Bert(m) => m.num_layers(),
    }
}

/// Token ids `[sequences, seq]` for equal-length `sequences`.
pub fn batch(sequences: &[&[u32]]) -> candle_core::Result<Tensor> {
    let seq = sequences.first().map_or(0, |s| s.len());
    let ids: Vec<u32> = sequences.iter().flat_map(|s| s.iter().copied()).collect();
    Tensor::from_vec(ids, (sequences.len(), seq), &Device::Cpu)
}

/// Calls `f(first position, hidden)` for consecutive `[1, n, hidden]` slices of the hidden
/// states `[sequences, seq, hidden]`, at most [`LOGIT_CHUNK`] positions each, in position order.
fn for_each_chunk(
    h: &Tensor,
    mut f: impl FnMut(usize, &Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let (sequences, seq, _) = h.dims3()?;
    for s in 0..sequences {
        let row = h.narrow(0, s, 1)?;
        for start in (0..seq).step_by(LOGIT_CHUNK) {
            let n = LOGIT_CHUNK.min(seq - start);
            f(s * seq + start, &row.narrow(1, start, n)?)?;
        }
    }
    Ok(())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(f64::MIN_POSITIVE)
}
