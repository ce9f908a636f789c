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

/// `ln(sum(exp(row)))` in f64, shifted by the maximum so no term overflows; NaN if `row`
/// holds a NaN. Runs once per position over the whole vocabulary (49152 entries for SmolLM2)
/// for every candidate a search or sensitivity run measures, so it is vectorised: libm's scalar
/// `exp` was a tenth of a sensitivity run. Every term is accurate to about 1e-15, so KL against
/// the full vocabulary (where an error in the normaliser enters to first order) stays exact.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature this build was compiled for.
            return unsafe { log_sum_exp_avx512(row) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { log_sum_exp_avx2(row) };
        }
    }
    log_sum_exp_body(row)
}

/// [`log_sum_exp_body`] compiled for AVX-512 (eight f64 lanes). Rust never contracts
/// `a * b + c` into an FMA, so every build computes bit-identical results.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn log_sum_exp_avx512(row: &[f32]) -> f64 {
    log_sum_exp_body(row)
}

/// [`log_sum_exp_body`] compiled for AVX2 (four f64 lanes), bit-identical likewise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn log_sum_exp_avx2(row: &[f32]) -> f64 {
    log_sum_exp_body(row)
}

/// Lanes of the sums in [`log_sum_exp_body`]: fixed, so the summation order (and the result)
/// is the same on every CPU.
const LSE_LANES: usize = 8;

#[inline(always)]
fn log_sum_exp_body(row: &[f32]) -> f64 {
    let mut lanes = [f32::NEG_INFINITY; LSE_LANES];
    let mut chunks = row.chunks_exact(LSE_LANES);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let max = f64::from(max);
    let mut sums = [0f64; LSE_LANES];
    let mut chunks = row.chunks_exact(LSE_LANES);
    for c in &mut chunks {
        for (s, &v) in sums.iter_mut().zip(c) {
            *s += exp_nonpositive(f64::from(v) - max);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| exp_nonpositive(f64::from(v) - max))
        .sum();
    let sum =
        ((sums[0] + sums[4]) + (sums[1] + sums[5])) + ((sums[2] + sums[6]) + (sums[3] + sums[7]));
    (sum + tail).ln() + max
}

/// `e^x` for `x <= 0` (NaN stays NaN; below -700, where `e^x` is under 1e-304, it returns
/// `e^-700`), with relative error about 1e-15, in straight-line code the compiler vectorises:
/// `x = n ln2 + r` with `|r| <= ln2/2`, `e^r` by its Taylor series to degree 12 (truncation
/// below 2e-16), and `2^n` built in the exponent bits.
#[inline(always)]
fn exp_nonpositive(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    // Adding then subtracting 1.5 * 2^52 rounds to the nearest integer.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    let x = if x < -700.0 { -700.0 } else { x };
    let t = x * std::f64::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = INV_FACTORIALS[12];
    for c in INV_FACTORIALS[..12].iter().rev() {
        p = p * r + c;
    }
    // The low bits of `t` hold n (two's complement, |n| < 2^31).
    let n_bits = (t.to_bits() as i64).wrapping_sub(ROUND.to_bits() as i64);
    let scale = f64::from_bits(((n_bits + 1023) << 52) as u64);
    p * scale
}

/// `1 / k!` for `k` in 0..=12, the Taylor coefficients of `e^r`.
const INV_FACTORIALS: [f64; 13] = {
    let mut c = [1.0; 13];
    let mut k = 1;
    while k < 13 {
        c[k] = c[k - 1] / k as f64;
        k += 1;
    }
    c
};

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
        .map(|(row, &t)| log_sum_exp(row) - f64::from(row[t as usize]))
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
        || !reference.len().is_multiple_of(dim)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward formula with libm's scalar `exp`.
    fn reference_lse(row: &[f32]) -> f64 {
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        row.iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max
    }

    #[test]
    fn exp_nonpositive_matches_libm() {
        let mut worst = 0f64;
        for i in 0..=700_000 {
            let x = -(i as f64) * 1e-3 - (i % 7) as f64 * 1.3e-7;
            let (got, want) = (exp_nonpositive(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-15, "worst relative error {worst:e}");
        assert!(exp_nonpositive(f64::NAN).is_nan());
        assert!(exp_nonpositive(-1e9) < 1e-303);
    }

    #[test]
    fn log_sum_exp_matches_the_scalar_formula_in_every_build() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        // A vocabulary-sized row with a few dominant logits, odd lengths for the tails, and a
        // row spanning more than e^-700.
        let mut rows: Vec<Vec<f32>> = vec![(0..49_152).map(|_| 12.0 * next() - 6.0).collect()];
        rows[0][17] = 25.0;
        rows[0][40_000] = 24.5;
        rows.extend((1..20).map(|n| (0..n).map(|_| 40.0 * next() - 20.0).collect()));
        rows.push(vec![3.0, -2000.0, 2.5, f32::NEG_INFINITY, 1.0]);
        for row in &rows {
            let (got, want) = (log_sum_exp(row), reference_lse(row));
            assert!(
                (got - want).abs() <= 1e-13 * want.abs().max(1.0),
                "{got} vs {want}"
            );
            assert_eq!(log_sum_exp_body(row).to_bits(), got.to_bits());
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the feature was just detected.
                assert_eq!(unsafe { log_sum_exp_avx2(row) }.to_bits(), got.to_bits());
            }
        }
        assert!(log_sum_exp(&[1.0, f32::NAN, 2.0]).is_nan());
    }
}
