//! `qpipe import`: a GGUF file to a Hugging Face-layout checkpoint directory.

use super::print;
use qpipe::import::import_gguf;
use qpipe::report::{human_bytes, human_count};
use qpipe::Result;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `qpipe import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .gguf file (llama or qwen2 architecture, GPT-2 style BPE tokenizer).
    gguf: PathBuf,
    /// Output directory for model.safetensors (F32), config.json and tokenizer.json.
    #[arg(long)]
    out: PathBuf,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `qpipe import`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let start = Instant::now();
    let imported = import_gguf(&args.gguf, &args.out)?;
    if args.json {
        print(out, &super::json_text(&imported)?)?;
        return Ok(0);
    }
    let types: Vec<String> = imported
        .source_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    let mut text = format!(
        "imported {} ({} architecture): {} tensors, {} parameters (source types: {}) in {:.1} s\n",
        args.gguf.display(),
        imported.architecture,
        imported.tensors,
        human_count(imported.parameters),
        types.join(", "),
        start.elapsed().as_secs_f64()
    );
    for f in &imported.files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        text.push_str(&format!("  {} ({})\n", f.display(), human_bytes(size)));
    }
    print(out, &text)?;
    Ok(0)
}
