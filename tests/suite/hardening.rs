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
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = header[format!("{w}.zeros")]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    let mut zeros = bytes.clone();
    zeros[8 + n + at] = 200;
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
