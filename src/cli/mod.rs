//! Command-line surface: argument types (clap derive) and one module per subcommand.
//!
//! Subcommands write their results to the writer they are given (stdout in the binary) and
//! progress or timing to stderr; errors go back to `main`, which prints one line and exits 2.

pub mod check;
pub mod compress;
pub mod eval;
pub mod import;
pub mod inspect;
pub mod sensitivity;
pub mod targets;

use crate::error::{Error, Result};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::Path;

/// qpipe: mixed-precision quantization with real forward-pass fitness.
#[derive(Debug, Parser)]
#[command(name = "qpipe", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Architecture, parameters, dtypes, the matmul weights quantization acts on, and statistics.
    Inspect(inspect::Args),
    /// Convert a GGUF model (llama/qwen2) to F32 safetensors, config.json and tokenizer.json.
    Import(import::Args),
    /// Sensitivity, search, packed export and held-out evaluation for one hardware target.
    Compress(compress::Args),
    /// A packed checkpoint's accuracy, run on its packed weights, against the float model.
    Eval(eval::Args),
    /// CI gate: exit 0 when the packed checkpoint's accuracy holds, 1 on a regression.
    Check(check::Args),
    /// Measured accuracy loss of quantizing each matmul weight alone, per candidate format.
    Sensitivity(sensitivity::Args),
    /// Hardware targets: legal formats, cost-model parameters and sources; cost estimates.
    Targets(targets::Args),
}

/// Runs the parsed command, writing results to `out`; returns the process exit code.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<i32> {
    match cli.command {
        Command::Compress(args) => compress::run(&args, out),
        Command::Eval(args) => eval::run(&args, out),
        Command::Check(args) => check::run(&args, out),
        Command::Inspect(args) => inspect::run(&args, out),
        Command::Import(args) => import::run(&args, out),
        Command::Sensitivity(args) => sensitivity::run(&args, out),
        Command::Targets(args) => targets::run(&args, out),
    }
}

/// Tokens per evaluation sequence when none is given: 256 for causal LMs (every position is
/// scored), 64 for encoders (one embedding per sequence, so shorter sequences give more of them).
pub(crate) fn default_seq_len(model: &crate::model::Model) -> usize {
    match model {
        crate::model::Model::Llama(_) => 256,
        crate::model::Model::Bert(_) => 64,
    }
}

/// The tokens of text file `path`, cut to whole sequences of `seq_len` within `tokens`; an
/// error when not even one sequence fits, a note on stderr when fewer than `tokens` do.
pub(crate) fn load_tokens(
    tokenizer: &tokenizers::Tokenizer,
    path: &Path,
    tokens: usize,
    seq_len: usize,
) -> Result<Vec<u32>> {
    if seq_len < 2 || tokens < seq_len {
        return Err(Error::invalid(
            Path::new("--tokens"),
            format!(
                "{tokens} tokens must cover at least one sequence of --seq-len {seq_len} (>= 2)"
            ),
        ));
    }
    let mut ids = crate::data::encode_file(tokenizer, path)?;
    let used = (ids.len().min(tokens) / seq_len) * seq_len;
    if used == 0 {
        return Err(Error::invalid(
            path,
            format!("{} tokens, fewer than one sequence of {seq_len}", ids.len()),
        ));
    }
    if used < tokens {
        eprintln!(
            "qpipe: note: using {used} tokens of {} ({} in all, in whole sequences of {seq_len})",
            path.display(),
            ids.len()
        );
    }
    ids.truncate(used);
    Ok(ids)
}

/// Maps a failed write to stdout to an error naming it.
pub(crate) fn stdout_error(e: std::io::Error) -> Error {
    Error::io(Path::new("<stdout>"))(e)
}

/// `value` as pretty JSON with a final newline, for stdout; a value JSON cannot encode is an
/// error, not an empty document.
pub(crate) fn json_text<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| Error::invalid(Path::new("<stdout>"), format!("cannot encode JSON: {e}")))
}
