//! The float model as the yardstick every quantized variant is measured against: its top-K
//! next-token distributions ([`TopK`]), its stored run on a batch of sequences that variants
//! restart from part-way ([`Baseline`]), and the metrics that compare outputs (KL, perplexity,
//! top-1 agreement, cosine). Calibration, sensitivity, the search and the held-out evaluation
//! all score against it, so it sits below each of them.

pub mod baseline;
pub mod metrics;
pub mod topk;

pub use baseline::{batch, layers, Baseline, Metric};
pub use metrics::{
    compare_embeddings, compare_logits, perplexity, EmbeddingComparison, LmComparison,
};
pub use topk::TopK;
