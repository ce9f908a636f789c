//! `qpipe sensitivity`: the measured accuracy loss of quantizing each tensor alone, per format.

use super::{print, Stderr};
use qpipe::checkpoint::Checkpoint;
use qpipe::model::Model;
use qpipe::pipeline::output::OutDir;
use qpipe::pipeline::{self, load_tokens, Observer};
use qpipe::quant::{Calibrator, Format};
use qpipe::sensitivity::{Options, Reuse};
use qpipe::{calib, data, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `qpipe sensitivity`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory (or .safetensors file) with config.json and tokenizer.json.
    model: PathBuf,
    /// Calibration text file [default: the built-in sotu-calibration.txt].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Candidate formats, comma-separated (e.g. int8-channel-sym,int4-g32-asym,q4_k).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "int8-channel-sym,int4-g32-asym,int3-g32-asym,int2-g32-asym"
    )]
    formats: Vec<Format>,
    /// Weight calibrator (minmax, percentile[:P], mse, entropy); weighted by input importance.
    #[arg(long, default_value = "mse")]
    calibrator: Calibrator,
    /// Calibration tokens to measure on (whole sequences of --seq-len).
    #[arg(long, default_value_t = 1024)]
    tokens: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Float log-probabilities kept per position for KL (causal LMs).
    #[arg(long, default_value_t = 256)]
    top_k: usize,
    /// Only tensors whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tensors: Vec<String>,
    /// Formats whose loss is estimated (proxy x the tensor's measured loss per proxy in the
    /// measured format nearest in size) instead of measured, comma-separated.
    #[arg(long, value_delimiter = ',')]
    estimate: Vec<Format>,
    /// Recompute every layer for every candidate (no prefix reuse); only to measure the saving.
    #[arg(long)]
    full_recompute: bool,
    /// Print machine-readable JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write sensitivity.json and sensitivity.svg into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `qpipe sensitivity`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let start = Instant::now();
    let observer = Stderr::default();
    // Where the results go is checked before the work.
    let out_dir = args.out.as_deref().map(OutDir::create).transpose()?;
    let checkpoint = Checkpoint::open(&args.model)?;
    let model = Model::load(&checkpoint)?;
    let tokenizer = data::tokenizer(&checkpoint)?;
    let text = super::text(&args.data, data::Builtin::SotuCalibration);
    let ids = load_tokens(
        &tokenizer,
        &text,
        args.tokens,
        args.seq_len,
        model.vocab_size(),
        &observer,
    )?;
    let sequences = data::sequences(&ids, args.seq_len, args.tokens);
    let used = sequences.len() * args.seq_len;
    let stats = calib::collect(&model, &sequences, 1)?;
    let options = Options {
        formats: args.formats.clone(),
        calibrator: args.calibrator,
        top_k: args.top_k,
        reuse: if args.full_recompute {
            Reuse::FullRecompute
        } else {
            Reuse::Prefix
        },
        tensors: args.tensors.clone(),
        estimated: args.estimate.clone(),
    };
    let result = pipeline::sensitivity(&model, &sequences, &stats, &options, &observer)?;
    observer.note(&format!(
        "{} candidates on {used} tokens in {:.1} s ({})",
        result.entries.len(),
        start.elapsed().as_secs_f64(),
        match options.reuse {
            Reuse::Prefix => "prefix reuse",
            Reuse::FullRecompute => "full recompute",
        }
    ));
    if let Some(dir) = out_dir {
        dir.write_sensitivity(&result)?;
    }
    let text = if args.json {
        super::json_text(&result)?
    } else {
        qpipe::report::sensitivity::table(&result)
    };
    print(out, &text)?;
    Ok(0)
}
