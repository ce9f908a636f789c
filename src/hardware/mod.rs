//! Hardware targets and their cost model: which weight/activation formats each target runs
//! natively, emulated or not at all, and what a model costs there (roofline latency, memory,
//! energy) for a prefill of N tokens and one decode step.
//!
//! Six edge targets are described by published figures in the embedded `targets.json`
//! ([`profile`]); `host` and `llama-cpp` are measured on this machine ([`measure`]). Every
//! number the [`cost`] model produces is an estimate and is labelled as one.

pub mod cost;
pub mod measure;
pub mod profile;

pub use cost::{
    model_shapes, uniform, Assignment, Bound, CostEstimate, CostModel, Execution, MatmulCost,
    MatmulShape, PhaseCost, Rates,
};
pub use measure::{calibrate, validate, Cache, Calibration, Validation};
pub use profile::{
    target, targets, DeployFormat, Deploys, EncodingsFormat, Legality, Precision, Sourced, Support,
    Target,
};
