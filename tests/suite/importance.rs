//! Importance-weighted weight calibration (mse weighted by the per-input-channel mean x² from
//! the calibration pass, llama.cpp's imatrix idea) against plain mse, measured as held-out KLD
//! with every linear in uniform INT4 g32 / INT3 g32 (1 - cosine of sentence embeddings for
//! MiniLM). The figures are printed (`--nocapture`);
//! the assertions are the properties that must hold whatever they are.

use crate::common;
use qpipe::calib;
use qpipe::checkpoint::Checkpoint;
use qpipe::model::Model;
use qpipe::quant::Calibrator;
use qpipe::reference::metrics::compare_embeddings;
use std::path::Path;

/// Every linear of `model` in `format`, calibrated by mse, weighted by the importance from
/// `stats` or not.
fn mse_everywhere(model: &Model, stats: &calib::Stats, format: &str, weighted: bool) {
    for l in model.linears() {
        let imp = stats.linear(l.name()).unwrap().importance();
        l.fake_quantize(
            format.parse().unwrap(),
            Calibrator::Mse,
            weighted.then_some(imp.as_slice()),
        )
        .unwrap();
    }
}

fn measure(name: &str, dir: &Path, calib_tokens: usize, eval_windows: usize) {
    let s = common::calibrated(dir, calib_tokens, eval_windows);
    let kld = |format: &str, weighted: bool| -> f64 {
        mse_everywhere(&s.model, &s.stats, format, weighted);
        let kld = common::mean_kld(common::llama(&s.model), &s.held_out, &s.reference);
        s.model.linears().iter().for_each(|l| l.reset());
        kld
    };
    let mut results = Vec::new();
    for format in ["int4-g32-asym", "int3-g32-asym"] {
        let (plain, weighted) = (kld(format, false), kld(format, true));
        eprintln!(
            "{name} {format}: held-out mean KLD, mse {plain:.4e}, importance-weighted mse {weighted:.4e} ({:+.1}%)",
            100.0 * (weighted / plain - 1.0)
        );
        assert!(plain.is_finite() && weighted.is_finite() && plain > 0.0 && weighted > 0.0);
        results.push((plain, weighted));
    }
    // Fewer bits hurt more, with or without weighting.
    assert!(results[1].0 > results[0].0 && results[1].1 > results[0].1);
}

#[test]
fn importance_weighted_mse_on_the_demo_model() {
    let _cpu = common::busy();
    measure("models/tiny", &common::tiny(), 1024, 4);
}

#[test]
fn importance_weighted_mse_on_smollm2() {
    let _cpu = common::busy();
    let Some(dir) = common::fetched_model("smollm2-135m") else {
        return;
    };
    measure("SmolLM2-135M", &dir, 1024, 2);
}

#[test]
fn importance_weighted_mse_on_minilm() {
    let _cpu = common::busy();
    let Some(dir) = common::fetched_model("all-minilm-l6-v2") else {
        return;
    };
    let ckpt = Checkpoint::open(&dir).unwrap();
    let tok = qpipe::data::tokenizer(&ckpt).unwrap();
    let model = Model::load(&ckpt).unwrap();
    let Model::Bert(bert) = &model else {
        panic!("an encoder")
    };
    let cal = common::tokens(&ckpt, "sotu-calibration.txt");
    let stats = calib::collect(&model, &qpipe::data::sequences(&cal, 128, 2048), 8).unwrap();
    let ids: Vec<Vec<u32>> = common::sotu_sentences(50)
        .iter()
        .map(|s| tok.encode(s.as_str(), true).unwrap().get_ids().to_vec())
        .collect();
    let embed = || -> Vec<f32> {
        ids.iter()
            .flat_map(|s| common::bert_embedding(bert, s))
            .collect()
    };
    let reference = embed();
    let dim = bert.config().hidden_size;
    let mut results = Vec::new();
    for format in ["int4-g32-asym", "int3-g32-asym"] {
        let mut one_minus_cos = [0.0; 2];
        for (k, weighted) in [false, true].into_iter().enumerate() {
            mse_everywhere(&model, &stats, format, weighted);
            let cmp = compare_embeddings(&reference, &embed(), dim).unwrap();
            one_minus_cos[k] = 1.0 - cmp.mean_cosine;
            model.linears().iter().for_each(|l| l.reset());
        }
        let [plain, weighted] = one_minus_cos;
        eprintln!(
            "all-MiniLM-L6-v2 {format}: held-out mean 1 - cos, mse {plain:.4e}, importance-weighted mse {weighted:.4e} ({:+.1}%)",
            100.0 * (weighted / plain - 1.0)
        );
        assert!(plain > 0.0 && weighted > 0.0 && plain < 1.0 && weighted < 1.0);
        results.push((plain, weighted));
    }
    assert!(results[1].0 > results[0].0 && results[1].1 > results[0].1);
}
