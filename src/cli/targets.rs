//! `qpipe targets`: the hardware targets, their legal formats and parameters with sources; with
//! `--model` and `--format`, the cost estimate of that uniform assignment on each target (and,
//! for measured targets, the model's error against measurements of the model's own shapes).

use qpipe::checkpoint::Checkpoint;
use qpipe::hardware::{
    self, model_shapes, uniform, Cache, CostEstimate, CostModel, Rates, Target, Validation,
};
use qpipe::quant::{Activation, Format};
use qpipe::report::{human_bytes, Table};
use qpipe::{Error, Result, Subject};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// One target's estimate, or why the format is illegal there.
#[derive(Debug, Serialize)]
pub struct TargetEstimate {
    /// Target name.
    target: String,
    /// The estimate, when the format is legal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<CostEstimate>,
    /// For measured targets: predictions against measurements of the model's shapes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// Why the format cannot run there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub illegal: Option<String>,
}

/// Runs `qpipe targets`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let targets = match &args.target {
        Some(name) => vec![hardware::target(name)?],
        None => hardware::targets()?,
    };
    let text = match (&args.model, &args.format) {
        (Some(model), Some(format)) => {
            let estimates = estimate(args, model, format, &targets)?;
            if args.json {
                super::json_text(&estimates)?
            } else {
                render_estimates(&estimates, model, format, args)
            }
        }
        _ if args.json => super::json_text(&targets)?,
        _ => targets.iter().map(render_target).collect(),
    };
    super::print(out, &text)?;
    Ok(0)
}

fn estimate(
    args: &Args,
    model: &Path,
    format: &str,
    targets: &[Target],
) -> Result<Vec<TargetEstimate>> {
    let format: Format = format
        .parse()
        .map_err(|m| Error::unsupported(Subject::option("--format"), m))?;
    let shapes = model_shapes(&Checkpoint::open(model)?);
    if shapes.is_empty() {
        return Err(Error::unsupported(model, "no matmul weights to cost"));
    }
    let activation = args.activations.unwrap_or(Activation::Float);
    let assignment = uniform(&shapes, format, activation);
    let cache_path = args.cache.clone().unwrap_or_else(Cache::default_path);
    let mut out = Vec::new();
    for t in targets {
        let result = if t.measured.is_some() {
            t.legality(&format, activation).and_then(|_| {
                let mut cache = Cache::open(&cache_path)?;
                let v = hardware::validate(t, format, &shapes, args.tokens, &mut cache)?;
                let e = CostModel::new(&v.calibration).estimate(&assignment, args.tokens)?;
                Ok((e, Some(v)))
            })
        } else {
            CostModel::new(t as &dyn Rates)
                .estimate(&assignment, args.tokens)
                .map(|e| (e, None))
        };
        out.push(match result {
            Ok((estimate, validation)) => TargetEstimate {
                target: t.name.clone(),
                estimate: Some(estimate),
                validation,
                illegal: None,
            },
            Err(e @ Error::Unsupported { .. }) if args.target.is_none() => TargetEstimate {
                target: t.name.clone(),
                estimate: None,
                validation: None,
                illegal: Some(e.to_string()),
            },
            Err(e) => return Err(e),
        });
    }
    Ok(out)
}

/// The text listing of one target: rules, then every parameter with its source.
fn render_target(t: &Target) -> String {
    let origin = match &t.measured {
        Some(how) => format!(
            "measured on this machine ({how}) when a model is costed: \
             qpipe targets --target {} --model M --format F",
            t.name
        ),
        None => "published figures; costs computed from them are estimates".to_string(),
    };
    let mut s = format!("{}: {}\n  [{origin}]\n", t.name, t.device);
    s += &format!("  supports: {}\n", t.supports);
    s += "  formats (first matching rule wins; anything else is illegal):\n";
    for r in &t.rules {
        s += &format!("    {}\n", r.describe());
    }
    s += "  parameters:\n";
    for (label, p) in t.parameters() {
        s += &format!(
            "    {label:<20} {:>10}  {}\n",
            format!("{:.4e}", p.value),
            p.source
        );
    }
    s + "\n"
}

fn render_estimates(
    estimates: &[TargetEstimate],
    model: &Path,
    format: &str,
    args: &Args,
) -> String {
    let act = args.activations.unwrap_or(Activation::Float);
    let mut s = format!(
        "cost estimate (roofline model, not a measurement) of {} with {format} weights and {act} \
         activations\n",
        model.display()
    );
    let mut table = Table::new([
        "target",
        "memory",
        "weights",
        &format!("prefill {} ms", args.tokens),
        "decode ms",
        &format!("prefill {} mJ", args.tokens),
        "decode mJ",
    ]);
    let mut notes = String::new();
    for te in estimates {
        match (&te.estimate, &te.illegal) {
            (Some(e), _) => table.row([
                te.target.clone(),
                human_bytes(e.memory_bytes),
                human_bytes(e.weight_bytes),
                format!("{:.4}", e.prefill.latency_s * 1e3),
                format!("{:.4}", e.decode.latency_s * 1e3),
                format!("{:.4}", e.prefill.energy_j * 1e3),
                format!("{:.4}", e.decode.energy_j * 1e3),
            ]),
            (None, Some(why)) => notes += &format!("  illegal: {why}\n"),
            (None, None) => {}
        }
    }
    s += &table.render(2);
    s += &notes;
    for te in estimates {
        if let Some(v) = &te.validation {
            s += &format!(
                "\n{}: model vs measurement of the model's own shapes ({}; max |error| {:.1}%)\n",
                te.target,
                v.calibration.machine,
                100.0 * v.max_abs_error()
            );
            let mut t = Table::new(["shape", "tokens", "predicted us", "measured us", "error"]);
            for c in &v.checks {
                t.row([
                    format!("{}x{}", c.rows, c.cols),
                    c.tokens.to_string(),
                    format!("{:.1}", c.predicted_s * 1e6),
                    format!("{:.1}", c.measured_s * 1e6),
                    format!("{:+.1}%", 100.0 * c.error),
                ]);
            }
            s += &t.render(2);
        }
    }
    s
}
