//! Per-tensor sensitivity: for every quantizable matmul weight and each candidate format, the
//! real accuracy loss of the model when only that tensor is stored in that format, measured
//! with forward passes on the calibration tokens (mean KL divergence of the next-token
//! distributions against the float model for causal LMs, mean 1 - cosine of the sentence
//! embeddings for encoders), next to a cheap proxy (the importance-weighted squared weight
//! error), with the proxy's Spearman rank correlation to the real loss.
//!
//! Prefix reuse: the float [`Baseline`] keeps the hidden states entering every layer, so a
//! candidate in layer L starts from them and only recomputes layers L.. and the head.
//! Candidates run in parallel on the shared model (each passes its weight as a [`Swap`]
//! override, nothing is mutated) and are collected in a fixed order, so the result does not
//! depend on the thread count.

use crate::calib::Stats;
use crate::error::{Error, Result, Subject};
use crate::model::{Model, QLinear, Swap};
use crate::quant::{Calibrator, Format};
pub use crate::reference::Metric;
use crate::reference::{batch, Baseline};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Where a candidate's forward pass starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// From the float hidden states entering the candidate's layer (the normal mode).
    Prefix,
    /// From the embeddings: the whole model again, only to measure what reuse saves.
    FullRecompute,
}

/// What a sensitivity run measures and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Candidate formats for every tensor.
    pub formats: Vec<Format>,
    /// Calibrator choosing the weight ranges (weighted by the importance vector).
    pub calibrator: Calibrator,
    /// Log-probabilities kept per position of the float reference (causal LMs).
    pub top_k: usize,
    /// Where each candidate's forward pass starts.
    pub reuse: Reuse,
    /// Only tensors whose name contains one of these (all when empty).
    pub tensors: Vec<String>,
    /// Formats whose loss is estimated rather than measured: the tensor's proxy in that format
    /// times its measured loss per unit of proxy in the measured format nearest in size (to
    /// first order the loss grows with the importance-weighted error), at the cost of a
    /// quantization instead of a forward pass.
    pub estimated: Vec<Format>,
}

impl Options {
    /// Whether the tensor named `name` is measured (`tensors` empty, or one is in its name).
    pub fn selects(&self, name: &str) -> bool {
        self.tensors.is_empty() || self.tensors.iter().any(|t| name.contains(t))
    }
}

/// One tensor in one format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Checkpoint name of the weight.
    pub tensor: String,
    /// Index of the layer it sits in (an LM head, tied or not, counts as the layer after the
    /// last; embedding tables as layer 0).
    pub layer: usize,
    /// `[rows, cols]` of the weight.
    pub shape: [usize; 2],
    /// The candidate format.
    #[serde(with = "crate::quant::by_name")]
    pub format: Format,
    /// Exact bits per weight of the format on this shape (scales and zero-points included).
    pub bits_per_weight: f64,
    /// Measured accuracy loss with only this tensor quantized.
    pub loss: f64,
    /// Importance-weighted squared weight error: sum over rows and columns of
    /// `importance[col] * (w - q(w))^2`, the expected squared output error if input channels
    /// were uncorrelated.
    pub proxy: f64,
    /// Whether `loss` was estimated from the proxy (see [`Options::estimated`]), not measured.
    #[serde(default)]
    pub estimated: bool,
}

/// A (tensor, format) pair that was not measured, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// Checkpoint name of the weight.
    pub tensor: String,
    /// The format it cannot be stored in.
    #[serde(with = "crate::quant::by_name")]
    pub format: Format,
    /// The reason.
    pub reason: String,
}

/// The result of a sensitivity run (deterministic: no timings, so reruns compare byte for byte).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    /// What `loss` measures.
    pub metric: Metric,
    /// Sequences the loss is averaged over and their length in tokens.
    pub sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// The weight calibrator used.
    #[serde(with = "crate::quant::by_name")]
    pub calibrator: Calibrator,
    /// Whether candidates started from the float prefix.
    pub prefix_reuse: bool,
    /// Reference log-probabilities kept per position (causal LMs).
    pub top_k: Option<usize>,
    /// Every measured (tensor, format), tensors in forward order, formats in the given order.
    pub entries: Vec<Entry>,
    /// Pairs a format cannot store.
    pub skipped: Vec<Skipped>,
    /// Spearman rank correlation between `proxy` and `loss` over the measured entries.
    pub spearman: Option<f64>,
}

