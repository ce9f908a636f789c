//! Calibration statistics on the committed demo model: thread-count independence, a round trip
//! through the statistics file, importance checked against recorded inputs, and the top-K
//! reference KL against the full-vocabulary KL.

use crate::common;
use qpipe::calib::{self, Stats};
use qpipe::model::llama::sequence_logits;
use qpipe::model::{Model, Recorder};
use qpipe::quant::Calibrator;
use qpipe::reference::metrics::compare_logits;
use std::sync::Arc;

fn collect_on(threads: usize, model: &Model, seqs: &[&[u32]]) -> Stats {
    common::on_threads(threads, || calib::collect(model, seqs, 64).unwrap())
}

#[test]
fn statistics_are_identical_for_one_and_two_threads_and_survive_a_round_trip() {
    let _cpu = common::busy();
    let (model, ids) = common::tiny_and_calibration();
    let seqs = qpipe::data::sequences(&ids, 128, 512);
    let one = collect_on(1, &model, &seqs);
    let two = collect_on(2, &model, &seqs);
    assert!(one == two, "statistics depend on the thread count");
    // 4 layers x 7 matmuls, and the tied embedding as the LM head.
    assert_eq!(one.linears.len(), 29);
    assert_eq!(one.tokens, 512);
    assert_eq!(one.reference.as_ref().unwrap().positions(), 512);
    let first = &one.linears[0];
    assert_eq!((first.tokens, first.histogram.count()), (512, 512 * 256));
    assert!(first.absmax() > 0.0 && first.abs_percentile(0.999) <= first.absmax());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.json");
    one.save(&path).unwrap();
    assert!(Stats::load(&path).unwrap() == one);

    std::fs::write(&path, b"{\"version\": 1").unwrap();
    let err = Stats::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("stats.json") && err.contains("not a qpipe statistics file"),
        "{err}"
    );
    let mut future = serde_json::to_value(&one).unwrap();
    future["version"] = 99.into();
    std::fs::write(&path, future.to_string()).unwrap();
    let err = Stats::load(&path).unwrap_err().to_string();
    assert!(err.contains("version 99"), "{err}");
}

#[test]
fn importance_is_the_mean_square_of_the_recorded_inputs() {
    let _cpu = common::busy();
    let (model, ids) = common::tiny_and_calibration();
    let seqs = qpipe::data::sequences(&ids, 64, 128);
    let stats = calib::collect(&model, &seqs, 8).unwrap();
    // Independently: record the down_proj inputs of layer 2 and average x^2 per column.
    let layer = model.linears()[2 * 7 + 6];
    let rec = Arc::new(Recorder::default());
    layer.set_observer(Some(rec.clone()));
    let llama = common::llama(&model);
    for s in &seqs {
        sequence_logits(llama, s).unwrap();
    }
    layer.set_observer(None);
    let cols = layer.shape().1;
    let mut sum = vec![0f64; cols];
    let mut rows = 0;
    for (_, x) in rec.take() {
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for row in v.chunks_exact(cols) {
            rows += 1;
            sum.iter_mut()
                .zip(row)
                .for_each(|(s, &x)| *s += (x as f64).powi(2));
        }
    }
    let stats_imp = stats.linear(layer.name()).unwrap().importance();
    assert_eq!(rows, 128);
    for (a, s) in stats_imp.iter().zip(&sum) {
        let b = (s / rows as f64) as f32;
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-12), "{a} vs {b}");
    }
}

#[test]
fn top_k_reference_kl_bounds_and_tracks_the_full_kl() {
    let _cpu = common::busy();
    let (model, ids) = common::tiny_and_calibration();
    let seqs = qpipe::data::sequences(&ids, 128, 256);
    let refs: Vec<_> = [64, 256]
        .iter()
        .map(|&k| calib::collect(&model, &seqs, k).unwrap().reference.unwrap())
        .collect();
    let llama = common::llama(&model);
    let vocab = llama.config().vocab_size;
    let float: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| sequence_logits(llama, s).unwrap())
        .collect();
    for l in model.linears() {
        l.fake_quantize("int3-g32-asym".parse().unwrap(), Calibrator::MinMax, None)
            .unwrap();
    }
    let (mut topk, mut full) = ([0.0; 2], 0.0);
    for (i, s) in seqs.iter().enumerate() {
        let q = sequence_logits(llama, s).unwrap();
        let n = s.len() - 1;
        for (t, r) in topk.iter_mut().zip(&refs) {
            *t += r
                .kl(i * s.len(), &q[..n * vocab], vocab)
                .iter()
                .sum::<f64>()
                / n as f64;
        }
        full += compare_logits(&float[i][..n * vocab], &q[..n * vocab], vocab, &s[1..])
            .unwrap()
            .mean_kld;
    }
    model.linears().iter().for_each(|l| l.reset());
    let n = seqs.len() as f64;
    let (k64, k256, full) = (topk[0] / n, topk[1] / n, full / n);
    eprintln!(
        "INT3 g32 on models/tiny: mean KL top-64 {k64:.5}, top-256 {k256:.5}, full {full:.5}"
    );
    // Lumping the tail never adds KL, and keeping more of the distribution recovers more of it.
    assert!(k64 <= k256 * (1.0 + 1e-9) && k256 <= full * (1.0 + 1e-9));
    assert!(k256 >= 0.85 * full, "top-256 KL {k256} vs full {full}");
}
