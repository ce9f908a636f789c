//! `compress`, `eval` and `check` end to end on the committed demo model: the packed file runs
//! with the accuracy the search measured, reruns are byte-identical, the CI gate's exit codes
//! hold, and bad inputs fail with one line and exit 2.

mod common;

use common::qpipe;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A small compress run of models/tiny into `out` (a few seconds).
fn compress(out: &Path, extra: &[&str]) -> (i32, String, String) {
    let tiny = root().join("models/tiny");
    let mut args = vec![
        "compress",
        tiny.to_str().unwrap(),
        "--target",
        "hexagon",
        "--population",
        "6",
        "--generations",
        "2",
        "--tokens",
        "512",
        "--eval-tokens",
        "512",
        "--seq-len",
        "128",
        "--sensitivity-tokens",
        "128",
        "--top-k",
        "64",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    qpipe(&args)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn compress_writes_a_packed_model_that_runs_as_measured_and_reruns_identically() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (code, stdout, stderr) = compress(&out, &["--max-bpw", "5"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("selected:"), "{stdout}");
    for f in [
        "model.qpipe.safetensors",
        "qpipe.json",
        "pareto.svg",
        "sensitivity.json",
        "sensitivity.svg",
        "config.json",
        "tokenizer.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report = json(&out.join("qpipe.json"));
    let bpw = report["selected"]["bits_per_weight"].as_f64().unwrap();
    assert!(bpw <= 5.0, "{bpw}");
    // The packed weights, run by qpipe-kernels, give the loss the fake-quantized search model
    // gives on the same held-out tokens.
    let packed = report["packed"]["lm"]["mean_kld"].as_f64().unwrap();
    let held = report["held_out"].as_array().unwrap();
    let selected = held.last().unwrap();
    assert!(selected["origin"].as_str().unwrap().starts_with("selected"));
    let fake = selected["held_out"]["lm"]["mean_kld"].as_f64().unwrap();
    assert!(
        (packed - fake).abs() <= 1e-3 * fake,
        "packed {packed} vs fake-quant {fake}"
    );
    assert!(
        fake > 0.0 && held.iter().all(|h| h["bits_per_weight"].as_f64().is_some()),
        "every seed has a held-out row"
    );
    // `qpipe eval` on the packed file reproduces the report's packed figure.
    let eval_json = {
        let (code, stdout, stderr) = qpipe(&[
            "eval",
            out.to_str().unwrap(),
            "--reference",
            root().join("models/tiny").to_str().unwrap(),
            "--tokens",
            "512",
            "--seq-len",
            "128",
            "--json",
        ]);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let evaluated = eval_json["lm"]["mean_kld"].as_f64().unwrap();
    assert_eq!(evaluated, packed, "qpipe eval reproduces the report");

    // Same seed, same inputs: byte-identical outputs.
    let first = dir.path().join("first");
    std::fs::rename(&out, &first).unwrap();
    let (code, _, stderr) = compress(&out, &["--max-bpw", "5"]);
    assert_eq!(code, 0, "{stderr}");
    for f in [
        "model.qpipe.safetensors",
        "qpipe.json",
        "pareto.svg",
        "sensitivity.json",
    ] {
        assert!(
            std::fs::read(first.join(f)).unwrap() == std::fs::read(out.join(f)).unwrap(),
            "{f} differs between two runs with the same seed"
        );
    }

    // The CI gate: pass, regression, and the JUnit report.
    let check = |max: &str, extra: &[&str]| {
        let mut args = vec![
            "check",
            out.to_str().unwrap(),
            "--reference",
            "models/tiny",
            "--max-kld",
            max,
            "--tokens",
            "512",
            "--seq-len",
            "128",
        ];
        args.extend_from_slice(extra);
        qpipe(&args)
    };
    let junit = dir.path().join("check.xml");
    let baseline = out.join("qpipe.json");
    let (code, stdout, stderr) = check(
        "1",
        &[
            "--baseline",
            baseline.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    let verdict: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(verdict["pass"], true);
    assert!(std::fs::read_to_string(&junit)
        .unwrap()
        .contains("failures=\"0\""));
    let tight = format!("{:e}", packed / 2.0);
    let (code, stdout, _) = check(&tight, &["--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(std::fs::read_to_string(&junit)
        .unwrap()
        .contains("<failure"));
}

#[test]
fn bad_inputs_exit_2_with_one_line_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let one_line = |stderr: &str, needle: &str| {
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    };

    // No genome can be that small: the error names the closest point, and nothing is written.
    let out = dir.path().join("small");
    let (code, _, stderr) = compress(&out, &["--max-bpw", "1"]);
    assert_eq!(code, 2);
    let last = stderr.trim().lines().last().unwrap();
    assert!(
        last.contains("no genome meets the constraints (--max-bpw 1)")
            && last.contains("closest genome found"),
        "{stderr}"
    );
    assert!(!out.join("model.qpipe.safetensors").exists());

    // An unknown target, and an output directory that cannot be created.
    let (code, _, stderr) = compress(&dir.path().join("x"), &["--target", "nope"]);
    assert_eq!(code, 2, "{stderr}");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let (code, _, stderr) = compress(&file.join("out"), &[]);
    assert_eq!(code, 2);
    one_line(&stderr, "a-file");

    // A good packed file to break.
    let good = dir.path().join("good");
    let (code, _, stderr) = compress(&good, &["--max-bpw", "5"]);
    assert_eq!(code, 0, "{stderr}");
    let eval = |packed: &Path, reference: &Path| {
        qpipe(&[
            "eval",
            packed.to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--tokens",
            "256",
            "--seq-len",
            "128",
        ])
    };
    let tiny = root().join("models/tiny");

    // Truncated: the header promises more bytes than the file has.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    let bytes = std::fs::read(good.join("model.qpipe.safetensors")).unwrap();
    std::fs::write(
        broken.join("model.qpipe.safetensors"),
        &bytes[..bytes.len() - 100],
    )
    .unwrap();
    std::fs::copy(good.join("config.json"), broken.join("config.json")).unwrap();
    let (code, _, stderr) = eval(&broken, &tiny);
    assert_eq!(code, 2);
    one_line(&stderr, "model.qpipe.safetensors");

    // A float checkpoint is not a packed one.
    let (code, _, stderr) = eval(&tiny, &tiny);
    assert_eq!(code, 2);
    one_line(&stderr, "not a qpipe packed checkpoint");

    // The reference must be the model the packed file was made from.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny.join(f), other.join(f)).unwrap();
    }
    let mut weights = std::fs::read(tiny.join("model.safetensors")).unwrap();
    let n = weights.len();
    weights[n - 1] ^= 1;
    std::fs::write(other.join("model.safetensors"), weights).unwrap();
    let (code, _, stderr) = eval(&good, &other);
    assert_eq!(code, 2);
    one_line(&stderr, "was made from another model");
    let (code, _, stderr) = qpipe(&[
        "check",
        good.to_str().unwrap(),
        "--reference",
        other.to_str().unwrap(),
        "--max-kld",
        "1",
    ]);
    assert_eq!(code, 2, "a bad input is not a regression");
    one_line(&stderr, "was made from another model");

    // No temp files left anywhere.
    for entry in walk(dir.path()) {
        assert!(
            !entry.to_string_lossy().contains(".tmp-"),
            "temp file left: {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