/// Measures the sensitivity of every quantizable tensor of `model` (filtered by
/// `options.tensors`) to each of `options.formats` on `sequences` (equal lengths), with weight
/// importance from `stats`; `progress(total)` is called once per measured candidate, with the
/// number of (tensor, format) pairs measured in all (shapes a format cannot store are skipped).
pub fn analyse(
    model: &Model,
    sequences: &[&[u32]],
    stats: &Stats,
    options: &Options,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Sensitivity> {
    let data = || Subject::other("<calibration data>");
    let seq_len = sequences.first().map_or(0, |s| s.len());
    if seq_len < 2 || sequences.iter().any(|s| s.len() != seq_len) {
        return Err(Error::invalid(
            data(),
            "sensitivity needs at least one sequence, all of the same length >= 2",
        ));
    }
    if options.formats.is_empty() {
        return Err(Error::invalid(
            Subject::option("--formats"),
            "no formats given",
        ));
    }
    let baseline = batch(sequences)
        .and_then(|ids| Baseline::run(model, &ids, options.top_k))
        .map_err(Error::compute("float pass"))?;

    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    for (layer, linears) in model.quantizable_by_layer().into_iter().enumerate() {
        for linear in linears {
            let name = linear.name();
            if !options.selects(name) {
                continue;
            }
            let (rows, cols) = linear.shape();
            // A table only looked up has no input: every column weighs the same.
            let importance = if linear.usage().multiplies() {
                stats
                    .linear(name)
                    .ok_or_else(|| {
                        Error::invalid(data(), format!("the statistics have no entry for {name}"))
                    })?
                    .importance()
            } else {
                vec![1.0; cols]
            };
            let all = options.formats.iter().map(|f| (*f, false));
            for (format, estimated) in all.chain(options.estimated.iter().map(|f| (*f, true))) {
                match format.check(rows, cols) {
                    Ok(()) => candidates.push(Candidate {
                        layer,
                        linear,
                        format,
                        importance: importance.clone(),
                        estimated,
                    }),
                    Err(reason) => skipped.push(Skipped {
                        tensor: name.to_string(),
                        format,
                        reason,
                    }),
                }
            }
        }
    }
    if candidates.iter().all(|c| c.estimated) {
        return Err(Error::invalid(
            Subject::option("--tensors"),
            "no tensor and format to measure",
        ));
    }

    // Measured candidates first, then the estimates that scale their proxies.
    let measured = candidates.iter().filter(|c| !c.estimated).count();
    let mut entries: Vec<Option<Entry>> = candidates
        .par_iter()
        .map(|c| {
            if c.estimated {
                return Ok(None);
            }
            let entry = measure(model, &baseline, c, options)?;
            progress(measured);
            Ok(Some(entry))
        })
        .collect::<Result<_>>()?;
    let estimates = candidates
        .par_iter()
        .enumerate()
        .filter(|(_, c)| c.estimated)
        .map(|(i, c)| {
            let (_, _, proxy) = weighted_error(c, options.calibrator)?;
            let (rows, cols) = c.linear.shape();
            let bpw = c.format.bits_per_weight(rows, cols);
            let distance = |e: &Entry| (e.bits_per_weight - bpw).abs();
            let nearest = entries
                .iter()
                .flatten()
                .filter(|e| e.tensor == c.linear.name())
                .min_by(|a, b| {
                    // Ties go to the larger format, whose small perturbation the first-order
                    // scaling describes better.
                    distance(a)
                        .total_cmp(&distance(b))
                        .then(b.bits_per_weight.total_cmp(&a.bits_per_weight))
                })
                .ok_or_else(|| {
                    Error::invalid(
                        Subject::tensor(c.linear.name()),
                        "no measured format to scale the estimate from",
                    )
                })?;
            let per_proxy = if nearest.proxy > 0.0 {
                nearest.loss / nearest.proxy
            } else {
                0.0
            };
            Ok((
                i,
                Entry {
                    tensor: c.linear.name().to_string(),
                    layer: c.layer,
                    shape: [rows, cols],
                    format: c.format,
                    bits_per_weight: bpw,
                    loss: if nearest.proxy > 0.0 {
                        proxy * per_proxy
                    } else {
                        nearest.loss
                    },
                    proxy,
                    estimated: true,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, e) in estimates {
        entries[i] = Some(e);
    }
    let entries: Vec<Entry> = entries.into_iter().flatten().collect();
    let measured: Vec<&Entry> = entries.iter().filter(|e| !e.estimated).collect();

    let spearman = spearman(
        &measured.iter().map(|e| e.proxy).collect::<Vec<_>>(),
        &measured.iter().map(|e| e.loss).collect::<Vec<_>>(),
    );
    Ok(Sensitivity {
        metric: baseline.metric(),
        sequences: sequences.len(),
        seq_len,
        calibrator: options.calibrator,
        prefix_reuse: options.reuse == Reuse::Prefix,
        top_k: matches!(model, Model::Llama(_)).then_some(options.top_k),
        entries,
        skipped,
        spearman,
    })
}

/// One (tensor, format) to measure or estimate.
struct Candidate<'m> {
    layer: usize,
    linear: &'m QLinear,
    format: Format,
    importance: Vec<f32>,
    estimated: bool,
}

/// The float weights, their fake-quantized values in the candidate's format, and the
/// importance-weighted squared error between them.
fn weighted_error(c: &Candidate<'_>, calibrator: Calibrator) -> Result<(Vec<f32>, Vec<f32>, f64)> {
    let (rows, cols) = c.linear.shape();
    let w = c.linear.float_values(c.format)?;
    let fake = crate::quant::fake_quantize(
        &w,
        rows,
        cols,
        c.format,
        calibrator,
        Some(&c.importance),
        None,
    )
    .map_err(|m| Error::unsupported(Subject::tensor(c.linear.name()), m))?;
    let proxy = w
        .chunks_exact(cols)
        .zip(fake.chunks_exact(cols))
        .map(|(wr, fr)| {
            wr.iter()
                .zip(fr)
                .zip(&c.importance)
                .map(|((a, b), i)| f64::from(*i) * f64::from(a - b).powi(2))
                .sum::<f64>()
        })
        .sum();
    Ok((w, fake, proxy))
}

fn measure(
    model: &Model,
    baseline: &Baseline,
    c: &Candidate<'_>,
    options: &Options,
) -> Result<Entry> {
    let name = c.linear.name();
    let (rows, cols) = c.linear.shape();
    let context = || format!("{name} in {}", c.format);
    let (_, fake, proxy) = weighted_error(c, options.calibrator)?;
    let weight =
        Tensor::from_vec(fake, (rows, cols), &Device::Cpu).map_err(Error::compute(context()))?;
    let swap = Swap {
        name,
        weight: &weight,
        format: c.format,
    };
    // An embedding table changes the model from its first layer on.
    let start = match options.reuse {
        Reuse::Prefix if !c.linear.usage().gathers() => c.layer,
        Reuse::Prefix | Reuse::FullRecompute => 0,
    };
    let loss = baseline
        .loss_from(model, start, Some(&swap))
        .map_err(Error::compute(context()))?;
    Ok(Entry {
        tensor: name.to_string(),
        layer: c.layer,
        shape: [rows, cols],
        format: c.format,
        bits_per_weight: c.format.bits_per_weight(rows, cols),
        loss,
        proxy,
        estimated: false,
    })
}

/// Spearman's rank correlation (ties get their average rank); `None` for fewer than 3 pairs or
/// a constant input.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 3 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let mean = (n + 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean).powi(2);
        vb += (y - mean).powi(2);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// 1-based ranks, ties sharing their average rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_matches_hand_computed_values() {
        // Monotone but not linear: rank correlation 1.
        assert_eq!(
            spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 8.0, 27.0, 1e6]),
            Some(1.0)
        );
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // Ranks a = [1, 2.5, 2.5, 4], b = [1, 3, 2, 4]: cov 4.5, variances 4.5 and 5.
        let r = spearman(&[0.1, 0.5, 0.5, 0.9], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((r - 4.5 / (4.5f64 * 5.0).sqrt()).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0, 2.0]), None);
    }
}
