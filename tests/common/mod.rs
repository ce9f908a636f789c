//! Fixtures shared by the integration tests: synthetic checkpoints and hand-assembled files for
//! the bad-input tests.
#![allow(dead_code)]

pub mod synthetic;

/// A safetensors file assembled by hand: 8-byte length, `header` padded to 8 bytes, `data`.
pub fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// Runs the qpipe binary with `args`; returns (exit code, stdout, stderr).
pub fn qpipe(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qpipe"))
        .args(args)
        .output()
        .expect("qpipe binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Path of a model fetched by `scripts/fetch-models.sh` (e.g. "all-minilm-l6-v2"), if present.
///
/// Missing models skip the test locally (with a note on stderr) but fail it under CI=true, where
/// `.ci/run` fetches them first: a test that silently skips in CI would prove nothing.
pub fn fetched_model(name: &str) -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name);
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} is missing: run scripts/fetch-models.sh (CI must run it before the tests)",
            dir.display()
        );
    }
    eprintln!(
        "skipping: {} not fetched (scripts/fetch-models.sh)",
        dir.display()
    );
    None
}
