//! Accuracy of a quantized model against its float reference, from real forward-pass outputs.

pub mod baseline;
pub mod compare;
pub mod metrics;

pub use compare::{compare, compare_all, Comparison, Variant};
pub use metrics::{
    compare_embeddings, compare_logits, perplexity, EmbeddingComparison, LmComparison,
};
