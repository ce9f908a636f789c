//! Model architectures: detection, the weights quantization acts on, and (later) forward passes.

pub mod arch;

pub use arch::{Architecture, DetectedFrom, Family, MatmulWeight};
