//! `qpipe inspect`: what a checkpoint holds, from the header alone unless `--stats` is given.

use super::{print, Stderr};
use qpipe::checkpoint::Checkpoint;
use qpipe::pipeline::inspect::{self, Stats};
use qpipe::Result;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `qpipe inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .safetensors file, a *.safetensors.index.json, or a directory holding either.
    model: PathBuf,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Also compute per-tensor statistics (reads all weights; parallel over tensors and blocks).
    #[arg(long)]
    stats: bool,
}

/// Runs `qpipe inspect`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let checkpoint = Checkpoint::open(&args.model)?;
    let stats = if args.stats {
        Stats::Compute
    } else {
        Stats::Skip
    };
    let report = inspect::report(&checkpoint, stats, &Stderr::default())?;
    let text = if args.json {
        super::json_text(&report)?
    } else {
        inspect::render(&report)
    };
    print(out, &text)?;
    Ok(0)
}
