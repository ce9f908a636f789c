//! Evolutionary multi-objective search over mixed-precision genomes: NSGA-II on the measured
//! loss (from real quantized forward passes), the exact size in bytes and the target's
//! estimated latency and energy, with constraints handled by constraint domination.
//!
//! Seeds are every uniform legal format and Lagrangian allocations from the sensitivity
//! results at several budgets; the archive of everything evaluated is kept, and the answer is
//! picked from it, so the result is never worse than the best seed. Every generation draws from
//! a random stream seeded by (seed, generation), so a resumed search continues exactly as an
//! uninterrupted one would, and the evaluations are deterministic whatever the thread count.

pub mod fitness;
pub mod genome;
mod guide;
pub mod nsga2;
pub mod origin;
mod run;
mod seeds;
mod state;
pub mod target;

use genome::{Genome, Space};
pub use origin::Origin;
pub use run::run;
use serde::{Deserialize, Serialize};
pub use state::{state_path, StateFile};

/// A target's cost estimates for a genome (from a hardware model, not measured).
pub trait Costs: Sync {
    /// Estimated (latency in milliseconds, energy in millijoules).
    fn latency_energy(&self, space: &Space, g: &Genome) -> (f64, f64);
}

/// Limits a genome must meet (`None`: no limit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    /// Bits per weight of the quantizable tensors.
    pub max_bpw: Option<f64>,
    /// Bytes of the quantizable tensors.
    pub max_size: Option<u64>,
    /// Estimated latency.
    pub max_latency_ms: Option<f64>,
    /// Estimated energy.
    pub max_energy_mj: Option<f64>,
    /// Measured loss (mean KL or 1 - cos).
    pub max_loss: Option<f64>,
}

/// A genome's objectives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fitness {
    /// Measured loss on the calibration tokens.
    pub loss: f64,
    /// Exact bytes of the quantizable tensors.
    pub bytes: u64,
    /// Bits per weight of the quantizable tensors.
    pub bits_per_weight: f64,
    /// Estimated latency (ms).
    pub latency_ms: f64,
    /// Estimated energy (mJ).
    pub energy_mj: f64,
}

impl Constraints {
    /// Sum of the relative excesses over each limit (0 when all hold); infinite for a genome
    /// the target cannot run (its cost model prices it at infinity).
    pub fn violation(&self, f: &Fitness) -> f64 {
        if !(f.latency_ms.is_finite() && f.energy_mj.is_finite()) {
            return f64::INFINITY;
        }
        let over =
            |v: f64, limit: Option<f64>| limit.map_or(0.0, |l| (v / l.max(1e-300) - 1.0).max(0.0));
        over(f.bits_per_weight, self.max_bpw)
            + over(f.bytes as f64, self.max_size.map(|s| s as f64))
            + over(f.latency_ms, self.max_latency_ms)
            + over(f.energy_mj, self.max_energy_mj)
            + over(f.loss, self.max_loss)
    }
}

/// Search settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Population size.
    pub population: usize,
    /// Generations after the initial one.
    pub generations: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Limits.
    pub constraints: Constraints,
}

/// One evaluated genome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Where it came from.
    pub origin: Origin,
    /// The genome.
    pub genome: Genome,
    /// Its objectives.
    pub fitness: Fitness,
}

/// What a search found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The seeds, evaluated.
    pub seeds: Vec<Point>,
    /// Non-dominated points (constraint domination) of everything evaluated, by bytes.
    pub front: Vec<Point>,
    /// The lowest-loss point meeting every constraint, if any does.
    pub selected: Option<Point>,
    /// The point closest to meeting the constraints (least violation) when none meets them.
    pub closest: Option<Point>,
    /// Genome evaluations asked for, and of those answered from the cache.
    pub requests: u64,
    /// Cache hits among `requests`.
    pub cache_hits: u64,
}

/// Progress after each generation.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Generations done (0 = the seeds).
    pub generation: usize,
    /// Of how many.
    pub generations: usize,
    /// Genome evaluations asked for so far.
    pub requests: u64,
    /// Lowest loss among the feasible points so far.
    pub best_loss: Option<f64>,
    /// Size of the current first front.
    pub front: usize,
}
