//! Writes a Llama checkpoint as an all-F32 GGUF: the float reference that
//! `scripts/check-gguf-llamacpp.sh` measures a quantized `model.gguf` against with llama.cpp.
//!
//! `cargo run --release --example gguf-f32 -- MODEL_DIR OUT.gguf`

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, out] = args.as_slice() else {
        anyhow::bail!("usage: gguf-f32 MODEL_DIR OUT.gguf");
    };
    let checkpoint = qpipe::checkpoint::Checkpoint::open(model)?;
    let written = qpipe::gguf::writer::write(
        &checkpoint,
        &HashMap::new(),
        &HashMap::new(),
        &BTreeMap::new(),
        Path::new(out),
    )?;
    eprintln!(
        "{out}: {} tensors, {} bytes",
        written.tensors, written.bytes
    );
    Ok(())
}
