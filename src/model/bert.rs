//! BERT encoders (MiniLM): post-LN transformer, GELU, mean pooling and L2 normalisation.
//!
//! The forward pass follows candle-transformers' `bert` op for op (same embedding sum order,
//! fused layer norm, additive `f32::MIN` padding mask), so FP32 results agree with that
//! reference to rounding; the only difference is that the six matmuls of each layer and the
//! three embedding tables are [`QLinear`]s, which lets the search swap their weights and
//! calibration observe the matmuls' inputs.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::model::arch::Family;
use crate::model::qlinear::{Overrides, QLinear, Usage};
use crate::model::weights::{self, bad_config, Weights};
use candle_core::{DType, Tensor, D};
use serde::Deserialize;
use std::ops::Range;

/// The config.json fields a BERT forward pass needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Rows of the word embedding table.
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Width of the feed-forward block.
    pub intermediate_size: usize,
    /// Feed-forward activation: "gelu" (exact erf) or "gelu_new"/"gelu_pytorch_tanh" (tanh).
    pub hidden_act: String,
    /// Longest sequence the position embedding table covers.
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) embedding table.
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Only "absolute" is supported.
    #[serde(default = "absolute")]
    pub position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".to_string()
}

/// The feed-forward activation, resolved from `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// HF "gelu": exact `x * Phi(x)` with erf.
    GeluErf,
    /// HF "gelu_new" / "gelu_pytorch_tanh": the tanh approximation.
    GeluTanh,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
        }
    }
}

impl BertConfig {
    /// Checks the config describes a model this forward pass computes exactly; returns its
    /// feed-forward activation.
    pub fn validate(&self, checkpoint: &Checkpoint) -> Result<Activation> {
        let path = weights::config_path(checkpoint);
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(bad_config(checkpoint, format!("{field} is 0")));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad_config(
                checkpoint,
                format!(
                    "hidden_size {} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(bad_config(
                checkpoint,
                format!(
                    "layer_norm_eps {} is not a positive number",
                    self.layer_norm_eps
                ),
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(Error::unsupported(
                &path,
                format!(
                    "position_embedding_type '{}' is not supported; BERT supports 'absolute' only",
                    self.position_embedding_type
                ),
            ));
        }
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            other => Err(Error::unsupported(
                &path,
                format!(
                    "hidden_act '{other}' is not supported; BERT supports 'gelu' (exact erf), \
                     'gelu_new' and 'gelu_pytorch_tanh' (tanh approximation)"
                ),
            )),
        }
    }
}

/// A LayerNorm with weight and bias, computed by candle-nn's fused kernel.
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// `{prefix}.weight`/`.bias`, or the `gamma`/`beta` names of old TF-converted checkpoints.
    fn load(w: &Weights, prefix: &str, size: usize, eps: f64) -> Result<LayerNorm> {
        let (wn, bn) = if !w.has(&format!("{prefix}.weight")) && w.has(&format!("{prefix}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Ok(LayerNorm {
            weight: w.tensor(&format!("{prefix}.{wn}"), &[size])?,
            bias: w.tensor(&format!("{prefix}.{bn}"), &[size])?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps)
    }
}

// Positions of each role in `Layer::linears`, in the order of `Family::Bert.matmul_roles()`.
const QUERY: usize = 0;
const KEY: usize = 1;
const VALUE: usize = 2;
const ATTN_OUT: usize = 3;
const INTERMEDIATE: usize = 4;
const OUTPUT: usize = 5;

/// One encoder layer: the six matmuls plus the two post-residual LayerNorms.
struct Layer {
    linears: Vec<QLinear>,
    attn_norm: LayerNorm,
    out_norm: LayerNorm,
}

/// A BERT encoder whose matmul weights are all [`QLinear`]s.
pub struct Bert {
    config: BertConfig,
    activation: Activation,
    word: QLinear,
    position: QLinear,
    /// Every token is segment 0: row 0 of this table is added to every position.
    token_type: QLinear,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    head_dim: usize,
}

impl Bert {
    /// Builds the encoder from `checkpoint` (tensor names with or without a `bert.` prefix).
    pub fn load(checkpoint: &Checkpoint) -> Result<Bert> {
        Bert::load_with(checkpoint, &Weights::new(checkpoint))
    }

