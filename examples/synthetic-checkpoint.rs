//! Writes a Llama-shaped synthetic checkpoint (deterministic N(0, 0.02) weights) for benchmarks:
//! `cargo run --release --example synthetic-checkpoint -- DIR [LAYERS] [HIDDEN]`.
//! The defaults (10 layers, hidden 1024, intermediate 2816, vocab 32000) give a 643 MB F32 file.

#[path = "../tests/suite/common/synthetic.rs"]
mod synthetic;

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: synthetic-checkpoint DIR [LAYERS] [HIDDEN]");
        std::process::exit(2);
    };
    let layers = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let hidden: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let spec = synthetic::LlamaSpec {
        layers,
        hidden,
        intermediate: hidden * 11 / 4,
        heads: 16,
        kv_heads: 4,
        vocab: 32000,
        tied: false,
        dtype: qpipe::checkpoint::Dtype::F32,
    };
    let path = synthetic::write_llama(&dir, &spec, 7);
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("{} ({bytes} bytes)", path.display());
}
