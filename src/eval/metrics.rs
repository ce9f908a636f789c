//! Metrics on model outputs: for causal LMs the set llama.cpp's `perplexity --kl-divergence`
//! reports (perplexity, mean and 99th-percentile KL divergence of the next-token distributions,
//! top-1 agreement, RMS of the change in the correct token's probability), and for encoders the
//! cosine between embeddings.
//!
//! Log-softmax runs in f64 with the max subtracted, per token in parallel; per-token results
//! are collected in order and summed sequentially, so the figures do not depend on the thread
//! count.

use rayon::prelude::*;
use serde::Serialize;

/// A candidate model's next-token predictions against the reference model's, on the same tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LmComparison {
    /// Number of predicted positions.
    pub tokens: usize,
    /// Perplexity of the reference on the targets.
    pub ppl_reference: f64,
    /// Perplexity of the candidate on the targets.
    pub ppl: f64,
    /// Mean KL(reference || candidate) over positions, in nats.
    pub mean_kld: f64,
    /// 99th percentile of the per-position KL divergence.
    pub p99_kld: f64,
    /// Share of positions where both models' most likely token agree.
    pub top1_agreement: f64,
    /// Root mean square of (candidate - reference) probability of the correct next token.
    pub rms_delta_p: f64,
}

/// Per-position log-probabilities, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(row);
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// `ln(sum(exp(row)))` in f64, shifted by the maximum so no term overflows.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    row.iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn check(logits: &[f32], vocab: usize, targets: &[u32], what: &str) -> Result<(), String> {
    if vocab == 0 || logits.len() != targets.len() * vocab {
        return Err(format!(
            "{what}: {} logits do not make {} positions of vocabulary {vocab}",
            logits.len(),
            targets.len()
        ));
    }
    if let Some(t) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(format!(
            "target token {t} is outside the vocabulary of {vocab}"
        ));
    }
    if logits.iter().any(|v| !v.is_finite()) {
        return Err(format!("{what} logits contain NaN or Inf"));
    }
    Ok(())
}

/// Perplexity of `logits` ([positions, vocab], row-major) on the next tokens `targets`.
pub fn perplexity(logits: &[f32], vocab: usize, targets: &[u32]) -> Result<f64, String> {
    check(logits, vocab, targets, "model")?;
    let nll: Vec<f64> = logits
        .par_chunks(vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| -log_softmax(row)[t as usize])
        .collect();
    Ok((nll.iter().sum::<f64>() / targets.len().max(1) as f64).exp())
}

/// One predicted position of a candidate against the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// KL(reference || candidate), nats.
    pub kl: f64,
    /// Reference negative log-likelihood of the target.
    pub nll_reference: f64,
    /// Candidate negative log-likelihood of the target.
    pub nll: f64,
    /// Whether both models' most likely tokens agree.
    pub top1_agrees: bool,
    /// Candidate minus reference probability of the target.
    pub delta_p: f64,
}

/// Per-position figures for `candidate` against `reference` logits ([positions, vocab] each)
/// on next tokens `targets`, so long evaluations can be compared a chunk at a time.
pub fn positions(
    reference: &[f32],
    candidate: &[f32],
    vocab: usize,
    targets: &[u32],
) -> Result<Vec<Position>, String> {
    check(reference, vocab, targets, "reference")?;
    check(candidate, vocab, targets, "candidate")?;
    Ok(reference
        .par_chunks(vocab)
        .zip(candidate.par_chunks(vocab))
        .zip(targets.par_iter())
        .map(|((r, c), &t)| {
            let (lr, lc) = (log_softmax(r), log_softmax(c));
            let kl = lr
                .iter()
                .zip(&lc)
                .map(|(a, b)| a.exp() * (a - b))
                .sum::<f64>()
                .max(0.0);
            let t = t as usize;
            Position {
                kl,
                nll_reference: -lr[t],
                nll: -lc[t],
                top1_agrees: argmax(r) == argmax(c),
                delta_p: lc[t].exp() - lr[t].exp(),
            }
        })
        .collect())
}

/// The summary of per-position figures (in order, so sums do not depend on threads).
pub fn summarise(per: &[Position]) -> Result<LmComparison, String> {
    if per.is_empty() {
        return Err("no positions to compare".into());
    }
    let n = per.len() as f64;
    let mut kls: Vec<f64> = per.iter().map(|p| p.kl).collect();
    kls.sort_by(f64::total_cmp);
    Ok(LmComparison {
        tokens: per.len(),
        ppl_reference: (per.iter().map(|p| p.nll_reference).sum::<f64>() / n).exp(),
        ppl: (per.iter().map(|p| p.nll).sum::<f64>() / n).exp(),
        mean_kld: per.iter().map(|p| p.kl).sum::<f64>() / n,
        p99_kld: percentile_sorted(&kls, 0.99),
        top1_agreement: per.iter().filter(|p| p.top1_agrees).count() as f64 / n,
        rms_delta_p: (per.iter().map(|p| p.delta_p * p.delta_p).sum::<f64>() / n).sqrt(),
    })
}

/// Compares `candidate` with `reference` logits ([positions, vocab] each) on next tokens `targets`.
pub fn compare_logits(
    reference: &[f32],
    candidate: &[f32],
    vocab: usize,
    targets: &[u32],
) -> Result<LmComparison, String> {
    summarise(&positions(reference, candidate, vocab, targets)?)
}

/// The q-quantile of sorted values, interpolating linearly between order statistics.
fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + (next - sorted[i]) * frac,
        None => sorted[i],
    }
}

/// An encoder's embeddings against the reference's, one cosine per input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingComparison {
    /// Number of embeddings compared.
    pub count: usize,
    /// Mean cosine similarity.
    pub mean_cosine: f64,
    /// Smallest cosine similarity.
    pub min_cosine: f64,
}

/// Compares embeddings ([count, dim] each, row-major) input by input.
pub fn compare_embeddings(
    reference: &[f32],
    candidate: &[f32],
    dim: usize,
) -> Result<EmbeddingComparison, String> {
    if dim == 0
        || reference.is_empty()
        || reference.len() != candidate.len()
        || reference.len() % dim != 0
    {
        return Err(format!(
            "embeddings of {} and {} values do not make rows of dimension {dim}",
            reference.len(),
            candidate.len()
        ));
    }
    let cos: Vec<f64> = reference
        .chunks(dim)
        .zip(candidate.chunks(dim))
        .map(|(a, b)| {
            let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            if na == 0.0 || nb == 0.0 {
                f64::NAN
            } else {
                dot / (na * nb)
            }
        })
        .collect();
    if cos.iter().any(|c| !c.is_finite()) {
        return Err("an embedding is zero or not finite; its cosine is undefined".into());
    }
    Ok(EmbeddingComparison {
        count: cos.len(),
        mean_cosine: cos.iter().sum::<f64>() / cos.len() as f64,
        min_cosine: cos.iter().copied().fold(f64::INFINITY, f64::min),
    })
}
