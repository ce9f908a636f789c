//! Command-line surface of the binary: argument types (clap derive), one module per subcommand
//! mapping its arguments onto a library call and printing the result, and the observer that
//! shows a job's progress on stderr.
//!
//! Results go to the writer each subcommand is given (stdout); progress and notes to stderr;
//! errors back to `main`, which prints one line and exits 2.

mod check;
mod compress;
mod eval;
mod export;
mod import;
mod inspect;
mod sensitivity;
mod targets;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use qpipe::data::{Builtin, Text};
use qpipe::pipeline::{Observer, Stage, Step};
use qpipe::{Error, Result, Subject};
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

/// qpipe: mixed-precision quantization with real forward-pass fitness.
#[derive(Debug, Parser)]
#[command(name = "qpipe", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand to run.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Architecture, parameters, dtypes, the matmul weights quantization acts on, and statistics.
    Inspect(inspect::Args),
    /// Convert a GGUF model (llama/qwen2) to F32 safetensors, config.json and tokenizer.json.
    Import(import::Args),
    /// Sensitivity, search, packed export and held-out evaluation for one hardware target.
    Compress(Box<compress::Args>),
    /// A packed checkpoint's accuracy, run on its packed weights, against the float model.
    Eval(eval::Args),
    /// CI gate: exit 0 when the packed checkpoint's accuracy holds, 1 on a regression.
    Check(check::Args),
    /// Convert a packed checkpoint for a runtime (ONNX with QDQ).
    Export(export::Args),
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
        Command::Export(args) => export::run(&args, out),
        Command::Sensitivity(args) => sensitivity::run(&args, out),
        Command::Targets(args) => targets::run(&args, out),
    }
}

/// The text file `path` names, or the built-in `default`.
fn text(path: &Option<std::path::PathBuf>, default: Builtin) -> Text {
    path.clone().map_or(Text::Builtin(default), Text::File)
}

/// Writes `text` to stdout (`out`), naming stdout when that fails.
fn print(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .map_err(Error::io(std::path::Path::new("<stdout>")))
}

/// `value` as pretty JSON with a final newline, for stdout; a value JSON cannot encode is an
/// error, not an empty document.
fn json_text<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| {
            Error::invalid(
                Subject::other("<stdout>"),
                format!("cannot encode JSON: {e}"),
            )
        })
}

/// Shows a job's stages and notes as `qpipe: ...` lines on stderr and its long steps as
/// progress bars (indicatif hides them when stderr is not a terminal).
#[derive(Default)]
struct Stderr {
    bar: Mutex<Option<ProgressBar>>,
}

impl Observer for Stderr {
    fn stage(&self, stage: Stage, elapsed: Duration) {
        eprintln!("qpipe: [{:>6.1} s] {stage}", elapsed.as_secs_f64());
    }

    fn note(&self, text: &str) {
        eprintln!("qpipe: {text}");
    }

    fn progress(&self, step: Step, done: u64, total: u64, status: &str) {
        let Ok(mut bar) = self.bar.lock() else { return };
        let bar = bar.get_or_insert_with(|| {
            let template = match step {
                Step::Sensitivity => {
                    "{elapsed_precise} [{bar:40}] {pos}/{len} sensitivity candidates ({per_sec}, eta {eta})"
                }
                Step::Search => "{elapsed_precise} [{bar:30}] generation {pos}/{len} {msg}",
            };
            ProgressBar::new(total).with_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        });
        bar.set_length(total);
        bar.set_position(done);
        if !status.is_empty() {
            bar.set_message(status.to_string());
        }
    }

    fn finished(&self, _: Step) {
        if let Ok(mut bar) = self.bar.lock() {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
        }
    }
}
