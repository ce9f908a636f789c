//! The integration tests, one module per area, in one binary so the suite links once.
//!
//! `cargo test --release --test suite MODULE` runs one module (e.g. `hardware_host`).
//!
//! The tests run concurrently: one that keeps a core busy for more than a tenth of a second
//! starts with `let _cpu = common::busy();`, so that hardware_host (run with `--ignored`) can hold
//! the CPUs alone while it times them.

mod common;

mod activation_quant;
mod bert_reference;
mod calib;
mod calibration_data;
mod checkpoint;
mod cli_inspect;
mod compress;
mod eval_metrics;
mod export_gguf;
mod export_onnx;
mod fuzz;
mod gguf_tokenizer;
mod gptq;
mod hardening;
mod hardware;
mod hardware_host;
mod import;
mod importance;
mod layers;
mod llama_reference;
mod model_load;
mod pipeline;
mod quant;
mod search;
mod sensitivity;
mod tiny_model;
mod transform;
