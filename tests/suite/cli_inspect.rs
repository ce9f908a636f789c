//! `qpipe inspect` end to end: output on good checkpoints, and one clear line + exit 2 on bad ones.

use crate::common::synthetic::{write_llama, LlamaSpec};
use crate::common::{qpipe, raw_safetensors};
use std::path::Path;

/// Asserts exit 2 and a single stderr line naming `path` and containing `problem`.
fn assert_bad_input(path: &Path, problem: &str) {
    let (code, stdout, stderr) = qpipe(&["inspect", path.to_str().unwrap()]);
    assert_eq!(code, 2, "exit code for {problem}; stderr: {stderr}");
    assert!(stdout.is_empty(), "nothing on stdout: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("qpipe: error: "), "{stderr}");
    assert!(
        lines[0].contains(path.to_str().unwrap()),
        "names the file: {stderr}"
    );
    assert!(
        lines[0].contains(problem),
        "expected '{problem}' in: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

const ONE_TENSOR: &str = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;

#[test]
fn missing_path() {
    let dir = tempfile::tempdir().unwrap();
    assert_bad_input(
        &dir.path().join("nope.safetensors"),
        "No such file or directory",
    );
}

#[test]
fn directory_without_weights() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    assert_bad_input(dir.path(), "directory holds no .safetensors weights");
}

#[test]
fn directory_with_several_unindexed_files() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.safetensors", "b.safetensors"] {
        write(dir.path(), name, &raw_safetensors(ONE_TENSOR, &[0; 16]));
    }
    assert_bad_input(dir.path(), "holds 2 .safetensors files but no");
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_llama(dir.path(), &LlamaSpec::tiny(), 1);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    assert_bad_input(&file, "run past the end of the data section");
}

#[test]
fn file_too_short_for_a_header() {
    let dir = tempfile::tempdir().unwrap();
    assert_bad_input(
        &write(dir.path(), "m.safetensors", b"abc"),
        "file is 3 bytes, too short",
    );
}

#[test]
fn gguf_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"GGUF".to_vec();
    bytes.extend([3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_bad_input(
        &write(dir.path(), "model.gguf", &bytes),
        "this is a GGUF file, not safetensors",
    );
}

#[test]
fn header_length_past_eof() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = raw_safetensors(ONE_TENSOR, &[0; 16]);
    bytes[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    assert_bad_input(
        &write(dir.path(), "m.safetensors", &bytes),
        "header length 1000000 points past the end",
    );
}

#[test]
fn invalid_header_json() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = raw_safetensors(r#"{"w":{"dtype":"F32","#, &[0; 16]);
    assert_bad_input(
        &write(dir.path(), "m.safetensors", &bytes),
        "header is not valid JSON",
    );
}

#[test]
fn offsets_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"v":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}"#;
    let bytes = raw_safetensors(header, &[0; 20]);
    assert_bad_input(
        &write(dir.path(), "m.safetensors", &bytes),
        "tensor 'v': data_offsets [16, 32] run past the end",
    );
}

#[test]
fn overlapping_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"v":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#;
    let bytes = raw_safetensors(header, &[0; 24]);
    assert_bad_input(
        &write(dir.path(), "m.safetensors", &bytes),
        "tensors 'w' and 'v' overlap",
    );
}

#[test]
fn size_not_matching_shape_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}}"#;
    let bytes = raw_safetensors(header, &[0; 16]);
    assert_bad_input(
        &write(dir.path(), "m.safetensors", &bytes),
        "shape [3, 2] of F32 needs 24 bytes but data_offsets [0, 16] span 16",
    );
}

#[test]
fn trailing_bytes_after_last_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = raw_safetensors(ONE_TENSOR, &[0; 20]);
    assert_bad_input(
        &write(dir.path(), "m.safetensors", &bytes),
        "4 trailing bytes after the last tensor",
    );
}

#[test]
fn unsupported_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"Q7","shape":[4],"data_offsets":[0,4]}}"#;
    let bytes = raw_safetensors(header, &[0; 4]);
    assert_bad_input(
        &write(dir.path(), "m.safetensors", &bytes),
        "tensor 'w': unsupported dtype 'Q7'",
    );
}

#[test]
fn missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "model-00001-of-00002.safetensors",
        &raw_safetensors(ONE_TENSOR, &[0; 16]),
    );
    let index = r#"{"weight_map":{"w":"model-00001-of-00002.safetensors","v":"model-00002-of-00002.safetensors"}}"#;
    let index = write(dir.path(), "model.safetensors.index.json", index.as_bytes());
    assert_bad_input(
        &index,
        "shard 'model-00002-of-00002.safetensors' is listed but missing",
    );
}

#[test]
fn unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    // A symlink loop cannot be opened by anyone, root included.
    let looped = dir.path().join("loop.safetensors");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    assert_bad_input(&looped, "Too many levels of symbolic links");
    // Permission bits stop everyone but a privileged user; check that case where it applies.
    use std::os::unix::fs::PermissionsExt;
    let locked = write(
        dir.path(),
        "locked.safetensors",
        &raw_safetensors(ONE_TENSOR, &[0; 16]),
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&locked).is_err() {
        assert_bad_input(&locked, "Permission denied");
    }
}

#[test]
fn nan_and_inf_weights_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let data: Vec<u8> = [1.0f32, f32::NAN, f32::INFINITY, -3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let file = write(dir.path(), "m.safetensors", &raw_safetensors(header, &data));
    let (code, stdout, _) = qpipe(&["inspect", file.to_str().unwrap(), "--stats", "--json"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let s = &json["stats"][0];
    assert_eq!((s["nan"].as_u64(), s["inf"].as_u64()), (Some(1), Some(1)));
    assert_eq!(
        (s["min"].as_f64(), s["max"].as_f64(), s["mean"].as_f64()),
        (Some(-3.0), Some(1.0), Some(-1.0))
    );
    let (code, text, _) = qpipe(&["inspect", file.to_str().unwrap(), "--stats"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("warning: 1 tensor(s) hold NaN/Inf values: w"),
        "{text}"
    );
}

#[test]
fn reports_architecture_parameters_and_matmul_weights() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LlamaSpec::tiny();
    write_llama(dir.path(), &spec, 1);
    let (code, stdout, stderr) = qpipe(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let params: u64 = spec
        .tensors()
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(json["parameters"].as_u64(), Some(params));
    assert_eq!(json["architecture"]["family"], "llama");
    assert_eq!(json["architecture"]["name"], "LlamaForCausalLM");
    assert_eq!(json["matmul_weights"].as_array().unwrap().len(), 14);
    assert_eq!(json["bytes_by_dtype"]["F32"].as_u64(), Some(params * 4));
    assert!(json.get("stats").is_none(), "header-only without --stats");

    let (code, text, _) = qpipe(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(text.contains("LlamaForCausalLM -> llama family"), "{text}");
    assert!(text.contains("14 tensors in 2 groups"), "{text}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, stderr) = qpipe(&["inspect"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = qpipe(&["frobnicate"]);
    assert_eq!(code, 2);
}
