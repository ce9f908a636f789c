//! Held-out accuracy: a candidate model (a packed checkpoint, or the float model with
//! fake-quantized overrides) against the float reference on evaluation sequences, with the
//! full metric set (all-vocabulary KL, perplexity, top-1, ...; cosine for encoders).
//!
//! Sequences are run one at a time and logits compared [`CHUNK`] positions at a time, so memory
//! stays at one sequence's activations whatever the number of evaluation tokens.

use crate::error::{Error, Result, Subject};
use crate::model::bert::{additive_mask, mean_pool_normalize};
use crate::model::{Model, Overrides};
use crate::reference::layers;
use crate::reference::metrics::{self, EmbeddingComparison, LmComparison, Position};
use candle_core::{Device, Tensor};
use serde::Serialize;

/// Positions whose logits are in memory at once.
const CHUNK: usize = 128;

/// The held-out comparison of a candidate with the reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Causal LM: next-token distributions.
    Lm(LmComparison),
    /// Encoder: sentence embeddings.
    Embedding(EmbeddingComparison),
}

impl Comparison {
    /// The search's loss on these tokens: mean KL for LMs, mean 1 - cos for encoders.
    pub fn loss(&self) -> f64 {
        match self {
            Comparison::Lm(c) => c.mean_kld,
            Comparison::Embedding(c) => 1.0 - c.mean_cosine,
        }
    }
}

/// One side of a comparison: a model and the overrides it runs with.
#[derive(Clone, Copy)]
pub struct Variant<'a> {
    /// The model.
    pub model: &'a Model,
    /// Replacements during its forward passes.
    pub overrides: Option<&'a dyn Overrides>,
}

impl<'a> From<&'a Model> for Variant<'a> {
    fn from(model: &'a Model) -> Self {
        Variant {
            model,
            overrides: None,
        }
    }
}

/// Compares `candidate` with `reference` on `sequences` (each at least 2 tokens).
pub fn compare(
    reference: Variant<'_>,
    candidate: Variant<'_>,
    sequences: &[&[u32]],
) -> Result<Comparison> {
    let mut all = compare_all(reference, &[candidate], sequences)?;
    Ok(all.remove(0))
}

/// Compares each of `candidates` with `reference` on `sequences`, running the reference once.
pub fn compare_all(
    reference: Variant<'_>,
    candidates: &[Variant<'_>],
    sequences: &[&[u32]],
) -> Result<Vec<Comparison>> {
    let context = "held-out evaluation";
    let compute = Error::compute;
    let invalid = |m: String| Error::invalid(Subject::other("<evaluation>"), m);
    if sequences.is_empty() {
        return Err(Error::invalid(
            Subject::other("<evaluation data>"),
            "no evaluation sequences",
        ));
    }
    let same_kind = |c: &Variant<'_>| {
        matches!(
            (reference.model, c.model),
            (Model::Llama(_), Model::Llama(_)) | (Model::Bert(_), Model::Bert(_))
        ) && layers(c.model) == layers(reference.model)
    };
    if let Some(c) = candidates.iter().find(|c| !same_kind(c)) {
        return Err(invalid(format!(
            "the candidate ({} layers) is not the same kind of model as the reference ({} layers)",
            layers(c.model),
            layers(reference.model)
        )));
    }
    match reference.model {
        Model::Llama(_) => {
            let r = llama(&reference).ok_or_else(|| invalid("not a causal LM".into()))?;
            let cs: Vec<_> = candidates.iter().filter_map(|v| llama(v)).collect();
            let mut per: Vec<Vec<Position>> = vec![Vec::new(); cs.len()];
            for seq in sequences {
                let ids = Tensor::from_slice(seq, (1, seq.len()), &Device::Cpu)
                    .map_err(compute(context))?;
                let last = |(m, ov): (&crate::model::llama::Llama, Option<&dyn Overrides>)| {
                    m.run_layers(m.embed(&ids, ov)?, 0..m.num_layers(), ov)
                };
                let hr = last(r).map_err(compute(context))?;
                let hc = cs
                    .iter()
                    .map(|c| last(*c))
                    .collect::<candle_core::Result<Vec<_>>>()
                    .map_err(compute(context))?;
                // Every position but the last has a next token to predict.
                let n = seq.len() - 1;
                for start in (0..n).step_by(CHUNK) {
                    let len = CHUNK.min(n - start);
                    let logits =
                        |(m, ov): (&crate::model::llama::Llama, Option<&dyn Overrides>),
                         h: &Tensor| {
                            m.logits(&h.narrow(1, start, len)?, ov)?
                                .flatten_all()?
                                .to_vec1::<f32>()
                        };
                    let lr = logits(r, &hr).map_err(compute(context))?;
                    let targets = &seq[start + 1..start + 1 + len];
                    let vocab = lr.len() / len;
                    for ((c, h), p) in cs.iter().zip(&hc).zip(per.iter_mut()) {
                        let lc = logits(*c, h).map_err(compute(context))?;
                        p.extend(metrics::positions(&lr, &lc, vocab, targets).map_err(invalid)?);
                    }
                }
            }
            per.iter()
                .map(|p| metrics::summarise(p).map(Comparison::Lm).map_err(invalid))
                .collect()
        }
        Model::Bert(_) => {
            let r = bert(&reference).ok_or_else(|| invalid("not an encoder".into()))?;
            let cs: Vec<_> = candidates.iter().filter_map(|v| bert(v)).collect();
            let mut er = Vec::new();
            let mut ec = vec![Vec::new(); cs.len()];
            for seq in sequences {
                let ids = Tensor::from_slice(seq, (1, seq.len()), &Device::Cpu)
                    .map_err(compute(context))?;
                let embed = |(m, ov): (&crate::model::bert::Bert, Option<&dyn Overrides>)|
                 -> candle_core::Result<Vec<f32>> {
                    let mask = ids.ones_like()?;
                    let x = m.embed_tokens(&ids, &mask, ov)?;
                    let h = m.run_layers(x, &additive_mask(&mask)?, 0..m.num_layers(), ov)?;
                    mean_pool_normalize(&h, &mask)?.flatten_all()?.to_vec1()
                };
                er.extend(embed(r).map_err(compute(context))?);
                for (c, e) in cs.iter().zip(ec.iter_mut()) {
                    e.extend(embed(*c).map_err(compute(context))?);
                }
            }
            let dim = er.len() / sequences.len();
            ec.iter()
                .map(|e| {
                    metrics::compare_embeddings(&er, e, dim)
                        .map(Comparison::Embedding)
                        .map_err(invalid)
                })
                .collect()
        }
    }
}

/// A causal LM variant as its model and overrides.
fn llama<'a>(
    v: &Variant<'a>,
) -> Option<(&'a crate::model::llama::Llama, Option<&'a dyn Overrides>)> {
    match v.model {
        Model::Llama(m) => Some((&**m, v.overrides)),
        Model::Bert(_) => None,
    }
}

/// An encoder variant as its model and overrides.
fn bert<'a>(v: &Variant<'a>) -> Option<(&'a crate::model::bert::Bert, Option<&'a dyn Overrides>)> {
    match v.model {
        Model::Bert(m) => Some((m, v.overrides)),
        Model::Llama(_) => None,
    }
}
