//! The float model's next-token distributions, kept as the top K log-probabilities plus the
//! remaining probability mass per position, so KL against a quantized model can be computed
//! later without storing full logits (49152 floats per token for SmolLM2) or re-running the
//! float model.
//!
//! With the tail lumped into one bucket, KL(P || Q) is computed over K + 1 outcomes; by the
//! log-sum inequality this never exceeds the full KL, and equals it when K covers the vocabulary.

use crate::reference::metrics::{log_softmax, log_sum_exp};
use serde::{Deserialize, Serialize};

/// Top-K reference distributions, position by position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopK {
    /// Entries kept per position.
    pub k: usize,
    /// Token ids, `k` per position, most probable first.
    pub ids: Vec<u32>,
    /// Their log-probabilities.
    pub logprobs: Vec<f32>,
    /// Probability mass outside the top K, per position.
    pub rest: Vec<f32>,
}

impl TopK {
    /// An empty cache keeping `k` entries per position.
    pub fn new(k: usize) -> Self {
        TopK {
            k: k.max(1),
            ids: Vec::new(),
            logprobs: Vec::new(),
            rest: Vec::new(),
        }
    }

    /// Positions stored.
    pub fn positions(&self) -> usize {
        self.rest.len()
    }

    /// Appends every row of `logits` `[positions, vocab]`.
    pub fn push(&mut self, logits: &candle_core::Tensor) -> candle_core::Result<()> {
        let (_, vocab) = logits.dims2()?;
        let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let k = self.k.min(vocab);
        for row in values.chunks_exact(vocab) {
            let lp = log_softmax(row);
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            // Most probable first; ties by id, so the selection is canonical.
            let by_prob =
                |a: &u32, b: &u32| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b));
            if k < vocab {
                order.select_nth_unstable_by(k - 1, by_prob);
            }
            order.truncate(k);
            order.sort_unstable_by(by_prob);
            let kept: f64 = order.iter().map(|&i| lp[i as usize].exp()).sum();
            self.ids.extend(&order);
            self.logprobs
                .extend(order.iter().map(|&i| lp[i as usize] as f32));
            self.rest.push((1.0 - kept).max(0.0) as f32);
        }
        Ok(())
    }

    /// KL(reference || candidate) for positions `start..start + n`, where `candidate` holds
    /// the candidate model's logits `[n, vocab]` for those positions.
    pub fn kl(&self, start: usize, candidate: &[f32], vocab: usize) -> Vec<f64> {
        let k = self.ids.len() / self.positions().max(1);
        candidate
            .chunks_exact(vocab)
            .enumerate()
            .map(|(i, row)| {
                let pos = start + i;
                let lse = log_sum_exp(row);
                let (ids, lps) = (
                    &self.ids[pos * k..(pos + 1) * k],
                    &self.logprobs[pos * k..(pos + 1) * k],
                );
                let mut kl = 0.0;
                let mut q_kept = 0.0;
                for (&id, &lp) in ids.iter().zip(lps) {
                    let lq_i = f64::from(row[id as usize]) - lse;
                    kl += (lp as f64).exp() * (lp as f64 - lq_i);
                    q_kept += lq_i.exp();
                }
                let r_p = self.rest[pos] as f64;
                if r_p > 0.0 {
                    let r_q = (1.0 - q_kept).max(f64::MIN_POSITIVE);
                    kl += r_p * (r_p.ln() - r_q.ln());
                }
                kl.max(0.0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn logits(seed: u32, n: usize, vocab: usize) -> Vec<f32> {
        (0..n * vocab)
            .map(|i| {
                (((i as u32 + seed * 7919).wrapping_mul(2654435761) >> 8) as f32 / 65536.0).sin()
                    * 4.0
            })
            .collect()
    }

    fn full_kl(p: &[f32], q: &[f32]) -> f64 {
        let (lp, lq) = (log_softmax(p), log_softmax(q));
        lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
    }

    #[test]
    fn top_k_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_otherwise() {
        let (n, vocab) = (6, 50);
        let p = logits(1, n, vocab);
        let q = logits(2, n, vocab);
        let t = Tensor::from_vec(p.clone(), (n, vocab), &Device::Cpu).unwrap();
        let mut all = TopK::new(vocab);
        all.push(&t).unwrap();
        let mut some = TopK::new(8);
        some.push(&t).unwrap();
        let exact = all.kl(0, &q, vocab);
        let bound = some.kl(0, &q, vocab);
        for i in 0..n {
            let truth = full_kl(
                &p[i * vocab..(i + 1) * vocab],
                &q[i * vocab..(i + 1) * vocab],
            );
            assert!(
                // Log-probabilities are stored as f32.
                (exact[i] - truth).abs() < 1e-6 * truth.max(1.0) && truth > 1e-3,
                "{} vs {truth}",
                exact[i]
            );
            assert!(bound[i] <= truth + 1e-12 && bound[i] > 0.0);
        }
        // Identical distributions: zero KL.
        assert!(some.kl(0, &p, vocab).iter().all(|&v| v < 1e-6));
        // Kept in order, most probable first, with the rest as the remaining mass.
        let argmax = (0..vocab).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        assert_eq!(some.ids[0] as usize, argmax);
        assert!(some.logprobs[..8].windows(2).all(|w| w[0] >= w[1]));
        let kept: f64 = some.logprobs[..8].iter().map(|&v| (v as f64).exp()).sum();
        assert!((kept + some.rest[0] as f64 - 1.0).abs() < 1e-6);
    }
}
