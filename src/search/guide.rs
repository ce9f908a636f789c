//! Guidance: sensitivity-guided mutation, layer-wise crossover and the repair of children
//! over the size limit.

use super::genome::{Genome, Space};
use super::Constraints;
use crate::quant::{Activation, Format};
use crate::sensitivity::Sensitivity;
use rand::Rng;
use std::collections::HashMap;

/// Down-moves a child over the size limit may make to get back under it.
const REPAIR_STEPS: usize = 8;

/// Whether `g` exceeds the bits-per-weight or size limit.
pub(super) fn genome_over_size(space: &Space, c: &Constraints, g: &Genome) -> bool {
    c.max_bpw.is_some_and(|b| space.bits_per_weight(g) > b)
        || c.max_size.is_some_and(|s| space.bytes(g) > s)
}

/// Layer-wise one-point crossover: layers before a random cut from `a`, the rest from `b`.
/// The child shares `a`'s hidden states up to the cut, so the evaluator's prefix cache starts
/// it there (uniform layer-wise crossover mixed early layers and left nothing to reuse).
pub(super) fn crossover(a: &Genome, b: &Genome, space: &Space, rng: &mut impl Rng) -> Genome {
    let cut = rng.random_range(0..=space.layers);
    let pick = |layer: usize| if layer < cut { a } else { b };
    Genome {
        genes: space
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| pick(s.layer).genes[i])
            .collect(),
        activations: (0..space.layers).map(|l| pick(l).activations[l]).collect(),
    }
}

/// Which way a [`Guide::step`] moves a tensor's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// To the next smaller format.
    Down,
    /// Up or down at random.
    Either,
}

/// Sensitivity-guided moves: per tensor, the measured loss of each format (when known).
pub(super) struct Guide {
    /// `loss[i][format]` for slot i.
    loss: Vec<HashMap<Format, f64>>,
}

