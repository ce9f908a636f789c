//! qpipe: mixed-precision model compression with real forward-pass fitness.
//!
//! Modules are layers (docs/ARCHITECTURE.md), each using only those below it: checkpoint ->
//! quant -> model -> reference -> calib -> sensitivity -> hardware -> search -> export -> report
//! -> pipeline. [`pipeline`] holds the jobs the `qpipe` binary runs, as library calls.

#![deny(missing_docs)]

pub mod calib;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod gguf;
pub mod hardware;
pub mod import;
pub mod model;
pub mod packed;
pub mod pipeline;
pub mod process;
pub mod quant;
pub mod reference;
pub mod report;
pub mod search;
pub mod sensitivity;

pub use error::{Error, Result, Subject};
