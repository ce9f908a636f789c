//! `qpipe check`: the CI gate. Exit 0 when every check passes, 1 on a regression, 2 on bad
//! input; JSON on stdout, JUnit XML on request.

use super::eval::Data;
use super::{print, Stderr};
use qpipe::checkpoint::write::{check_writable_file, write_atomic};
use qpipe::pipeline::eval::{self, Gate};
use qpipe::Result;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `qpipe check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The packed checkpoint (`model.qpipe.safetensors` or the directory holding it).
    packed: PathBuf,
    /// The float model it was made from.
    #[arg(long)]
    reference: PathBuf,
    /// Fail when the measured loss (mean KL; 1 - cos for encoders) exceeds this.
    #[arg(long)]
    max_kld: f64,
    /// A qpipe.json whose packed held-out loss the measured one must not exceed by more
    /// than --tolerance.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Allowed relative increase over the baseline's loss (0.05 = 5%).
    #[arg(long, default_value_t = 0.05, requires = "baseline")]
    tolerance: f64,
    /// Also write the checks as a JUnit XML file (for CI test reports).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Evaluation data (the baseline's must match for the comparison to mean anything).
    #[command(flatten)]
    data: Data,
}

/// Runs `qpipe check`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let gate = Gate {
        max_loss: args.max_kld,
        baseline: args.baseline.clone(),
        tolerance: args.tolerance,
    };
    let request = args.data.request(&args.packed, &args.reference);
    if let Some(path) = &args.junit {
        check_writable_file(path)?;
    }
    let verdict = eval::check(&request, &gate, &Stderr::default())?;
    if let Some(path) = &args.junit {
        write_atomic(path, eval::junit(&verdict, &args.packed).as_bytes())?;
    }
    print(out, &super::json_text(&verdict)?)?;
    Ok(if verdict.pass { 0 } else { 1 })
}