impl Guide {
    /// The guide of `space` from the per-tensor losses of `sensitivity`, if any.
    pub(super) fn new(space: &Space, sensitivity: Option<&Sensitivity>) -> Guide {
        let mut loss = vec![HashMap::new(); space.slots.len()];
        if let Some(s) = sensitivity {
            let index: HashMap<&str, usize> = space
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.as_str(), i))
                .collect();
            for e in &s.entries {
                if let Some(&i) = index.get(e.tensor.as_str()) {
                    loss[i].insert(e.format, e.loss);
                }
            }
        }
        Guide { loss }
    }

    /// Whether any tensor has a measured loss.
    pub(super) fn has_sensitivity(&self) -> bool {
        self.loss.iter().any(|l| !l.is_empty())
    }

    /// Loss of slot `i` in `f`: measured, else interpolated log-linearly in bytes between the
    /// measured formats around it (beyond them: the nearest measured loss; none measured: 0).
    pub(super) fn slot_loss(&self, space: &Space, i: usize, f: Format) -> f64 {
        if let Some(&l) = self.loss[i].get(&f) {
            return l;
        }
        let slot = &space.slots[i];
        let bytes = slot.bytes(f) as f64;
        let mut known: Vec<(f64, f64)> = self.loss[i]
            .iter()
            .map(|(g, l)| (slot.bytes(*g) as f64, l.max(1e-12)))
            .collect();
        known.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let below = known.iter().rev().find(|k| k.0 <= bytes);
        let above = known.iter().find(|k| k.0 >= bytes);
        match (below, above) {
            (Some(&(b0, l0)), Some(&(b1, l1))) if b1 > b0 => {
                let t = (bytes - b0) / (b1 - b0);
                (l0.ln() + t * (l1.ln() - l0.ln())).exp()
            }
            (Some(&(_, l)), _) | (None, Some(&(_, l))) => l,
            (None, None) => 0.0,
        }
    }

    /// A child of `g`: mostly a [`Self::step`] (`direction` as there); now and then the
    /// calibrator or rounding of a tensor, a layer's activations or a fold's transform change
    /// instead.
    pub(super) fn mutate(
        &self,
        g: &Genome,
        space: &Space,
        direction: Direction,
        rng: &mut impl Rng,
    ) -> Genome {
        let mut child = g.clone();
        let roll: f64 = rng.random();
        if roll < 0.1 && space.calibrators.len() > 1 {
            let i = rng.random_range(0..space.slots.len());
            child.genes[i].calibrator =
                space.calibrators[rng.random_range(0..space.calibrators.len())];
            return child;
        }
        if roll < 0.2 && space.activations.len() > 1 {
            let l = rng.random_range(0..space.layers);
            // Only options every tensor of the layer may run with.
            let options: Vec<Activation> = space
                .activations
                .iter()
                .copied()
                .filter(|a| {
                    space
                        .slots
                        .iter()
                        .zip(&child.genes)
                        .filter(|(s, _)| s.layer == l)
                        .all(|(s, g)| s.pair_legal(space, g.format, *a))
                })
                .collect();
            if !options.is_empty() {
                child.activations[l] = options[rng.random_range(0..options.len())];
            }
            return child;
        }
        if (0.2..0.3).contains(&roll) && space.roundings.len() > 1 {
            let i = rng.random_range(0..space.slots.len());
            let r = space.roundings[rng.random_range(0..space.roundings.len())];
            child.genes[i].rounding = space.slots[i].rounding_for(space, child.genes[i].format, r);
            return space.settled(child);
        }
        if (0.3..0.4).contains(&roll) && space.transforms.len() > 1 && !space.folds.is_empty() {
            let k = rng.random_range(0..space.folds.len());
            let t = space.transforms[rng.random_range(0..space.transforms.len())];
            return space.transformed(child, k, t);
        }
        self.step(&child, space, direction, rng)
    }

    /// A child of `g` with one tensor moved one format step in `direction`, drawn with
    /// probability proportional to the sensitivity trade of the move (loss change per byte), or
    /// uniformly without sensitivity.
    fn step(&self, g: &Genome, space: &Space, direction: Direction, rng: &mut impl Rng) -> Genome {
        let mut child = g.clone();
        let down = match direction {
            Direction::Down => true,
            Direction::Either => rng.random_bool(0.5),
        };
        // (slot, new format, weight of the move)
        let moves: Vec<(usize, Format, f64)> = space
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let at = s.formats.iter().position(|f| *f == child.genes[i].format)?;
                let to = if down { at.checked_sub(1)? } else { at + 1 };
                let f = *s.formats.get(to)?;
                if !s.pair_legal(space, f, child.activations[s.layer]) {
                    return None;
                }
                let dl = (self.slot_loss(space, i, f)
                    - self.slot_loss(space, i, child.genes[i].format))
                .abs();
                let db = (s.bytes(f) as f64 - s.bytes(child.genes[i].format) as f64)
                    .abs()
                    .max(1.0);
                // Down: cheap losses per byte saved are attractive; up: big gains per byte.
                let trade = if down { db / (dl + 1e-12) } else { dl / db };
                Some((i, f, trade))
            })
            .collect();
        if moves.is_empty() {
            return child;
        }
        let weights: Vec<f64> = if self.has_sensitivity() {
            let max = moves
                .iter()
                .map(|m| m.2)
                .fold(0.0, f64::max)
                .max(f64::MIN_POSITIVE);
            moves.iter().map(|m| (m.2 / max).max(1e-3)).collect()
        } else {
            vec![1.0; moves.len()]
        };
        let total: f64 = weights.iter().sum();
        let mut pick = rng.random::<f64>() * total;
        let mut chosen = moves.len() - 1;
        for (k, w) in weights.iter().enumerate() {
            if pick < *w {
                chosen = k;
                break;
            }
            pick -= w;
        }
        let (i, f, _) = moves[chosen];
        let rounding = space.slots[i].rounding_for(space, f, child.genes[i].rounding);
        child.genes[i].format = f;
        child.genes[i].rounding = rounding;
        // A producer moved to a format that cannot take divided rows drops its fold's transform.
        space.settled(child)
    }

    /// `child` with up to [`REPAIR_STEPS`] down-moves while it is over the size limit: it gives
    /// bytes back where they cost least, so an up-move at a tight budget becomes a trade
    /// between two tensors.
    pub(super) fn repair(
        &self,
        mut child: Genome,
        space: &Space,
        constraints: &Constraints,
        rng: &mut impl Rng,
    ) -> Genome {
        for _ in 0..REPAIR_STEPS {
            if !genome_over_size(space, constraints, &child) {
                break;
            }
            child = self.step(&child, space, Direction::Down, rng);
        }
        child
    }
}
