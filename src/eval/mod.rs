//! Held-out accuracy of a quantized model (packed, or fake-quantized overrides) against its float
//! reference, from real forward passes over whole sequences; the metrics are [`crate::reference`]'s.

pub mod compare;

pub use compare::{compare, compare_all, Comparison, Variant};
