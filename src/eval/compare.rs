//! Held-out accuracy: a candidate model (a packed checkpoint, or the float model with
//! fake-quantized overrides) against the float reference on evaluation sequences, with the
//! full metric set (all-vocabulary KL, perplexity, top-1, ...; cosine for encoders).
//!
//! Sequences are run one at a time and logits compared [`CHUNK`] positions at a time, so memory
//! stays at one sequence's activations whatever the number of evaluation tokens.

use super::baseline::layers;
use super::metrics::{self, EmbeddingComparison, LmComparison, Position};
use crate::error::{Error, Result};
use crate::model::bert::{additive_mask, mean_pool_normalize};
use crate::model::{Model, Overrides};
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
    let context = "held-out evaluation";
    let compute = Error::compute;
    if sequences.is_empty() {
        return Err(Error::invalid(
            std::path::Path::new("<evaluation data>"),
            "no evaluation sequences",
        ));
    }
    match (reference.model, candidate.model) {
        (Model::Llama(r), Model::Llama(c)) => {
            let mut per: Vec<Position> = Vec::new();
            for seq in sequences {
                let ids = Tensor::from_slice(seq, (1, seq.len()), &Device::Cpu)
                    .map_err(compute(context))?;
                let last = |m: &crate::model::llama::Llama, ov| {
                    m.run_layers(m.embed(&ids)?, 0..m.num_layers(), ov)
                };
                let (hr, hc) = (
                    last(r, reference.overrides).map_err(compute(context))?,
                    last(c, candidate.overrides).map_err(compute(context))?,
                );
                // Every position but the last has a next token to predict.
                let n = seq.len() - 1;
                for start in (0..n).step_by(CHUNK) {
                    let len = CHUNK.min(n - start);
                    let logits = |m: &crate::model::llama::Llama, h: &Tensor, ov| {
                        m.logits(&h.narrow(1, start, len)?, ov)?
                            .flatten_all()?
                            .to_vec1::<f32>()
                    };
                    let lr = logits(r, &hr, reference.overrides).map_err(compute(context))?;
                    let lc = logits(c, &hc, candidate.overrides).map_err(compute(context))?;
                    let targets = &seq[start + 1..start + 1 + len];
                    let vocab = lr.len() / len;
                    per.extend(
                        metrics::positions(&lr, &lc, vocab, targets).map_err(|m| {
                            Error::invalid(std::path::Path::new("<evaluation>"), m)
                        })?,
                    );
                }
            }
            metrics::summarise(&per)
                .map(Comparison::Lm)
                .map_err(|m| Error::invalid(std::path::Path::new("<evaluation>"), m))
        }
        (Model::Bert(r), Model::Bert(c)) => {
            let (mut er, mut ec) = (Vec::new(), Vec::new());
            for seq in sequences {
                let ids = Tensor::from_slice(seq, (1, seq.len()), &Device::Cpu)
                    .map_err(compute(context))?;
                let embed = |m: &crate::model::bert::Bert, ov| -> candle_core::Result<Vec<f32>> {
                    let mask = ids.ones_like()?;
                    let x = m.embed_tokens(&ids, &mask)?;
                    let h = m.run_layers(x, &additive_mask(&mask)?, 0..m.num_layers(), ov)?;
                    mean_pool_normalize(&h, &mask)?.flatten_all()?.to_vec1()
                };
                er.extend(embed(r, reference.overrides).map_err(compute(context))?);
                ec.extend(embed(c, candidate.overrides).map_err(compute(context))?);
            }
            let dim = er.len() / sequences.len();
            metrics::compare_embeddings(&er, &ec, dim)
                .map(Comparison::Embedding)
                .map_err(|m| Error::invalid(std::path::Path::new("<evaluation>"), m))
        }
        _ => Err(Error::invalid(
            std::path::Path::new("<evaluation>"),
            format!(
                "the candidate ({} layers) is not the same kind of model as the reference ({} layers)",
                layers(candidate.model),
                layers(reference.model)
            ),
        )),
    }
}
