//! llama.cpp's GGUF side of qpipe, shared by `import` (GGUF -> HF) and `export` (HF -> GGUF):
//! tensor names and the Q/K RoPE row order ([`layout`]), the byte-level BPE vocabulary in both
//! directions ([`tokenizer`] rebuilds tokenizer.json from a GGUF vocabulary, [`vocab`] writes
//! one from tokenizer.json), the validating GGUF v2/v3 header [`reader`] and the streaming
//! GGUF v3 [`writer`].

mod encode;
pub mod layout;
pub mod reader;
pub mod tokenizer;
pub mod vocab;
pub mod writer;
