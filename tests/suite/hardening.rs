//! The findings of an adversarial probe (issue 23), one test each: every bad input is one line
//! on stderr naming the file, tensor or option and the problem, exit code 2, no panic, and an
//! output directory left as it was found.

use crate::common::{self, qpipe, raw_safetensors, tiny};
use qpipe::export::packed::Others;
use qpipe::quant::Format;
use std::path::{Path, PathBuf};

/// Asserts exit 2, one stderr line holding every one of `needles`, and no panic.
fn bad(out: &(i32, String, String), needles: &[&str]) {
    let (code, _, stderr) = out;
    assert_eq!(*code, 2, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "expected '{n}' in: {stderr}");
    }
}

/// A safetensors file of F32 tensors `(name, shape, values)` at `path`.
fn f32_file(path: &Path, tensors: &[(&str, &[usize], &[f32])]) -> PathBuf {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    std::fs::write(path, raw_safetensors(&header, &data)).unwrap();
    path.to_path_buf()
}

/// Finding 1: a 65,536-character tensor name panicked `inspect --stats` ("Formatting argument
/// out of range": format!'s width is a u16). The table pads by hand now.
#[test]
fn finding_01_a_tensor_name_past_formats_width_limit_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let name = "w".repeat(65_536);
    let file = f32_file(
        &dir.path().join("m.safetensors"),
        &[(&name, &[2], &[1.0, 2.0]), ("b", &[2], &[3.0, 4.0])],
    );
    let (code, stdout, stderr) = qpipe(&["inspect", file.to_str().unwrap(), "--stats"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&name), "the name is printed whole");
}

