//! The Pareto chart of a search (`pareto.svg`): loss against bits per weight, coloured by the
//! estimated latency, the selected genome ringed.

use super::svg::Scatter;
use crate::search::Outcome;

/// The search's front as an SVG plot of loss (`metric`, log scale) against bits per weight,
/// coloured by estimated latency, the selected point ringed.
pub fn chart(outcome: &Outcome, metric: &str) -> String {
    let points: Vec<(f64, f64, f64, String)> = outcome
        .front
        .iter()
        .map(|p| {
            let f = &p.fitness;
            (
                f.bits_per_weight,
                f.loss,
                f.latency_ms,
                format!(
                    "{}: {:.3} bpw, {metric} {:.3e}, {:.3} ms, {:.3} mJ (estimates)",
                    p.origin, f.bits_per_weight, f.loss, f.latency_ms, f.energy_mj
                ),
            )
        })
        .collect();
    let highlight = outcome
        .selected
        .as_ref()
        .and_then(|s| outcome.front.iter().position(|p| p.genome == s.genome));
    Scatter {
        title: &format!("Pareto front: {metric} vs bits per weight"),
        x_label: "bits per weight (quantized tensors)",
        y_label: metric,
        colour_label: "latency ms (estimate)",
        points: &points,
        highlight,
    }
    .render()
}
