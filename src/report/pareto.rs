//! The Pareto chart of a search: its front of loss against bits per weight.

use super::svg::Scatter;
use crate::search::Outcome;

/// The front of `outcome` as an SVG plot of loss (`metric`, log scale) against bits per
/// weight, coloured by estimated latency, the selected point ringed.
pub fn svg(outcome: &Outcome, metric: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Activation, Calibrator};
    use crate::search::genome::{Gene, Genome};
    use crate::search::{Fitness, Origin, Point};

    fn point(format: &str, bpw: f64, loss: f64) -> Point {
        let format = format.parse().unwrap();
        Point {
            origin: Origin::Uniform {
                format,
                activation: Activation::A8,
            },
            genome: Genome {
                genes: vec![Gene {
                    format,
                    calibrator: Calibrator::Mse,
                }],
                activations: vec![Activation::A8],
            },
            fitness: Fitness {
                loss,
                bytes: (bpw * 100.0) as u64,
                bits_per_weight: bpw,
                latency_ms: bpw / 10.0,
                energy_mj: bpw / 100.0,
            },
        }
    }

    #[test]
    fn every_front_point_is_drawn_with_its_origin_and_the_selection_ringed() {
        let front = vec![
            point("int4-g32-sym", 4.5, 2e-3),
            point("int8-channel-sym", 8.05, 1e-5),
        ];
        let outcome = Outcome {
            seeds: front.clone(),
            selected: Some(front[0].clone()),
            front,
            closest: None,
            requests: 2,
            cache_hits: 0,
        };
        let svg = svg(&outcome, "delta-KL");
        assert!(
            svg.contains("Pareto front: delta-KL vs bits per weight"),
            "{svg}"
        );
        assert!(
            svg.contains("uniform int4-g32-sym a8: 4.500 bpw, delta-KL 2.000e-3"),
            "{svg}"
        );
        assert!(
            svg.contains("uniform int8-channel-sym a8: 8.050 bpw"),
            "{svg}"
        );
        // The selection (leftmost point, lowest bpw) is ringed.
        assert_eq!(svg.matches(r#"r="8" fill="none""#).count(), 1, "{svg}");
        assert!(svg.contains(r#"<circle cx="80.0""#), "{svg}");
    }
}
