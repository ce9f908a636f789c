//! `targets`: cost estimates of a model with every matmul in one format, on each hardware
//! target (for measured targets, with the model's error against measurements of its own
//! shapes), and the text renderings of targets and estimates.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::hardware::{
    self, model_shapes, uniform, Cache, CostEstimate, CostModel, Rates, Target, Validation,
};
use crate::quant::{Activation, Format};
use crate::report::{human_bytes, Table};
use serde::Serialize;
use std::path::PathBuf;

/// A model costed with every matmul in one format.
#[derive(Debug, Clone)]
pub struct CostRequest {
    /// The model (file or directory).
    pub model: PathBuf,
    /// Weight format of every matmul.
    pub format: Format,
    /// Activations of every matmul.
    pub activation: Activation,
    /// Tokens of the prefill estimate.
    pub tokens: usize,
    /// Measurement cache of the measured targets.
    pub cache: PathBuf,
}

/// Whether the targets were named by the user or are all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One target the user asked for: an illegal format is an error.
    Named,
    /// Every target: an illegal format is listed as such.
    Every,
}

/// One target's estimate, or why the format is illegal there.
#[derive(Debug, Serialize)]
pub struct TargetEstimate {
    /// Target name.
    pub target: String,
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

/// The cost of `request` on each of `targets`; with [`Scope::Named`] a format illegal on the
/// target is an error, with [`Scope::Every`] it is listed as illegal.
pub fn estimate(
    request: &CostRequest,
    targets: &[Target],
    scope: Scope,
) -> Result<Vec<TargetEstimate>> {
    let (model, format, activation, tokens) = (
        &request.model,
        request.format,
        request.activation,
        request.tokens,
    );
    let shapes = model_shapes(&Checkpoint::open(model)?);
    if shapes.is_empty() {
        return Err(Error::unsupported(model, "no matmul weights to cost"));
    }
    let assignment = uniform(&shapes, format, activation);
    let mut out = Vec::new();
    for t in targets {
        let result = if t.measured.is_some() {
            t.legality(&format, activation).and_then(|_| {
                let mut cache = Cache::open(&request.cache)?;
                let v = hardware::validate(t, format, &shapes, tokens, &mut cache)?;
                let e = CostModel::new(&v.calibration).estimate(&assignment, tokens)?;
                Ok((e, Some(v)))
            })
        } else {
            CostModel::new(t as &dyn Rates)
                .estimate(&assignment, tokens)
                .map(|e| (e, None))
        };
        out.push(match result {
            Ok((estimate, validation)) => TargetEstimate {
                target: t.name.clone(),
                estimate: Some(estimate),
                validation,
                illegal: None,
            },
            Err(e @ Error::Unsupported { .. }) if scope == Scope::Every => TargetEstimate {
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
pub fn render_target(t: &Target) -> String {
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

/// The estimates of `request` as a table, then each measured target's validation.
pub fn render_estimates(estimates: &[TargetEstimate], request: &CostRequest) -> String {
    let (model, format, act, tokens) = (
        &request.model,
        request.format,
        request.activation,
        request.tokens,
    );
    let mut s = format!(
        "cost estimate (roofline model, not a measurement) of {} with {format} weights and {act} \
         activations\n",
        model.display()
    );
    let mut table = Table::new([
        "target",
        "memory",
        "weights",
        &format!("prefill {} ms", tokens),
        "decode ms",
        &format!("prefill {} mJ", tokens),
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
