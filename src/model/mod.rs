//! Model architectures: detection, the weights quantization acts on, and our own forward passes
//! (Llama family, BERT encoders) in candle with every matmul weight behind a [`QLinear`].

pub mod arch;
pub mod bert;
pub mod llama;
pub mod qlinear;
pub mod weights;

pub use arch::{Architecture, DetectedFrom, Family, MatmulWeight};
pub use qlinear::{ActivationObserver, Overrides, QLinear, Recorder, Swap, Usage, WeightSource};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// Matmuls reading one input whose channels may be rescaled without changing what the float
/// model computes: the producers divide channel `j` by `s_j` (a norm's weight, the rows and
/// bias of the matmul that made the input) and the consumers' column `j` is multiplied by it
/// (see [`crate::quant::transform`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    /// Checkpoint names of the weights reading the input (their columns are scaled).
    pub consumers: Vec<String>,
    /// Checkpoint names of the tensors whose first dimension is divided.
    pub producers: Vec<String>,
    /// The quantizable weight among the producers, if any: its format must quantize a divided
    /// row as the row's values divided ([`crate::quant::Format::row_scalable`]).
    pub producer_weight: Option<String>,
}

/// A loaded model of a supported family.
pub enum Model {
    /// Decoder-only causal LM.
    Llama(Box<llama::Llama>),
    /// Encoder producing sentence embeddings.
    Bert(Box<bert::Bert>),
}

impl Model {
    /// Rows of the token embedding: every token id the model takes is below it.
    pub fn vocab_size(&self) -> usize {
        match self {
            Model::Llama(m) => m.config().vocab_size,
            Model::Bert(m) => m.config().vocab_size,
        }
    }

    /// Detects the architecture of `checkpoint` and loads it; an unsupported architecture is an
    /// error naming it and what is supported.
    pub fn load(checkpoint: &Checkpoint) -> Result<Model> {
        Model::load_with(checkpoint, &weights::Weights::new(checkpoint))
    }

    /// Loads a packed checkpoint: its quantized weights are multiplied as stored.
    pub fn load_packed(packed: &crate::packed::Packed) -> Result<Model> {
        Model::load_with(&packed.checkpoint, &weights::Weights::Packed(packed))
    }

    fn load_with(checkpoint: &Checkpoint, w: &weights::Weights) -> Result<Model> {
        let found = arch::detect(checkpoint);
        match found.family {
            Some(Family::Llama) => {
                llama::Llama::load_with(checkpoint, w).map(|m| Model::Llama(Box::new(m)))
            }
            Some(Family::Bert) => {
                bert::Bert::load_with(checkpoint, w).map(|m| Model::Bert(Box::new(m)))
            }
            None => {
                let path = weights::config_path(checkpoint);
                let path = if path.is_file() {
                    path
                } else {
                    checkpoint.dir().to_path_buf()
                };
                Err(Error::unsupported(
                    &path,
                    format!(
                        "architecture '{}' is not supported (supported: Llama family: \
                         LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, SmolLM2; \
                         BERT encoders: BertModel)",
                        found.name
                    ),
                ))
            }
        }
    }

    /// The model's family.
    pub fn family(&self) -> Family {
        match self {
            Model::Llama(_) => Family::Llama,
            Model::Bert(_) => Family::Bert,
        }
    }

    /// Every quantizable weight (matmuls and embedding tables), grouped by the layer whose
    /// activation option quantizes its input: what the search gives genes to. Embedding
    /// tables come first in layer 0, a tied embedding (also the LM head) in a last group.
    pub fn quantizable_by_layer(&self) -> Vec<Vec<&QLinear>> {
        match self {
            Model::Llama(m) => m.quantizable_by_layer(),
            Model::Bert(m) => m.quantizable_by_layer(),
        }
    }

    /// Where input rescaling folds, in forward order. BERT has none: its post-LN norms'
    /// outputs are also the residual stream, and its output matmuls read GELU outputs.
    pub fn folds(&self) -> Vec<Fold> {
        match self {
            Model::Llama(m) => m.folds(),
            Model::Bert(_) => Vec::new(),
        }
    }

    /// Every quantizable weight, in [`Self::quantizable_by_layer`] order.
    pub fn quantizable(&self) -> Vec<&QLinear> {
        self.quantizable_by_layer().into_iter().flatten().collect()
    }

    /// The embedding rows of `ids` `[batch, seq]` entering the first layer (`overrides` may
    /// replace the tables); `mask` is the encoder's attention mask.
    pub fn embed(
        &self,
        ids: &candle_core::Tensor,
        mask: &candle_core::Tensor,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Model::Llama(m) => m.embed(ids, overrides),
            Model::Bert(m) => m.embed_tokens(ids, mask, overrides),
        }
    }

    /// Every quantizable matmul that is not an embedding table, in forward order.
    pub fn linears(&self) -> Vec<&QLinear> {
        match self {
            Model::Llama(m) => m.linears(),
            Model::Bert(m) => m.linears(),
        }
    }

    /// The quantizable matmuls grouped by the layer they sit in, in forward order (an untied
    /// LM head forms a last group of its own).
    pub fn linears_by_layer(&self) -> Vec<Vec<&QLinear>> {
        match self {
            Model::Llama(m) => m.linears_by_layer(),
            Model::Bert(m) => m.linears_by_layer(),
        }
    }
}
