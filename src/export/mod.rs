//! Writing what the search chose: packed safetensors checkpoints qpipe reads back and runs, and
//! GGUF files for llama.cpp.

pub mod gguf;
pub mod onnx;
pub mod packed;
