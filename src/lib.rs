//! qpipe: mixed-precision model compression with real forward-pass fitness.
//!
//! Data flows one way: checkpoint -> model -> calibration -> sensitivity -> search -> export -> eval.

pub mod calib;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod gguf_layout;
pub mod hardware;
pub mod import;
pub mod model;
pub mod process;
pub mod quant;
pub mod report;
pub mod search;
pub mod sensitivity;

pub use error::{Error, Result};
