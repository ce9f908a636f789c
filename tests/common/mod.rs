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
