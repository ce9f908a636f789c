//! Writing what the search chose: packed safetensors checkpoints qpipe reads back and runs.

pub mod packed;
