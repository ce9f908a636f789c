//! Hardware targets: which weight/activation formats each target runs natively, emulated or
//! not at all, with every profile number sourced ([`profile`], data in `targets.json`).

pub mod profile;

pub use profile::{target, targets, Legality, Precision, Sourced, Support, Target};