    /// Builds the encoder with config.json of `checkpoint` and the tensors of `w`.
    pub fn load_with(checkpoint: &Checkpoint, w: &Weights) -> Result<Bert> {
        let config: BertConfig = weights::config(checkpoint)?;
        let activation = config.validate(checkpoint)?;
        let p = if w.has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let e = format!("{p}embeddings");
        let table = |name: &str, rows: usize| -> Result<QLinear> {
            Ok(w.linear(&format!("{e}.{name}"), rows, h)?
                .with_usage(Usage::Gather))
        };
        let word = table("word_embeddings", config.vocab_size)?;
        let position = table("position_embeddings", config.max_position_embeddings)?;
        let token_type = table("token_type_embeddings", config.type_vocab_size)?;
        let embed_norm = LayerNorm::load(w, &format!("{e}.LayerNorm"), h, eps)?;

        let roles = Family::Bert.matmul_roles();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let lp = format!("{p}encoder.layer.{i}");
            let linears = roles
                .iter()
                .enumerate()
                .map(|(k, role)| {
                    let (out, inp) = match k {
                        INTERMEDIATE => (config.intermediate_size, h),
                        OUTPUT => (h, config.intermediate_size),
                        _ => (h, h),
                    };
                    let prefix = format!("{lp}.{}", role.trim_end_matches(".weight"));
                    w.linear(&prefix, out, inp)
                })
                .collect::<Result<Vec<_>>>()?;
            layers.push(Layer {
                linears,
                attn_norm: LayerNorm::load(w, &format!("{lp}.attention.output.LayerNorm"), h, eps)?,
                out_norm: LayerNorm::load(w, &format!("{lp}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Bert {
            head_dim: h / config.num_attention_heads,
            config,
            activation,
            word,
            position,
            token_type,
            embed_norm,
            layers,
        })
    }

    /// The parsed and validated config.json.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Every matmul layer in forward order (per layer: query, key, value, attention output,
    /// intermediate, output).
    pub fn linears(&self) -> Vec<&QLinear> {
        self.layers.iter().flat_map(|l| l.linears.iter()).collect()
    }

    /// The matmul layers grouped by encoder layer.
    pub fn linears_by_layer(&self) -> Vec<Vec<&QLinear>> {
        self.layers
            .iter()
            .map(|l| l.linears.iter().collect())
            .collect()
    }

    /// Every quantizable weight grouped by encoder layer: the embedding tables (word,
    /// position, token type) first in layer 0.
    pub fn quantizable_by_layer(&self) -> Vec<Vec<&QLinear>> {
        let mut out = self.linears_by_layer();
        out[0].splice(0..0, [&self.word, &self.position, &self.token_type]);
        out
    }

    /// Last hidden states `(b, t, hidden)` f32 for u32 `input_ids` and `attention_mask` `(b, t)`
    /// (mask 1 = token, 0 = padding); every token is segment 0.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let x = self.embed_tokens(input_ids, attention_mask, None)?;
        let mask = additive_mask(attention_mask)?;
        self.run_layers(x, &mask, 0..self.layers.len(), None)
    }

    /// The embedding block's output `(b, t, hidden)`: word + token-type + position embeddings,
    /// LayerNorm'd; checks that `attention_mask` matches and the sequence fits (`overrides`
    /// may replace the tables).
    pub fn embed_tokens(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if attention_mask.dims() != input_ids.dims() {
            candle_core::bail!(
                "attention_mask has shape {:?}, input_ids {:?}",
                attention_mask.dims(),
                input_ids.dims()
            );
        }
        if t > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence of {t} tokens is longer than max_position_embeddings {}",
                self.config.max_position_embeddings
            );
        }
        let h = self.config.hidden_size;
        let device = input_ids.device();
        let words = self.word.gather(input_ids, overrides)?;
        let segment = self
            .token_type
            .gather(&Tensor::zeros(1, DType::U32, device)?, overrides)?
            .reshape(h)?;
        let positions = self
            .position
            .gather(&Tensor::arange(0u32, t as u32, device)?, overrides)?;
        debug_assert_eq!(words.dims(), [b, t, h]);
        // Same summation order as the reference: (word + token type) + position.
        let x = words.broadcast_add(&segment)?.broadcast_add(&positions)?;
        self.embed_norm.forward(&x)
    }

    /// Runs encoder layers `range` on hidden states `(b, t, hidden)` with the additive `mask`
    /// from [`additive_mask`], with the layers `overrides` names computing
    /// with its weights and input quantizers.
    pub fn run_layers(
        &self,
        mut x: Tensor,
        mask: &Tensor,
        range: Range<usize>,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        for layer in &self.layers[range] {
            x = self.layer(layer, &x, mask, overrides)?;
        }
        Ok(x)
    }

    /// Number of encoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn layer(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask: &Tensor,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let split = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let l = &layer.linears;
        let q = split(l[QUERY].forward_with(x, overrides)?)?;
        let k = split(l[KEY].forward_with(x, overrides)?)?;
        let v = split(l[VALUE].forward_with(x, overrides)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, h))?;
        let attn = layer
            .attn_norm
            .forward(&(l[ATTN_OUT].forward_with(&context, overrides)? + x)?)?;
        let inner = self
            .activation
            .apply(&l[INTERMEDIATE].forward_with(&attn, overrides)?)?;
        layer
            .out_norm
            .forward(&(l[OUTPUT].forward_with(&inner, overrides)? + &attn)?)
    }

    /// Sentence embeddings `(b, hidden)`: mean of the non-padding hidden states, L2-normalised
    /// (what sentence-transformers' all-MiniLM-L6-v2 computes).
    pub fn embed(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.forward(input_ids, attention_mask)?;
        mean_pool_normalize(&hidden, attention_mask)
    }
}

/// HF's extended attention mask `(b, 1, 1, t)` for a 0/1 `attention_mask` `(b, t)`: 0 for
/// tokens, the most negative f32 for padding keys, so padded positions get exactly zero
/// attention weight whatever their scores are.
pub fn additive_mask(attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t) = attention_mask.dims2()?;
    let mask = attention_mask.to_dtype(DType::F32)?;
    ((mask.ones_like()? - &mask)? * f64::from(f32::MIN))?.reshape((b, 1, 1, t))
}

/// Masked mean over tokens then L2 normalisation, with sentence-transformers' clamps (token
/// count >= 1e-9, norm >= 1e-12) so an all-padding row yields zeros rather than NaN.
pub fn mean_pool_normalize(
    hidden: &Tensor,
    attention_mask: &Tensor,
) -> candle_core::Result<Tensor> {
    let mask = attention_mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let count = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
    let mean = summed.broadcast_div(&count)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12f32, f32::MAX)?;
    mean.broadcast_div(&norm)
}

#[cfg(test)]
mod tests;
