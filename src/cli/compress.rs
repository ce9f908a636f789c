//! `qpipe compress`: maps the arguments onto a [`CompressRequest`] and prints the summary.

use super::{print, Stderr};
use qpipe::data::Builtin;
use qpipe::pipeline::policy::Export;
use qpipe::pipeline::{self, summary, CompressRequest, Limits, SearchPlan, Start, TextPlan};
use qpipe::quant::{Calibrator, Format, Rounding, Transform};
use qpipe::Result;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `qpipe compress`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory (or .safetensors file) with config.json and tokenizer.json.
    model: PathBuf,
    /// Hardware target (see `qpipe targets`).
    #[arg(long)]
    target: String,
    /// Limit on bits per weight of the whole model: the bytes of every stored tensor (codes,
    /// scales, zero-points, embeddings, norms; not the file's header) x 8 / all parameters.
    #[arg(long)]
    max_bpw: Option<f64>,
    /// Limit on the bytes of every stored tensor of the model, in MB (10^6 bytes): the packed
    /// file's size less its JSON header.
    #[arg(long)]
    max_size: Option<f64>,
    /// Limit on the estimated latency (decode step for LMs, one sequence for encoders), ms.
    #[arg(long)]
    max_latency_ms: Option<f64>,
    /// Limit on the estimated energy, mJ.
    #[arg(long)]
    max_energy_mj: Option<f64>,
    /// Limit on the measured loss on the calibration tokens (mean KL; 1 - cos for encoders).
    #[arg(long)]
    max_kld: Option<f64>,
    /// Genomes per generation.
    #[arg(long, default_value_t = SearchPlan::default().population)]
    population: usize,
    /// Generations after the seeds.
    #[arg(long, default_value_t = SearchPlan::default().generations)]
    generations: usize,
    /// Seed of every random choice of the search.
    #[arg(long, default_value_t = SearchPlan::default().seed)]
    seed: u64,
    /// Output directory.
    #[arg(long, default_value = "qpipe-out")]
    out: PathBuf,
    /// Continue the search saved in the output directory (more --generations allowed).
    #[arg(long)]
    resume: bool,
    /// Calibration text file [default: the built-in sotu-calibration.txt].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Held-out evaluation text file, disjoint from the calibration text [default: the
    /// built-in sotu-eval.txt].
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Calibration tokens the search measures genomes on.
    #[arg(long, default_value_t = TextPlan::default().tokens)]
    tokens: usize,
    /// Held-out tokens the result is evaluated on.
    #[arg(long, default_value_t = TextPlan::default().eval_tokens)]
    eval_tokens: usize,
    /// Tokens per sequence (default: 256 for causal LMs, 64 for encoders, whose loss is
    /// averaged over one embedding per sequence).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Calibration tokens of the per-tensor sensitivity pass that guides the search.
    #[arg(long, default_value_t = TextPlan::default().sensitivity_tokens)]
    sensitivity_tokens: usize,
    /// Calibration tokens GPTQ's input Hessians are accumulated over (the search's tokens,
    /// then text after the validation tokens).
    #[arg(long, default_value_t = TextPlan::default().hessian_tokens)]
    hessian_tokens: usize,
    /// Float log-probabilities kept per position for the search's KL.
    #[arg(long, default_value_t = TextPlan::default().top_k)]
    top_k: usize,
    /// Candidate formats (default: per bit width the first legal one of a built-in menu).
    #[arg(long, value_delimiter = ',')]
    formats: Vec<Format>,
    /// Weight calibrators the search may choose from (weighted by input importance).
    #[arg(long, value_delimiter = ',', default_value = "mse")]
    calibrators: Vec<Calibrator>,
    /// Rounding methods the search may choose from: rtn (to nearest) and gptq (error
    /// compensation with the input Hessian, integer formats only).
    #[arg(long, value_delimiter = ',', default_value = "rtn,gptq")]
    rounding: Vec<Rounding>,
    /// Input transforms the search may choose from, folded into the norm or matmul before
    /// (Llama models): none, awq (scales rms(x)^alpha) and smooth (SmoothQuant, max|x|^alpha /
    /// max|W|^(1-alpha)), alpha as a suffix (awq0.25, smooth0.8; default 0.5). A transformed
    /// tensor is rounded to nearest. Default: none,smooth0.5,smooth0.8 on targets with A8
    /// layers, else none.
    #[arg(long, value_delimiter = ',')]
    transform: Vec<Transform>,
    /// Files to ship: qpipe (model.qpipe.safetensors, what eval, check and export read), gguf
    /// (llama.cpp), onnx (QDQ, plus the encodings file of a toolchain that reads one). Default:
    /// qpipe and the file the target's runtime loads.
    #[arg(long, value_delimiter = ',')]
    export: Vec<Export>,
    /// Print the report as JSON on stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn request(&self) -> CompressRequest {
        CompressRequest {
            model: self.model.clone(),
            target: self.target.clone(),
            limits: Limits {
                max_bpw: self.max_bpw,
                max_size_mb: self.max_size,
                max_latency_ms: self.max_latency_ms,
                max_energy_mj: self.max_energy_mj,
                max_loss: self.max_kld,
            },
            text: TextPlan {
                calibration: super::text(&self.data, Builtin::SotuCalibration),
                evaluation: super::text(&self.eval_data, Builtin::SotuEval),
                tokens: self.tokens,
                eval_tokens: self.eval_tokens,
                seq_len: self.seq_len,
                sensitivity_tokens: self.sensitivity_tokens,
                hessian_tokens: self.hessian_tokens,
                top_k: self.top_k,
            },
            search: SearchPlan {
                population: self.population,
                generations: self.generations,
                seed: self.seed,
                formats: self.formats.clone(),
                calibrators: self.calibrators.clone(),
                roundings: self.rounding.clone(),
                transforms: self.transform.clone(),
            },
            out: self.out.clone(),
            start: if self.resume {
                Start::Resume
            } else {
                Start::Fresh
            },
            command: std::env::args().collect(),
            exports: self.export.clone(),
        }
    }
}

/// Runs `qpipe compress`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let report = pipeline::compress(&args.request(), &Stderr::default())?;
    let text = if args.json {
        report.json()?
    } else {
        summary::summary(&report)
    };
    print(out, &text)?;
    Ok(0)
}
