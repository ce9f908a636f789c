//! Activation fake-quantization in real forward passes: A16 costs far less than A8, the four
//! calibrators pick different ranges from real activations, and on SmolLM2's heavy-tailed layers
//! a clipping calibrator (entropy or percentile) beats minmax in held-out KLD on at least one.
//! Per-calibrator KLDs are printed (`--nocapture`): clipping SmolLM2's massive activations
//! usually hurts, which is a finding, not a failure.

use crate::common::{self, Calibrated};
use qpipe::calib::Stats;
use qpipe::quant::{ActivationQuant, Calibrator, Symmetry};

/// Held-out mean KLD with the inputs of `layers` (indices into linears()) quantized by `cal`.
fn kld(s: &Calibrated, layers: &[usize], cal: Calibrator, bits: u32) -> f64 {
    let linears = s.model.linears();
    for &i in layers {
        let h = &s.stats.linears[i].histogram;
        linears[i].set_input_quant(Some(
            ActivationQuant::calibrated(cal, h, bits, Symmetry::Asymmetric).unwrap(),
        ));
    }
    let kld = common::mean_kld(common::llama(&s.model), &s.held_out, &s.reference);
    linears.iter().for_each(|l| l.set_input_quant(None));
    kld
}

/// Layers by tail heaviness: absmax over the 99.9th percentile of |x|.
fn heavy_tailed(stats: &Stats, n: usize) -> Vec<usize> {
    let mut by_tail: Vec<(f32, usize)> = stats
        .linears
        .iter()
        .enumerate()
        .map(|(i, l)| (l.absmax() / l.abs_percentile(0.999).max(1e-12), i))
        .collect();
    by_tail.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    by_tail.into_iter().take(n).map(|(_, i)| i).collect()
}

/// `clip_must_win`: assert that on some heavy-tailed layer entropy or percentile beats minmax.
fn check(name: &str, s: &Calibrated, clip_must_win: bool) {
    let all: Vec<usize> = (0..s.model.linears().len()).collect();
    let a16 = kld(s, &all, Calibrator::MinMax, 16);
    let a8 = kld(s, &all, Calibrator::MinMax, 8);
    eprintln!("{name}: all layers A16 minmax KLD {a16:.2e}, A8 minmax {a8:.2e}");
    assert!(a16 * 50.0 < a8, "A16 {a16} vs A8 {a8}");

    // Different calibrators, different ranges, on the same real histograms: every pair of
    // calibrators disagrees on some layer (on one layer two may agree: mse keeps the full range
    // when clipping an outlier costs more than rounding everything else).
    let scales: Vec<Vec<f32>> = s
        .stats
        .linears
        .iter()
        .map(|l| {
            Calibrator::ALL
                .iter()
                .map(|&c| {
                    ActivationQuant::calibrated(c, &l.histogram, 8, Symmetry::Asymmetric)
                        .unwrap()
                        .scale
                })
                .collect()
        })
        .collect();
    let n = Calibrator::ALL.len();
    for i in 0..n {
        for j in i + 1..n {
            let differ = scales.iter().filter(|v| v[i] != v[j]).count();
            eprintln!(
                "{name}: A8 ranges of {:?} and {:?} differ on {differ} of {} layers",
                Calibrator::ALL[i],
                Calibrator::ALL[j],
                scales.len()
            );
            assert!(differ > 0);
        }
    }

    // One heavy-tailed layer's input at A8 at a time: a clipping calibrator must beat minmax.
    let mut won = 0;
    for i in heavy_tailed(&s.stats, 6) {
        let k: Vec<f64> = Calibrator::ALL
            .iter()
            .map(|&c| kld(s, &[i], c, 8))
            .collect();
        let tail = s.stats.linears[i].absmax() / s.stats.linears[i].abs_percentile(0.999);
        eprintln!(
            "{name}: A8 on {} only (absmax / p99.9 = {tail:.1}): KLD by calibrator {:?} = {:?}",
            s.stats.linears[i].name,
            Calibrator::ALL,
            k.iter().map(|v| format!("{v:.3e}")).collect::<Vec<_>>()
        );
        let minmax = k[Calibrator::ALL
            .iter()
            .position(|c| *c == Calibrator::MinMax)
            .unwrap()];
        let best_clip = Calibrator::ALL
            .iter()
            .zip(&k)
            .filter(|(c, _)| matches!(c, Calibrator::Entropy | Calibrator::Percentile(_)))
            .map(|(_, v)| *v)
            .fold(f64::INFINITY, f64::min);
        won += usize::from(best_clip < minmax);
    }
    eprintln!("{name}: entropy or percentile beat minmax on {won} of the 6 heaviest-tailed layers");
    assert!(
        !clip_must_win || won >= 1,
        "{name}: clipping never beat minmax"
    );
}

