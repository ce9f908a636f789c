//! `qpipe targets`: the hardware targets, their legal formats and parameters with sources; with
//! `--model` and `--format`, the cost estimate of that uniform assignment on each target (and,
//! for measured targets, the model's error against measurements of the model's own shapes).

use qpipe::hardware::{self, Cache};
use qpipe::pipeline::targets::{self, CostRequest, Scope};
use qpipe::quant::Activation;
use qpipe::{Error, Result, Subject};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `qpipe targets`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Only this target (arm-neon, arm-dot, hexagon, apple-ane, tensorrt, intel-vnni, host,
    /// llama-cpp); an illegal format is then an error.
    #[arg(long)]
    target: Option<String>,
    /// Estimate the cost of this model (file or directory) with every matmul in `--format`.
    #[arg(long, requires = "format")]
    model: Option<PathBuf>,
    /// Weight format of the estimate, e.g. int4-g32-asym, q4_0, f16.
    #[arg(long, requires = "model")]
    format: Option<String>,
    /// Activation bits of the estimate (8 or 16); float activations when absent.
    #[arg(long, value_parser = quantized_activation)]
    activations: Option<Activation>,
    /// Tokens of the prefill estimate.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Measurement cache of the measured targets (default: $QPIPE_CACHE, else
    /// ~/.cache/qpipe/measurements.json).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// The activation format of `--activations <bits>`.
fn quantized_activation(bits: &str) -> std::result::Result<Activation, String> {
    bits.parse()
        .ok()
        .and_then(Activation::quantized)
        .ok_or_else(|| "activations are quantized to 8 or 16 bits".to_string())
}

/// Runs `qpipe targets`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let (targets, scope) = match &args.target {
        Some(name) => (vec![hardware::target(name)?], Scope::Named),
        None => (hardware::targets()?, Scope::Every),
    };
    let text = match (&args.model, &args.format) {
        (Some(model), Some(format)) => {
            let request = CostRequest {
                model: model.clone(),
                format: format
                    .parse()
                    .map_err(|m| Error::unsupported(Subject::option("--format"), m))?,
                activation: args.activations.unwrap_or(Activation::Float),
                tokens: args.tokens,
                cache: args.cache.clone().unwrap_or_else(Cache::default_path),
            };
            let estimates = targets::estimate(&request, &targets, scope)?;
            if args.json {
                super::json_text(&estimates)?
            } else {
                targets::render_estimates(&estimates, &request)
            }
        }
        _ if args.json => super::json_text(&targets)?,
        _ => targets.iter().map(targets::render_target).collect(),
    };
    super::print(out, &text)?;
    Ok(0)
}
