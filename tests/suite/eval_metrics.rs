//! Output metrics against hand-computed values and an independent naive implementation.

use crate::common::{self, synthetic::normal_values};
use qpipe::reference::{compare_embeddings, compare_logits, perplexity};

#[test]
fn hand_computed_two_token_example() {
    // Reference p = (1/2, 1/2); candidate q = (3/4, 1/4); target token 0.
    let r = compare_logits(&[0.0, 0.0], &[3f32.ln(), 0.0], 2, &[0]).unwrap();
    let kl = 0.5 * (4.0f64 / 3.0).ln(); // 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)
    assert!((r.mean_kld - kl).abs() < 1e-7, "{} vs {kl}", r.mean_kld);
    assert!((r.ppl_reference - 2.0).abs() < 1e-12);
    assert!((r.ppl - 4.0 / 3.0).abs() < 1e-7);
    assert!((r.rms_delta_p - 0.25).abs() < 1e-7);
    assert_eq!((r.tokens, r.top1_agreement), (1, 1.0));
}

#[test]
fn identical_models_agree_exactly_and_uniform_perplexity_is_the_vocabulary() {
    let (n, vocab) = (50, 300);
    let logits = normal_values(n * vocab, 2.0, 3);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 37) % vocab as u32).collect();
    let r = compare_logits(&logits, &logits, vocab, &targets).unwrap();
    assert_eq!(
        (r.mean_kld, r.p99_kld, r.rms_delta_p, r.top1_agreement),
        (0.0, 0.0, 0.0, 1.0)
    );
    assert_eq!(r.ppl, r.ppl_reference);
    let uniform = vec![0.25f32; n * vocab];
    assert!((perplexity(&uniform, vocab, &targets).unwrap() - vocab as f64).abs() < 1e-9);
}

/// The same metrics the plain way: probabilities by exp / sum (logits are small here, so no
/// max-subtraction is needed), KL as sum p ln(p / q), p99 by numpy's linear interpolation.
fn naive(r: &[f32], c: &[f32], vocab: usize, targets: &[u32]) -> (f64, f64, f64, f64, f64) {
    let probs = |row: &[f32]| -> Vec<f64> {
        let e: Vec<f64> = row.iter().map(|&v| (v as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    };
    let (mut kls, mut nll, mut dp2, mut agree) = (Vec::new(), 0.0, 0.0, 0.0);
    for (i, &t) in targets.iter().enumerate() {
        let (p, q) = (
            probs(&r[i * vocab..(i + 1) * vocab]),
            probs(&c[i * vocab..(i + 1) * vocab]),
        );
        kls.push(p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum::<f64>());
        nll -= q[t as usize].ln();
        dp2 += (q[t as usize] - p[t as usize]).powi(2);
        let am = |v: &[f64]| {
            v.iter()
                .enumerate()
                .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
        };
        agree += (am(&p) == am(&q)) as u8 as f64;
    }
    let n = targets.len() as f64;
    let mean = kls.iter().sum::<f64>() / n;
    kls.sort_by(f64::total_cmp);
    let pos = 0.99 * (kls.len() - 1) as f64;
    let p99 = kls[pos as usize] + (kls[pos as usize + 1] - kls[pos as usize]) * pos.fract();
    ((nll / n).exp(), mean, p99, agree / n, (dp2 / n).sqrt())
}

#[test]
fn matches_a_naive_implementation_and_ignores_logit_shifts() {
    let (n, vocab) = (200, 64);
    let r = normal_values(n * vocab, 1.5, 1);
    let noise = normal_values(n * vocab, 0.3, 2);
    let c: Vec<f32> = r.iter().zip(&noise).map(|(a, b)| a + b).collect();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 13 + 5) % vocab as u32).collect();
    let ours = compare_logits(&r, &c, vocab, &targets).unwrap();
    let (ppl, mean, p99, agree, rms) = naive(&r, &c, vocab, &targets);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1e-3);
    assert!(
        close(ours.ppl, ppl) && close(ours.mean_kld, mean) && close(ours.p99_kld, p99),
        "{ours:?}"
    );
    assert!(
        close(ours.rms_delta_p, rms) && ours.top1_agreement == agree,
        "{ours:?}"
    );
    assert!(ours.mean_kld > 0.01 && ours.p99_kld > ours.mean_kld);
    // Softmax is shift-invariant per row: a constant added to every logit changes nothing.
    let shifted: Vec<f32> = c.iter().map(|v| v + 100.0).collect();
    let s = compare_logits(&r, &shifted, vocab, &targets).unwrap();
    assert!(
        close(s.mean_kld, ours.mean_kld)
            && close(s.ppl, ours.ppl)
            && s.top1_agreement == ours.top1_agreement
    );
    // Thread count does not change a bit of it.
    assert_eq!(
        common::on_threads(1, || compare_logits(&r, &c, vocab, &targets).unwrap()),
        ours
    );
}

#[test]
fn bad_inputs_are_errors() {
    assert!(compare_logits(&[0.0; 6], &[0.0; 6], 3, &[0])
        .unwrap_err()
        .contains("do not make 1 positions"));
    assert!(compare_logits(&[0.0; 3], &[0.0; 3], 3, &[3])
        .unwrap_err()
        .contains("outside the vocabulary of 3"));
    assert!(compare_logits(&[0.0, f32::NAN, 0.0], &[0.0; 3], 3, &[0])
        .unwrap_err()
        .contains("NaN or Inf"));
    assert!(compare_logits(&[], &[], 3, &[])
        .unwrap_err()
        .contains("no positions"));
    assert!(compare_embeddings(&[1.0, 0.0], &[0.0, 0.0], 2)
        .unwrap_err()
        .contains("undefined"));
    assert!(compare_embeddings(&[1.0; 4], &[1.0; 6], 2).is_err());
}

#[test]
fn embedding_cosines() {
    // Parallel (scaled), orthogonal and opposite pairs.
    let a = [1.0, 2.0, 0.0, 1.0, 0.0, 0.0, 3.0, -1.0, 0.5];
    let b = [2.0, 4.0, 0.0, 0.0, 5.0, 0.0, -3.0, 1.0, -0.5];
    let e = compare_embeddings(&a, &b, 3).unwrap();
    assert_eq!(e.count, 3);
    assert!((e.min_cosine + 1.0).abs() < 1e-12);
    assert!((e.mean_cosine - 0.0).abs() < 1e-12, "(1 + 0 - 1) / 3");
}