/// Every SmolLM2 layer's input at A8 alone, per calibrator (about 8 minutes on 2 cores: run
/// with `cargo test --release --test suite activation_quant -- --ignored --nocapture`). Prints each
/// calibrator's held-out KLD per layer and, by tail heaviness, how often it beats minmax and is
/// the best of the four; asserts what the search's choice of mse for activation ranges
/// (`search::fitness`) rests on: mse is the best on more layers than any other calibrator and
/// beats minmax on most.
#[test]
#[ignore]
fn every_smollm2_layer_by_calibrator() {
    let _cpu = common::busy();
    let Some(dir) = common::fetched_model("smollm2-135m") else {
        return;
    };
    let s = common::calibrated(&dir, 1024, 2);
    let mut rows = Vec::new();
    for (i, l) in s.stats.linears.iter().enumerate() {
        let k: Vec<f64> = Calibrator::ALL
            .iter()
            .map(|&c| kld(&s, &[i], c, 8))
            .collect();
        assert!(
            k.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{}: {k:?}",
            l.name
        );
        let tail = l.absmax() / l.abs_percentile(0.999).max(1e-12);
        eprintln!(
            "{} tail {tail:.1}: {:?}",
            l.name,
            k.iter().map(|v| format!("{v:.3e}")).collect::<Vec<_>>()
        );
        rows.push((tail, k));
    }
    let position = |cal| Calibrator::ALL.iter().position(|c| *c == cal).unwrap();
    let (minmax, mse) = (position(Calibrator::MinMax), position(Calibrator::Mse));
    let best_on = |c: usize| {
        rows.iter()
            .filter(|(_, k)| k.iter().all(|v| k[c] <= *v))
            .count()
    };
    let best: Vec<usize> = (0..Calibrator::ALL.len()).map(best_on).collect();
    let mse_wins = rows.iter().filter(|(_, k)| k[mse] < k[minmax]).count();
    eprintln!(
        "all {} layers: best on {best:?} (ties count for each); mse beats minmax on {mse_wins}",
        rows.len()
    );
    assert!(best.iter().all(|&b| b <= best[mse]), "best counts {best:?}");
    assert!(2 * mse_wins > rows.len(), "mse beats minmax on {mse_wins}");
    for (lo, hi) in [(0.0, 4.0), (4.0, 10.0), (10.0, 50.0), (50.0, f32::INFINITY)] {
        let band: Vec<&(f32, Vec<f64>)> =
            rows.iter().filter(|(t, _)| *t >= lo && *t < hi).collect();
        let wins: Vec<String> = Calibrator::ALL
            .iter()
            .enumerate()
            .map(|(c, cal)| {
                let w = band.iter().filter(|(_, k)| k[c] < k[minmax]).count();
                let best = band
                    .iter()
                    .filter(|(_, k)| k.iter().all(|v| k[c] <= *v))
                    .count();
                format!("{cal}: beats minmax {w}, best {best}")
            })
            .collect();
        eprintln!(
            "absmax/p99.9 in [{lo}, {hi}): {} layers; {}",
            band.len(),
            wins.join("; ")
        );
    }
}

#[test]
fn activation_quantization_on_the_demo_model() {
    let _cpu = common::busy();
    let dir = common::tiny();
    // Its tails are mild (absmax / p99.9 <= 6.3): clipping is reported, not required, to win.
    check("models/tiny", &common::calibrated(&dir, 1024, 4), false);
}

#[test]
fn activation_quantization_on_smollm2() {
    let _cpu = common::busy();
    let Some(dir) = common::fetched_model("smollm2-135m") else {
        return;
    };
    check("SmolLM2-135M", &common::calibrated(&dir, 1024, 2), true);
}
