//! The evolutionary search on the committed demo model: it never does worse than its best
//! seed, its front does not depend on the thread count, and a search interrupted after one
//! generation and resumed from its state file ends where an uninterrupted one does.

use crate::common;
use qpipe::calib;
use qpipe::quant::{Activation, Calibrator, Format};
use qpipe::reference::{batch, Baseline};
use qpipe::search::fitness::Evaluator;
use qpipe::search::genome::{Genome, Space};
use qpipe::search::{self, Constraints, Costs, Outcome, Settings, StateFile};
use qpipe::sensitivity::{self, Options};

/// A stand-in target whose latency and energy grow with the bytes read.
struct Bytes;

impl Costs for Bytes {
    fn latency_energy(&self, space: &Space, g: &Genome) -> (f64, f64) {
        (space.bytes(g) as f64 / 1e6, space.bytes(g) as f64 / 1e7)
    }
}

fn formats() -> Vec<Format> {
    [
        "int8-channel-sym",
        "int4-g32-asym",
        "int3-g32-asym",
        "int2-g32-asym",
    ]
    .iter()
    .map(|f| f.parse().unwrap())
    .collect()
}

#[test]
fn search_beats_its_seeds_is_thread_independent_and_resumes_exactly() {
    let _cpu = common::busy();
    let (model, ids) = common::tiny_and_calibration();
    let seqs = qpipe::data::sequences(&ids, 128, 512);
    let stats = calib::collect(&model, &seqs, 1).unwrap();
    let sens = sensitivity::analyse(
        &model,
        &seqs,
        &stats,
        &Options {
            formats: formats(),
            calibrator: Calibrator::Mse,
            top_k: 64,
            reuse: qpipe::sensitivity::Reuse::Prefix,
            tensors: vec![],
            estimated: vec![],
        },
        &|_| {},
    )
    .unwrap();
    let baseline = Baseline::run(&model, &batch(&seqs).unwrap(), 64).unwrap();
    let space = Space::new(
        &model,
        &formats(),
        |_, _| true,
        vec![Calibrator::Mse],
        vec![Activation::Float],
    )
    .unwrap();
    let settings = Settings {
        population: 8,
        generations: 3,
        seed: 7,
        constraints: Constraints {
            max_bpw: Some(3.9),
            ..Constraints::default()
        },
    };
    let search = |threads: usize, settings: &Settings, state: Option<StateFile>| {
        common::on_threads(threads, || {
            let evaluator =
                Evaluator::new(&model, &space, &baseline, &stats, 1 << 28, 1 << 28).unwrap();
            search::run(&evaluator, &Bytes, Some(&sens), settings, state, &|_| {})
        })
    };

    let two: Outcome = search(2, &settings, None).unwrap();
    let best_seed = two
        .seeds
        .iter()
        .filter(|p| p.fitness.bits_per_weight <= 3.9)
        .map(|p| p.fitness.loss)
        .fold(f64::INFINITY, f64::min);
    let selected = two.selected.clone().expect("a genome within 3.9 bpw");
    for p in &two.seeds {
        eprintln!(
            "seed {:<28} {:.3} bpw loss {:.4e}",
            p.origin, p.fitness.bits_per_weight, p.fitness.loss
        );
    }
    eprintln!(
        "selected ({}) {:.3} bpw loss {:.4e}; front of {}; {} requests, {} cache hits",
        selected.origin,
        selected.fitness.bits_per_weight,
        selected.fitness.loss,
        two.front.len(),
        two.requests,
        two.cache_hits
    );
    assert!(selected.fitness.bits_per_weight <= 3.9);
    assert!(
        selected.fitness.loss <= best_seed,
        "{} > {best_seed}",
        selected.fitness.loss
    );
    assert!(two
        .seeds
        .iter()
        .any(|p| matches!(p.origin, search::Origin::Lagrangian { .. })));
    assert!(two
        .front
        .windows(2)
        .all(|w| w[0].fitness.bytes <= w[1].fitness.bytes));

    let one = search(1, &settings, None).unwrap();
    assert!(
        one.front == two.front && one.selected == two.selected,
        "thread count changed the front"
    );

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let first = Settings {
        generations: 1,
        ..settings.clone()
    };
    let start = StateFile {
        path: &state,
        resume: false,
    };
    let resume = StateFile {
        resume: true,
        ..start
    };
    search(2, &first, Some(start)).unwrap();
    let resumed = search(2, &settings, Some(resume)).unwrap();
    assert!(
        resumed.front == two.front && resumed.selected == two.selected,
        "resume diverged"
    );
    let fresh = |o: &Outcome| o.requests - o.cache_hits;
    assert!(
        fresh(&resumed) < fresh(&two),
        "the resumed search redid finished work"
    );

    let other = Settings {
        seed: 8,
        ..settings
    };
    let err = search(2, &other, Some(resume)).unwrap_err().to_string();
    assert!(
        err.contains("state.json") && err.contains("other settings"),
        "{err}"
    );
}
