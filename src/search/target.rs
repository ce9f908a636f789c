//! A hardware target's roofline cost model as the search's latency and energy objectives.

use super::genome::{Genome, Space};
use super::Costs;
use crate::hardware::{CostModel, Rates};

/// Latency and energy of one decode step (the per-token cost of a causal LM on device) or,
/// for encoders, of one pass over `tokens` tokens; estimates, not measurements.
pub struct TargetCosts<'a> {
    /// Published or measured rates of the target.
    pub rates: &'a (dyn Rates + Sync),
    /// Tokens per pass: 1 prices a decode step.
    pub tokens: usize,
}

impl Costs for TargetCosts<'_> {
    /// An illegal (format, activations) pair costs infinity, so constraint domination and the
    /// front push it out.
    fn latency_energy(&self, space: &Space, g: &Genome) -> (f64, f64) {
        let assignment = space.assignment(g);
        CostModel::new(self.rates)
            .phase(&assignment, self.tokens)
            .map_or((f64::INFINITY, f64::INFINITY), |p| {
                (p.latency_s * 1e3, p.energy_j * 1e3)
            })
    }
}
