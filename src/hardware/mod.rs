//! Hardware targets and their cost model: which weight/activation formats each target runs
//! natively, emulated or not at all, and what a model costs there (roofline latency, memory,
//! energy) for a prefill of N tokens and one decode step.
//!
//! The edge targets are described by published figures in the embedded `targets.json`
//! ([`profile`]). Every number the [`cost`] model produces is an estimate and is labelled as one.

pub mod cost;
pub mod profile;

pub use cost::{
    model_shapes, uniform, Assignment, Bound, CostEstimate, CostModel, Execution, MatmulCost,
    MatmulShape, PhaseCost, Rates,
};
pub use profile::{target, targets, Legality, Precision, Sourced, Support, Target};