/// Finding 10: sums of squares in f32 lanes overflowed: a constant 1e19 tensor had std inf, a
/// constant 3e38 one mean inf and 100% outliers. Shifted sums give the exact answers.
#[test]
fn finding_10_statistics_of_values_near_f32s_limits_are_finite() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![1e19f32; 5000];
    let huge = vec![3e38f32; 5000];
    let spread: Vec<f32> = (0..5000)
        .map(|i| if i % 2 == 0 { 3e38 } else { -3e38 })
        .collect();
    let file = f32_file(
        &dir.path().join("m.safetensors"),
        &[
            ("big", &[5000], &big),
            ("huge", &[5000], &huge),
            ("spread", &[5000], &spread),
        ],
    );
    let (code, stdout, stderr) = qpipe(&["inspect", file.to_str().unwrap(), "--stats", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let stat = |name: &str| {
        json["stats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    for (name, value) in [("big", 1e19f32), ("huge", 3e38)] {
        let s = stat(name);
        assert_eq!(s["mean"].as_f64(), Some(f64::from(value)), "{name}: {s}");
        assert_eq!(s["std"].as_f64(), Some(0.0), "{name}: {s}");
        assert_eq!(s["outlier_share"].as_f64(), Some(0.0), "{name}: {s}");
    }
    let s = stat("spread");
    assert_eq!(s["mean"].as_f64(), Some(0.0), "{s}");
    let std = s["std"].as_f64().unwrap();
    assert!((std / f64::from(3e38f32) - 1.0).abs() < 1e-9, "{s}");
}

/// A packed models/tiny in `dir`: int4-g32-asym matmul weights with A8 inputs, an int8 table.
fn packed_tiny(dir: &Path) -> PathBuf {
    let (model, cal) = common::tiny_and_calibration();
    let stats = qpipe::calib::collect(&model, &qpipe::data::sequences(&cal, 128, 512), 1).unwrap();
    let (asym, int8): (Format, Format) = (
        "int4-g32-asym".parse().unwrap(),
        "int8-channel-sym".parse().unwrap(),
    );
    std::fs::create_dir_all(dir).unwrap();
    let file = common::pack(&tiny(), &model, dir, Others::AsStored, |_, name, matmul| {
        if matmul {
            (asym, Some(common::a(&stats, name, 8)))
        } else {
            (int8, None)
        }
    });
    // Made from models/tiny, as `eval` checks.
    let sha = qpipe::packed::sha256_files([tiny().join("model.safetensors").as_path()]).unwrap();
    let bytes = edit_header(&std::fs::read(&file).unwrap(), |h| {
        let text = h["__metadata__"]["qpipe"].as_str().unwrap();
        let mut manifest: serde_json::Value = serde_json::from_str(text).unwrap();
        manifest["provenance"]["input_sha256"] = sha.into();
        h["__metadata__"]["qpipe"] = manifest.to_string().into();
    });
    std::fs::write(&file, bytes).unwrap();
    file
}

/// The safetensors `bytes` with its header JSON changed by `edit` (the data as it was).
fn edit_header(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    raw_safetensors(&header.to_string(), &bytes[8 + n..])
}

/// Where the data of `tensor` lies in the safetensors file `bytes`.
fn data_range(bytes: &[u8], tensor: &str) -> std::ops::Range<usize> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let [a, b] = [0, 1].map(|i| header[tensor]["data_offsets"][i].as_u64().unwrap() as usize);
    8 + n + a..8 + n + b
}

/// `bytes` with the manifest's entry of `tensor` changed by `edit`.
fn edit_entry(bytes: &[u8], tensor: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    edit_header(bytes, |h| {
        let text = h["__metadata__"]["qpipe"].as_str().unwrap();
        let mut manifest: serde_json::Value = serde_json::from_str(text).unwrap();
        edit(&mut manifest["tensors"][tensor]);
        h["__metadata__"]["qpipe"] = manifest.to_string().into();
    })
}

/// Writes `bytes` as the packed file of a copy of the checkpoint directory `good` at `dir`.
fn variant(good: &Path, dir: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(good.join("config.json"), dir.join("config.json")).unwrap();
    std::fs::write(dir.join("model.qpipe.safetensors"), bytes).unwrap();
    dir.to_path_buf()
}

fn check(packed: &Path, extra: &[&str]) -> (i32, String, String) {
    let tiny = tiny();
    let mut args = vec![
        "check",
        packed.to_str().unwrap(),
        "--reference",
        tiny.to_str().unwrap(),
        "--max-kld",
        "1",
        "--tokens",
        "256",
        "--seq-len",
        "128",
    ];
    args.extend_from_slice(extra);
    qpipe(&args)
}

/// Finding 7: manifests whose fields are out of their ranges loaded, and `check` then failed
/// the gate (exit 1) on NaN losses instead of refusing the input (exit 2): zero-points past the
/// code range, input quantizers of 0/3/64 bits, scales 0/-1/1e-45, zero-points 300/-5, and an
/// unknown dtype.
#[test]
fn finding_07_every_manifest_field_is_checked_against_its_range() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let file = packed_tiny(&good);
    let (code, _, stderr) = check(&good, &[]);
    assert_eq!(code, 0, "{stderr}");
    let bytes = std::fs::read(&file).unwrap();
    let w = "model.layers.0.mlp.up_proj.weight";

    // Zero-points of 200 for 4-bit codes, in the data.
    let mut zeros = bytes.clone();
    zeros[data_range(&bytes, &format!("{w}.zeros")).start] = 200;
    let d = variant(&good, &dir.path().join("zeros"), &zeros);
    bad(&check(&d, &[]), &[w, "zero-point 0 is 200"]);

    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("bits0", serde_json::json!(0), "0 bits"),
        ("bits3", serde_json::json!(3), "3 bits"),
        ("bits64", serde_json::json!(64), "64 bits"),
    ];
    for (case, bits, needle) in cases {
        let b = edit_entry(&bytes, w, |e| e["input_quant"]["bits"] = bits);
        let d = variant(&good, &dir.path().join(case), &b);
        bad(&check(&d, &[]), &[w, needle]);
    }
    for (case, scale) in [("scale0", 0.0), ("scale-1", -1.0), ("scale1e-45", 1e-45)] {
        let b = edit_entry(&bytes, w, |e| e["input_quant"]["scale"] = scale.into());
        let d = variant(&good, &dir.path().join(case), &b);
        bad(&check(&d, &[]), &[w, "not a positive normal step"]);
    }
    for (case, zero) in [("zero300", 300.0), ("zero-5", -5.0)] {
        let b = edit_entry(&bytes, w, |e| e["input_quant"]["zero"] = zero.into());
        let d = variant(&good, &dir.path().join(case), &b);
        bad(&check(&d, &[]), &[w, "is not a code"]);
    }
    let b = edit_entry(&bytes, w, |e| e["dtype"] = "banana".into());
    let d = variant(&good, &dir.path().join("banana"), &b);
    bad(&check(&d, &[]), &["manifest", "banana"]);
}

