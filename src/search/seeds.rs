//! Seeding: every uniform legal format, and Lagrangian allocations of the sensitivity results
//! at several bits-per-weight budgets.

use super::genome::{Gene, Genome, Space};
use super::guide::Guide;
use super::origin::Method;
use super::{Origin, Settings};
use crate::quant::{Activation, Calibrator, Format, Rounding, Transform};

/// Every uniform legal format with each rounding method (the first calibrator, the first
/// activation option it may run with), then, per activation option, Lagrangian allocations
/// from the sensitivity at budgets spread between the smallest and the largest uniform size,
/// plus the `max_bpw` limit; each allocation also with every other method (each rounding with
/// each transform).
pub(super) fn seed_genomes(
    space: &Space,
    guide: &Guide,
    settings: &Settings,
) -> Vec<(Origin, Genome)> {
    let calibrator = space.calibrators[0];
    let transforms = space
        .transforms
        .iter()
        .filter(|t| t.is_none() || !space.folds.is_empty());
    let methods: Vec<Method> = transforms
        .flat_map(|&transform| {
            space.roundings.iter().map(move |&rounding| Method {
                rounding,
                transform,
            })
        })
        .collect();
    // Formats every matmul may take (an embedding table that may not is given its nearest).
    let matmuls = || space.slots.iter().filter(|s| !s.usage.gathers());
    let mut formats: Vec<_> = matmuls().next().map_or(Vec::new(), |s| s.formats.clone());
    formats.retain(|f| matmuls().all(|s| s.formats.contains(f)));
    let mut seeds: Vec<(Origin, Genome)> = Vec::new();
    for &method in methods.iter().filter(|m| m.transform.is_none()) {
        for &f in &formats {
            if !method.rounding.applies_to(f) {
                continue;
            }
            let Some(&activation) = space.activations.iter().find(|a| space.pair_legal(f, **a))
            else {
                continue;
            };
            let origin = Origin::Uniform {
                format: f,
                method,
                activation,
            };
            if let Some(g) = space.uniform(f, calibrator, method.rounding, activation) {
                seeds.push((origin, with_method(space, g, method)));
            }
        }
    }
    if guide.has_sensitivity() {
        let sizes: Vec<f64> = seeds
            .iter()
            .map(|(_, g)| space.bits_per_weight(g))
            .collect();
        let (lo, hi) = sizes.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &b| {
            (lo.min(b), hi.max(b))
        });
        let mut budgets: Vec<f64> = (1..=5).map(|k| lo + (hi - lo) * k as f64 / 6.0).collect();
        budgets.extend(settings.constraints.max_bpw);
        // The spread of budgets with the first activation option that every tensor can run
        // with, and the limit itself with each other option.
        for (k, &activation) in space.activations.iter().enumerate() {
            let is_lagrangian = |(o, _): &(Origin, Genome)| matches!(o, Origin::Lagrangian { .. });
            let budgets = if k == 0 || !seeds.iter().any(is_lagrangian) {
                budgets.clone()
            } else {
                settings.constraints.max_bpw.into_iter().collect()
            };
            for &bpw in &budgets {
                let Some(g) = lagrangian(guide, space, bpw, calibrator, activation) else {
                    continue;
                };
                if space.bits_per_weight(&g) > bpw + 1e-9 {
                    continue;
                }
                for &m in &methods {
                    let g = with_method(space, g.clone(), m);
                    if !seeds.iter().any(|(_, s)| *s == g) {
                        seeds.push((Origin::lagrangian(bpw, m, activation), g));
                    }
                }
            }
        }
    }
    seeds
}

/// `g` with every tensor rounded by `method`'s rounding where it applies (else the fallback)
/// and every fold transformed by its transform where legal.
fn with_method(space: &Space, g: Genome, method: Method) -> Genome {
    let mut g = Genome {
        genes: space
            .slots
            .iter()
            .zip(&g.genes)
            .map(|(s, gene)| Gene {
                rounding: s.rounding_for(space, gene.format, method.rounding),
                transform: Transform::None,
                ..*gene
            })
            .collect(),
        activations: g.activations,
    };
    if !method.transform.is_none() {
        for k in 0..space.folds.len() {
            g = space.transformed(g, k, method.transform);
        }
    }
    g
}

/// Per tensor, the format (among those that run with `activation` inputs) minimising
/// loss + lambda * bytes, with lambda bisected so the total stays within `bpw` (the largest
/// lambda-feasible allocation); `None` if some tensor has no format for `activation`.
fn lagrangian(
    guide: &Guide,
    space: &Space,
    bpw: f64,
    calibrator: Calibrator,
    activation: Activation,
) -> Option<Genome> {
    let legal: Vec<Vec<Format>> = space
        .slots
        .iter()
        .map(|s| {
            s.formats
                .iter()
                .copied()
                .filter(|f| s.pair_legal(space, *f, activation))
                .collect()
        })
        .collect();
    if legal.iter().any(Vec::is_empty) {
        return None;
    }
    let alloc = |lambda: f64| Genome {
        genes: space
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let format = *legal[i]
                    .iter()
                    .min_by(|a, b| {
                        let cost =
                            |f: Format| guide.slot_loss(space, i, f) + lambda * s.bytes(f) as f64;
                        cost(**a).total_cmp(&cost(**b)).then(a.cmp(b))
                    })
                    .unwrap_or(&legal[i][0]);
                Gene {
                    format,
                    calibrator,
                    rounding: space.slots[i].rounding_for(space, format, Rounding::Nearest),
                    transform: Transform::None,
                }
            })
            .collect(),
        activations: vec![activation; space.layers],
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while space.bits_per_weight(&alloc(hi)) > bpw && hi < 1e30 {
        hi *= 10.0;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if space.bits_per_weight(&alloc(mid)) > bpw {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(alloc(hi))
}
