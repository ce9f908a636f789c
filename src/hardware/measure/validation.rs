//! Validation: the cost model's predictions for a model's own shapes against measurements of
//! the same shapes.

use super::cache::Cache;
use super::calibration::{calibrate_with, Calibration};
use super::timing::{Probe, Timer};
use crate::error::Result;
use crate::hardware::cost::{Assignment, CostModel, MatmulShape};
use crate::hardware::profile::Target;
use crate::quant::{Activation, Format};
use serde::Serialize;

/// One shape's predicted and measured latency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShapeCheck {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Tokens (1 = decode / GEMV).
    pub tokens: usize,
    /// The cost model's latency, seconds.
    pub predicted_s: f64,
    /// Median measured latency, seconds.
    pub measured_s: f64,
    /// predicted / measured - 1.
    pub error: f64,
}

/// The cost model's error on a model's own shapes for one format on a measured target.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// The calibration the predictions come from.
    pub calibration: Calibration,
    /// Format checked.
    pub format: String,
    /// Distinct shapes, decode and prefill.
    pub checks: Vec<ShapeCheck>,
}

impl Validation {
    /// Largest |error| over all checks.
    pub fn max_abs_error(&self) -> f64 {
        self.checks
            .iter()
            .map(|c| c.error.abs())
            .fold(0.0, f64::max)
    }
}

/// Predicts and measures each distinct shape of `shapes` with `format` for one decode step and
/// a prefill of `prefill_tokens` tokens. Probes missing from `cache` (calibration and model
/// shapes alike) are measured in one interleaved session.
pub fn validate(
    target: &Target,
    format: Format,
    shapes: &[MatmulShape],
    prefill_tokens: usize,
    cache: &mut Cache,
) -> Result<Validation> {
    let mut distinct: Vec<&MatmulShape> = Vec::new();
    for s in shapes {
        if !distinct
            .iter()
            .any(|d| (d.rows, d.cols) == (s.rows, s.cols))
        {
            distinct.push(s);
        }
    }
    for s in &distinct {
        format
            .check(s.rows, s.cols)
            .map_err(|m| target.illegal(format!("{}: {m}", s.name)))?;
    }
    let pairs: Vec<(Probe, &MatmulShape)> = distinct
        .iter()
        .flat_map(|s| {
            [1, prefill_tokens].map(|tokens| {
                let probe = Probe {
                    format,
                    rows: s.rows,
                    cols: s.cols,
                    tokens,
                };
                (probe, *s)
            })
        })
        .collect();
    let probes: Vec<Probe> = pairs.iter().map(|(p, _)| *p).collect();
    let calibration = calibrate_with(target, &[format], cache, &probes)?;
    let measured = Timer::new(target)?.medians(cache, &probes)?;
    let model = CostModel::new(&calibration);
    let checks = pairs
        .iter()
        .zip(measured)
        .map(|((p, s), measured_s)| {
            let a = Assignment {
                shape: (*s).clone(),
                format,
                activation: Activation::Float,
            };
            let predicted_s = model.matmul(&a, p.tokens)?.latency_s;
            Ok(ShapeCheck {
                rows: p.rows,
                cols: p.cols,
                tokens: p.tokens,
                predicted_s,
                measured_s,
                error: predicted_s / measured_s - 1.0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Validation {
        calibration,
        format: format.to_string(),
        checks,
    })
}