/// Finding 11: a control character in the packed path made `check --junit` write XML parsers
/// reject; a baseline whose loss is -1 was taken as a limit (exit 1) instead of refused (2).
#[test]
fn finding_11_junit_is_well_formed_xml_and_a_lying_baseline_is_refused() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let packed = dir.path().join("ctl\u{1}dir\u{7f}\tx");
    packed_tiny(&packed);
    let junit = dir.path().join("check.xml");
    let (code, _, stderr) = check(&packed, &["--junit", junit.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    // Python's expat, an independent XML parser, reads it.
    let parsed = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); print(r.get('name'))",
        ])
        .arg(&junit)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let name = String::from_utf8_lossy(&parsed.stdout);
    assert!(name.contains("ctl\u{fffd}dir\u{7f}\tx"), "{name}");

    let baseline = dir.path().join("qpipe.json");
    std::fs::write(&baseline, r#"{"packed": {"lm": {"mean_kld": -1}}}"#).unwrap();
    bad(
        &check(&packed, &["--baseline", baseline.to_str().unwrap()]),
        &["qpipe.json", "packed.lm.mean_kld is -1"],
    );
}

/// A copy of models/tiny in `dir` with its config.json changed by `config` and every element
/// of the F32 tensor `tensor` (if given) set to `value`.
fn tiny_variant(
    dir: &Path,
    config: impl FnOnce(&mut serde_json::Value),
    tensor: Option<(&str, f32)>,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let src = tiny();
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    config(&mut c);
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let mut bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    if let Some((name, value)) = tensor {
        let range = data_range(&bytes, name);
        for chunk in bytes[range].chunks_exact_mut(4) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir.to_path_buf()
}

/// Finding 5: `sensitivity` on a model that computes NaN (config `rope_theta: 0`, an all-NaN
/// `model.norm.weight`) exited 0 with every delta-KL 0. The config and the weights are checked
/// when the model loads, and float outputs that are not finite (a norm of 1e38 overflows) are
/// an error of the reference pass, in every command.
#[test]
fn finding_05_a_model_that_computes_nan_is_refused_before_any_work() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let sens = |m: &Path| {
        qpipe(&[
            "sensitivity",
            m.to_str().unwrap(),
            "--tokens",
            "128",
            "--seq-len",
            "64",
            "--formats",
            "int4-g32-asym",
        ])
    };
    let theta = tiny_variant(
        &dir.path().join("theta"),
        |c| c["rope_theta"] = 0.into(),
        None,
    );
    bad(
        &sens(&theta),
        &["config.json", "rope_theta 0 is not a positive number"],
    );
    let nan = tiny_variant(
        &dir.path().join("nan"),
        |_| {},
        Some(("model.norm.weight", f32::NAN)),
    );
    bad(
        &sens(&nan),
        &[
            "model.safetensors",
            "'model.norm.weight' holds NaN at element 0",
        ],
    );
    let huge = tiny_variant(
        &dir.path().join("huge"),
        |_| {},
        Some(("model.norm.weight", 1e38)),
    );
    bad(&sens(&huge), &["NaN or Inf"]);
    // The same in compress, before its output directory exists.
    let out = dir.path().join("out");
    let (code, _, stderr) = qpipe(&[
        "compress",
        nan.to_str().unwrap(),
        "--target",
        "hexagon",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'model.norm.weight' holds NaN"), "{stderr}");
    assert!(!out.exists());
}

/// A quick compress of `model` for hexagon into `out` (a few seconds).
fn quick(model: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "compress",
        model.to_str().unwrap(),
        "--target",
        "hexagon",
        "--tokens",
        "256",
        "--eval-tokens",
        "256",
        "--seq-len",
        "64",
        "--sensitivity-tokens",
        "64",
        "--hessian-tokens",
        "256",
        "--top-k",
        "32",
        "--population",
        "4",
        "--generations",
        "0",
        "--rounding",
        "rtn",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    qpipe(&args)
}

/// Every file under `dir` with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// Finding 3: `--resume` into an output directory made from another model, other text or for
/// another target reused its search state, genome cache and sensitivity. resume.json records
/// what a run was made from; a resumed run refuses, naming what differs, before any work.
#[test]
fn finding_03_resume_refuses_a_run_made_from_other_inputs() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (code, _, stderr) = quick(&tiny(), &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    let before = snapshot(&out);
    let other = tiny_variant(
        &dir.path().join("other"),
        |_| {},
        Some(("model.norm.weight", 0.5)),
    );
    bad(
        &quick(&other, &out, &["--resume"]),
        &["--resume", "input_sha256"],
    );
    let text = dir.path().join("text.txt");
    std::fs::write(
        &text,
        common::read_text("calibration-data/moby-dick-calibration.txt"),
    )
    .unwrap();
    let data = text.to_str().unwrap();
    bad(
        &quick(&tiny(), &out, &["--resume", "--data", data]),
        &["--resume", "calibration tokens"],
    );
    bad(
        &quick(
            &tiny(),
            &out,
            &["--resume", "--formats", "int8-channel-sym"],
        ),
        &["--resume", "formats"],
    );
    assert!(
        snapshot(&out) == before,
        "the refused runs changed the output directory"
    );
    // The same inputs resume.
    let (code, _, stderr) = quick(&tiny(), &out, &["--resume"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("reused"), "{stderr}");
}

/// Finding 4: interrupted while the sensitivity files were written (sensitivity.json done,
/// sensitivity.svg not; a killed run's temp file left), `--resume` never wrote the chart and
/// kept the temp file. A resumed run rewrites every output and removes stale temp files.
#[test]
fn finding_04_resume_rebuilds_missing_outputs_and_removes_stale_temp_files() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let (code, _, stderr) = quick(&tiny(), &done, &[]);
    assert_eq!(code, 0, "{stderr}");
    // The staging directory a run killed after sensitivity.json leaves.
    let staging = dir.path().join(".cut.qpipe-partial");
    std::fs::create_dir_all(staging.join("calibration")).unwrap();
    for f in [
        "resume.json",
        "sensitivity.json",
        "calibration/statistics.json",
    ] {
        std::fs::copy(done.join(f), staging.join(f)).unwrap();
    }
    let stale = staging.join(".sensitivity.svg.tmp-4194303");
    std::fs::write(&stale, b"half a chart").unwrap();
    let cut = dir.path().join("cut");
    let (code, _, stderr) = quick(&tiny(), &cut, &["--resume"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("reusing sensitivity.json"), "{stderr}");
    assert_eq!(
        std::fs::read(cut.join("sensitivity.svg")).unwrap(),
        std::fs::read(done.join("sensitivity.svg")).unwrap()
    );
    assert!(!staging.exists() && !stale.exists());
    for (p, _) in snapshot(dir.path()) {
        assert!(!p.to_string_lossy().contains(".tmp-"), "{}", p.display());
    }
}

/// Finding 6: a compress that failed late (one Inf in the embedding; a config.json without
/// `architectures` or `model_type`) left the packed file, pareto.svg, search-state.json and
/// the sensitivity files behind, and blamed the output directory's config.json for the missing
/// architecture. The weights are checked when the model loads, the architecture comes from
/// the tensor names (a packed checkpoint's too), and a run writes into a staging directory
/// that is moved into place only at the end: a failure leaves the output directory as it was.
#[test]
fn finding_06_a_failed_compress_leaves_the_output_directory_as_it_found_it() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let inf = tiny_variant(
        &dir.path().join("inf"),
        |_| {},
        Some(("model.embed_tokens.weight", f32::INFINITY)),
    );
    bad(
        &quick(&inf, &out, &[]),
        &["'model.embed_tokens.weight' holds inf"],
    );
    assert!(!out.exists());

    let anonymous = tiny_variant(
        &dir.path().join("anonymous"),
        |c| {
            let c = c.as_object_mut().unwrap();
            c.remove("architectures");
            c.remove("model_type");
        },
        None,
    );
    let (code, _, stderr) = quick(&anonymous, &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    let before = snapshot(&out);
    // A late failure (no genome that small) into a finished output directory changes nothing.
    let (code, _, stderr) = quick(&anonymous, &out, &["--max-bpw", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("no genome meets the constraints"),
        "{stderr}"
    );
    assert!(
        snapshot(&out) == before,
        "the failed run changed the output directory"
    );
}

/// Finding 9: messages that did not say what was wrong with which file. NaN scales in a packed
/// file gave "<evaluation>: candidate logits contain NaN or Inf"; token ids past the embedding
/// "index-select invalid index"; an unwritable --junit or export --out was found only after the
/// work; a failed write named the internal temp file (see also compress.rs's full-disk test).
#[test]
fn finding_09_messages_name_the_file_tensor_or_option_and_the_problem() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let file = packed_tiny(&good);
    let bytes = std::fs::read(&file).unwrap();
    let w = "model.layers.1.self_attn.o_proj.weight";
    let at = data_range(&bytes, &format!("{w}.scales")).start;
    let mut nan = bytes.clone();
    nan[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let d = variant(&good, &dir.path().join("nan"), &nan);
    bad(&check(&d, &[]), &[w, "scale 0 is NaN"]);

    // A tokenizer whose ids pass the model's 2048-row embedding.
    let ids = dir.path().join("ids");
    let model = tiny_variant(&ids, |_| {}, None);
    let mut tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("tokenizer.json")).unwrap()).unwrap();
    tok["model"]["vocab"]["Ġthe"] = 2100.into();
    std::fs::write(model.join("tokenizer.json"), tok.to_string()).unwrap();
    bad(
        &qpipe(&[
            "sensitivity",
            model.to_str().unwrap(),
            "--tokens",
            "128",
            "--seq-len",
            "64",
        ]),
        &["token id 2100", "2048-row embedding"],
    );

    let missing = dir.path().join("no/such/dir");
    let junit = missing.join("check.xml");
    bad(
        &check(&good, &["--junit", junit.to_str().unwrap()]),
        &[junit.to_str().unwrap()],
    );
    let onnx = missing.join("model.onnx");
    bad(
        &qpipe(&[
            "export",
            good.to_str().unwrap(),
            "--format",
            "onnx",
            "--out",
            onnx.to_str().unwrap(),
        ]),
        &[onnx.to_str().unwrap()],
    );
}

/// Finding 12: the suite failed on a loaded machine (hardware_host timed kernels against
/// predictions), and `cargo test` then skipped the test binaries after it. Timings are in
/// benchmarks and the `--ignored` hardware_host test; no other test asserts on a duration, and
/// the README's test command runs every binary whatever fails (`--no-fail-fast`).
#[test]
fn finding_12_no_default_test_asserts_on_time() {
    let root = common::root();
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in [
        "tests/suite",
        "tests/suite/common",
        "kernels/tests",
        "src",
        "kernels/src",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        files.extend(
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "rs")),
        );
    }
    let timing = ["elapsed", "as_secs", "as_millis", "as_micros", "Instant::"];
    for f in files.iter().filter(|f| !f.ends_with("hardware_host.rs")) {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let asserts = line.contains("assert");
            assert!(
                !(asserts && timing.iter().any(|t| line.contains(t))),
                "{}:{}: a test asserting on time: {line}",
                f.display(),
                n + 1
            );
        }
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains("scripts/fetch-models.sh && cargo test --release --no-fail-fast"),
        "the README's test command runs every test binary"
    );
}
