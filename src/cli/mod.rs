//! Command-line surface: argument types (clap derive) and one module per subcommand.
//!
//! Subcommands write their results to the writer they are given (stdout in the binary) and
//! progress or timing to stderr; errors go back to `main`, which prints one line and exits 2.

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
    /// Measured accuracy loss of quantizing each matmul weight alone, per candidate format.
    Sensitivity(sensitivity::Args),
    /// Hardware targets: legal formats, cost-model parameters and sources; cost estimates.
    Targets(targets::Args),
}

/// Runs the parsed command, writing results to `out`; returns the process exit code.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<i32> {
    match cli.command {
        Command::Inspect(args) => inspect::run(&args, out),
        Command::Import(args) => import::run(&args, out),
        Command::Sensitivity(args) => sensitivity::run(&args, out),
        Command::Targets(args) => targets::run(&args, out),
    }
}

/// Maps a failed write to stdout to an error naming it.
pub(crate) fn stdout_error(e: std::io::Error) -> Error {
    Error::io(Path::new("<stdout>"))(e)
}
