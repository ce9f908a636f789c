//! `pipeline::compress` called in-process, as a library user would: the observer hears the
//! stages in order and the search's progress to the end, the returned report is the qpipe.json
//! written, the packed file evaluates to the metrics it reports, and the binary given the same
//! request writes the same bytes.

use crate::common::{self, tiny};
use qpipe::pipeline::eval::{evaluate, EvalRequest};
use qpipe::pipeline::policy::Export;
use qpipe::pipeline::{
    compress, CompressRequest, Limits, Observer, SearchPlan, Silent, Stage, Start, Step, TextPlan,
};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Records what an observer is told.
#[derive(Default)]
struct Recorder {
    stages: Mutex<Vec<Stage>>,
    search: Mutex<Vec<(u64, u64)>>,
    finished: Mutex<Vec<Step>>,
}

impl Observer for Recorder {
    fn stage(&self, stage: Stage, _: Duration) {
        self.stages.lock().unwrap().push(stage);
    }
    fn note(&self, _: &str) {}
    fn progress(&self, step: Step, done: u64, total: u64, _: &str) {
        if step == Step::Search {
            self.search.lock().unwrap().push((done, total));
        }
    }
    fn finished(&self, step: Step) {
        self.finished.lock().unwrap().push(step);
    }
}

/// A small hexagon run of models/tiny into `out`, as `qpipe compress` would map these options.
fn request(out: &Path) -> CompressRequest {
    CompressRequest {
        model: tiny(),
        target: "hexagon".into(),
        limits: Limits {
            max_bpw: Some(5.0),
            ..Limits::default()
        },
        text: TextPlan {
            tokens: 512,
            eval_tokens: 512,
            seq_len: Some(128),
            sensitivity_tokens: 128,
            top_k: 64,
            ..TextPlan::default()
        },
        search: SearchPlan {
            population: 6,
            generations: 2,
            ..SearchPlan::default()
        },
        out: out.to_path_buf(),
        start: Start::Fresh,
        command: Vec::new(),
        exports: Vec::new(),
    }
}

/// The command line the binary records for `request` (argv[0] is the binary's path).
fn argv(r: &CompressRequest) -> Vec<String> {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    [
        env!("CARGO_BIN_EXE_qpipe").to_string(),
        "compress".into(),
        s(&r.model),
        "--target".into(),
        r.target.clone(),
        "--max-bpw".into(),
        "5".into(),
        "--tokens".into(),
        "512".into(),
        "--eval-tokens".into(),
        "512".into(),
        "--seq-len".into(),
        "128".into(),
        "--sensitivity-tokens".into(),
        "128".into(),
        "--top-k".into(),
        "64".into(),
        "--population".into(),
        "6".into(),
        "--generations".into(),
        "2".into(),
        "--out".into(),
        s(&r.out),
    ]
    .to_vec()
}

#[test]
fn compress_in_process_reports_what_it_wrote_and_matches_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&dir.path().join("lib"));
    req.command = argv(&req);
    let recorder = Recorder::default();
    let report = compress(&req, &recorder).unwrap();

    assert_eq!(
        *recorder.stages.lock().unwrap(),
        [
            Stage::Calibration,
            Stage::Sensitivity,
            Stage::Reference,
            Stage::Search,
            Stage::Validation,
            Stage::Export,
            Stage::HeldOut
        ]
    );
    let search = recorder.search.lock().unwrap();
    assert_eq!(
        search.last(),
        Some(&(3, 3)),
        "seeds + 2 generations: {search:?}"
    );
    assert!(search.windows(2).all(|w| w[0].0 < w[1].0), "{search:?}");
    assert_eq!(
        *recorder.finished.lock().unwrap(),
        [Step::Sensitivity, Step::Search]
    );

    // The report returned is the one written.
    let written = std::fs::read_to_string(req.out.join("qpipe.json")).unwrap();
    assert_eq!(report.json().unwrap(), written);
    assert!(report.selected.bits_per_weight <= 5.0);

    // The packed file, loaded again by `eval`, measures what the report says.
    let eval = EvalRequest {
        packed: req.out.join("model.qpipe.safetensors"),
        reference: tiny(),
        data: req.text.evaluation.clone(),
        tokens: 512,
        seq_len: Some(128),
    };
    let measured = evaluate(&eval, &Silent).unwrap();
    assert_eq!(measured.loss(), report.packed.loss());

    // The binary, given the same request as options, writes the same bytes: it only maps
    // arguments onto the library. (Its --out, recorded in the provenance, is "bin" where the
    // library's is "lib": same length, swapped back before comparing.) It runs where there is
    // no calibration-data/: the default texts are built in.
    let bin_out = dir.path().join("bin");
    let args = argv(&request(&bin_out));
    let (code, _, stderr) = common::qpipe_in(
        dir.path(),
        &args[1..].iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{stderr}");
    let (lib_dir, bin_dir) = (req.out.to_str().unwrap(), bin_out.to_str().unwrap());
    // Hexagon's toolchain takes ONNX with QDQ and AIMET's encodings.
    assert_eq!(report.exports, [Export::Qpipe, Export::Onnx]);
    let encodings = report.onnx.as_ref().unwrap().encodings.as_ref().unwrap();
    assert_eq!(encodings.path, req.out.join("model.encodings"));
    assert!(encodings.params > 0 && encodings.omitted.is_empty());
    for f in [
        "model.qpipe.safetensors",
        "model.onnx",
        "model.encodings",
        "qpipe.json",
        "sensitivity.json",
        "search-state.json",
        "pareto.svg",
    ] {
        let lib = std::fs::read(req.out.join(f)).unwrap();
        let bin = std::fs::read(bin_out.join(f)).unwrap();
        assert_eq!(
            lib,
            replace(&bin, bin_dir.as_bytes(), lib_dir.as_bytes()),
            "{f}"
        );
    }
}

/// `bytes` with every `from` replaced by `to` (of the same length).
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

/// `--export` chooses what ships: ONNX alone leaves no packed checkpoint behind (it was only the
/// ONNX's source and the held-out run's weights); an export that cannot hold the target's
/// formats is refused before any work, naming the option, with nothing written.
#[test]
fn export_chooses_the_files_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(&dir.path().join("onnx-only"));
    req.exports = vec![Export::Onnx];
    req.search.generations = 0;
    let report = compress(&req, &Silent).unwrap();
    assert_eq!(report.exports, [Export::Onnx]);
    assert!(!req.out.join("model.qpipe.safetensors").exists());
    for f in ["model.onnx", "model.encodings", "qpipe.json"] {
        assert!(req.out.join(f).is_file(), "{f}");
    }

    let out = dir.path().join("gguf");
    let (code, _, stderr) = common::qpipe(&[
        "compress",
        tiny().to_str().unwrap(),
        "--target",
        "hexagon",
        "--export",
        "gguf,qpipe",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--export") && stderr.contains("gguf"),
        "{stderr}"
    );
    assert!(!out.exists(), "{stderr}");
}
