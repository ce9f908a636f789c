//! Model export: a GGUF file for llama.cpp.

pub mod gguf;
