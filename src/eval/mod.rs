//! Accuracy of a quantized model against its float reference, from real forward-pass outputs.

pub mod baseline;
pub mod metrics;

pub use metrics::{
    compare_embeddings, compare_logits, perplexity, EmbeddingComparison, LmComparison,
};
