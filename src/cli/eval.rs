//! `qpipe eval`: a packed checkpoint's measured accuracy against its float reference.

use super::{print, Stderr};
use qpipe::data::Builtin;
use qpipe::pipeline::eval::{self, EvalRequest};
use qpipe::Result;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the evaluation tokens come from (shared by `eval` and `check`).
#[derive(Debug, clap::Args)]
pub struct Data {
    /// Evaluation text file, disjoint from the calibration text [default: the built-in
    /// sotu-eval.txt].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluation tokens (whole sequences of --seq-len).
    #[arg(long, default_value_t = 1024)]
    tokens: usize,
    /// Tokens per sequence (default as in compress: 256 for causal LMs, 64 for encoders).
    #[arg(long)]
    seq_len: Option<usize>,
}

impl Data {
    /// The request comparing `packed` with `reference` on this text.
    pub fn request(&self, packed: &Path, reference: &Path) -> EvalRequest {
        EvalRequest {
            packed: packed.to_path_buf(),
            reference: reference.to_path_buf(),
            data: super::text(&self.data, Builtin::SotuEval),
            tokens: self.tokens,
            seq_len: self.seq_len,
        }
    }
}

/// Arguments of `qpipe eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The packed checkpoint (`model.qpipe.safetensors` or the directory holding it).
    packed: PathBuf,
    /// The float model it was made from.
    #[arg(long)]
    reference: PathBuf,
    /// Evaluation data.
    #[command(flatten)]
    data: Data,
    /// Print machine-readable JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs `qpipe eval`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let request = args.data.request(&args.packed, &args.reference);
    let result = eval::evaluate(&request, &Stderr::default())?;
    let text = if args.json {
        super::json_text(&result)?
    } else {
        eval::render(&result)
    };
    print(out, &text)?;
    Ok(0)
}
