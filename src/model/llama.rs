//! Llama-family decoders (Llama, SmolLM2, Mistral, Qwen2): GQA, RoPE, RMSNorm, SwiGLU.
//!
//! The forward pass is split into [`Llama::embed`], [`Llama::run_layers`] and [`Llama::logits`]
//! so sensitivity analysis can reuse the float hidden states before a layer and recompute only
//! the layers after it. Numerics follow candle-transformers' llama (tested against it).

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result, Subject};
use crate::model::qlinear::{Overrides, QLinear, Usage};
use crate::model::weights::{self, Weights};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use std::ops::Range;

/// The config.json fields a Llama-family forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to hidden / heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// RoPE scaling (`llama3` and `linear` are supported).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Whether the LM head reuses the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Activation of the MLP gate; only SiLU (SwiGLU) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Mistral-style sliding attention window.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2 ships `sliding_window` but only applies it when this is true.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_act() -> String {
    "silu".into()
}

/// RoPE frequency scaling from config.json `rope_scaling`.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    /// `rope_type` (newer configs) or `type` (older ones).
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Scale factor.
    pub factor: f64,
    /// llama3: frequencies with wavelengths above original/low_freq_factor are divided by factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// llama3: frequencies with wavelengths below original/high_freq_factor are kept.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// llama3: the context length the model was trained with before scaling.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

impl LlamaConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The sliding attention window, when the model applies one.
    pub fn window(&self) -> Option<usize> {
        self.sliding_window
            .filter(|_| self.use_sliding_window != Some(false))
    }

    /// Checks that the numbers describe a model we can run; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        if h == 0 || kv == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return Err("hidden_size, heads and layers must be positive".into());
        }
        if h % kv != 0 {
            return Err(format!(
                "num_attention_heads {h} is not a multiple of num_key_value_heads {kv}"
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act '{}' is not supported (the Llama family uses silu)",
                self.hidden_act
            ));
        }
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} {v} is not a positive number"))
            }
        };
        positive("rope_theta", self.rope_theta)?;
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(format!(
                "rms_norm_eps {} is not a number >= 0",
                self.rms_norm_eps
            ));
        }
        if let Some(s) = &self.rope_scaling {
            positive("rope_scaling.factor", s.factor)?;
            for (name, v) in [
                ("rope_scaling.low_freq_factor", s.low_freq_factor),
                ("rope_scaling.high_freq_factor", s.high_freq_factor),
            ] {
                v.map_or(Ok(()), |v| positive(name, v))?;
            }
            match s.rope_type.as_str() {
                "linear" => {}
                "llama3"
                    if s.low_freq_factor.is_some()
                        && s.high_freq_factor.is_some()
                        && s.original_max_position_embeddings.is_some() => {}
                other => {
                    return Err(format!(
                        "rope_scaling type '{other}' is not supported (supported: linear, llama3 \
                         with low/high_freq_factor and original_max_position_embeddings)"
                    ))
                }
            }
        }
        Ok(())
    }

    /// RoPE inverse frequencies (head_dim / 2 of them), with the configured scaling.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim();
        let mut freqs: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64))
            .collect();
        if let Some(s) = &self.rope_scaling {
            match s.rope_type.as_str() {
                "linear" => freqs.iter_mut().for_each(|f| *f /= s.factor),
                _ => {
                    let (low, high) = (
                        s.low_freq_factor.unwrap_or(1.0),
                        s.high_freq_factor.unwrap_or(4.0),
                    );
                    let old = s.original_max_position_embeddings.unwrap_or(8192) as f64;
                    let (low_wavelen, high_wavelen) = (old / low, old / high);
                    for f in &mut freqs {
                        let wavelen = 2.0 * std::f64::consts::PI / *f;
                        if wavelen > low_wavelen {
                            *f /= s.factor;
                        } else if wavelen >= high_wavelen {
                            let smooth = (old / wavelen - low) / (high - low);
                            *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                        }
                    }
                }
            }
        }
        freqs.into_iter().map(|f| f as f32).collect()
    }
}

/// One decoder layer.
struct Layer {
    input_norm: Tensor,
    q: QLinear,
    k: QLinear,
    v: QLinear,
    o: QLinear,
    post_norm: Tensor,
    gate: QLinear,
    up: QLinear,
    down: QLinear,
}

/// RoPE tables and the attention mask for a sequence length, shared by every layer.
struct Positions {
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

/// A Llama-family causal LM with hookable matmul weights.
pub struct Llama {
    config: LlamaConfig,
    /// The token embedding; with tied embeddings also the LM head.
    embed: QLinear,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `None` when the head is tied to the embedding.
    lm_head: Option<QLinear>,
    /// Use differentiable (slower) norm, softmax and RoPE ops; candle-nn's fused kernels have
    /// no backward pass. Only training needs this.
    differentiable: bool,
}

impl Llama {
    /// Loads a Llama-family model (HF tensor names, config.json) from `checkpoint`.
    pub fn load(checkpoint: &Checkpoint) -> Result<Llama> {
        Llama::load_with(checkpoint, &Weights::new(checkpoint))
    }

    /// Loads with config.json of `checkpoint` and the tensors of `w`.
    pub fn load_with(checkpoint: &Checkpoint, w: &Weights) -> Result<Llama> {
        let config: LlamaConfig = weights::config(checkpoint)?;
        config
            .validate()
            .map_err(|m| weights::bad_config(checkpoint, m))?;
        Llama::build(config, w)
    }

    /// Builds the model for `config` (already validated) from the tensors of `w`.
    pub fn build(config: LlamaConfig, w: &Weights) -> Result<Llama> {
        config
            .validate()
            .map_err(|m| Error::invalid(Subject::other("config"), m))?;
        let (hidden, inter) = (config.hidden_size, config.intermediate_size);
        let (q_out, kv_out) = (
            config.num_attention_heads * config.head_dim(),
            config.kv_heads() * config.head_dim(),
        );
        let usage = if config.tie_word_embeddings {
            Usage::GatherAndMatmul
        } else {
            Usage::Gather
        };
        let embed = w
            .linear("model.embed_tokens", config.vocab_size, hidden)?
            .with_usage(usage);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Layer {
                    input_norm: w.tensor(&format!("{p}.input_layernorm.weight"), &[hidden])?,
                    q: w.linear(&format!("{p}.self_attn.q_proj"), q_out, hidden)?,
                    k: w.linear(&format!("{p}.self_attn.k_proj"), kv_out, hidden)?,
                    v: w.linear(&format!("{p}.self_attn.v_proj"), kv_out, hidden)?,
                    o: w.linear(&format!("{p}.self_attn.o_proj"), hidden, q_out)?,
                    post_norm: w
                        .tensor(&format!("{p}.post_attention_layernorm.weight"), &[hidden])?,
                    gate: w.linear(&format!("{p}.mlp.gate_proj"), inter, hidden)?,
                    up: w.linear(&format!("{p}.mlp.up_proj"), inter, hidden)?,
                    down: w.linear(&format!("{p}.mlp.down_proj"), hidden, inter)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = w.tensor("model.norm.weight", &[hidden])?;
        // Some tied checkpoints still store lm_head.weight; the config decides.
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(w.linear("lm_head", config.vocab_size, hidden)?)
        };
        Ok(Llama {
            config,
            embed,
            layers,
            norm,
            lm_head,
            differentiable: false,
        })
    }

    /// Switches to ops with a backward pass (for training); results agree to rounding.
    pub fn differentiable(mut self) -> Self {
        self.differentiable = true;
        self
    }

    /// The parsed config.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Every quantizable matmul in forward order: per layer q, k, v, o, gate, up, down; then an
    /// untied LM head.
    pub fn linears(&self) -> Vec<&QLinear> {
        self.linears_by_layer().into_iter().flatten().collect()
    }

    /// The quantizable matmuls grouped by decoder layer (q, k, v, o, gate, up, down), then an
    /// untied LM head alone in a last group (the "layer" after the decoder layers).
    pub fn linears_by_layer(&self) -> Vec<Vec<&QLinear>> {
        let mut out: Vec<Vec<&QLinear>> = self
            .layers
            .iter()
            .map(|l| vec![&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down])
            .collect();
        out.extend(self.lm_head.as_ref().map(|h| vec![h]));
        out
    }

    /// Where input rescaling folds: per layer the attention norm into q/k/v, without grouped
    /// queries v's rows into o (with them one v row feeds the o columns of several query heads,
    /// which would have to share its scale; not done), the MLP norm into gate/up and up's rows
    /// into down (the gate's SiLU is not linear, the product with up is); an untied LM head
    /// into the final norm. A tied head has none: its columns are also the embedding rows.
    pub fn folds(&self) -> Vec<super::Fold> {
        let names = |ls: &[&QLinear]| ls.iter().map(|l| l.name().to_string()).collect();
        let norm = |consumers: &[&QLinear], norm: String| super::Fold {
            consumers: names(consumers),
            producers: vec![norm],
            producer_weight: None,
        };
        let rows = |consumer: &QLinear, producer: &QLinear| super::Fold {
            consumers: names(&[consumer]),
            producers: std::iter::once(producer.name().to_string())
                .chain(producer.bias_name())
                .collect(),
            producer_weight: Some(producer.name().to_string()),
        };
        let gqa = self.config.kv_heads() != self.config.num_attention_heads;
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push(norm(
                &[&l.q, &l.k, &l.v],
                format!("{p}.input_layernorm.weight"),
            ));
            if !gqa {
                out.push(rows(&l.o, &l.v));
            }
            out.push(norm(
                &[&l.gate, &l.up],
                format!("{p}.post_attention_layernorm.weight"),
            ));
            out.push(rows(&l.down, &l.up));
        }
        if let Some(h) = &self.lm_head {
            out.push(norm(&[h], "model.norm.weight".to_string()));
        }
        out
    }

    /// Every quantizable weight grouped by where its input is quantized: the groups of
    /// [`Self::linears_by_layer`] with the token embedding first in layer 0 or, tied, as the
    /// LM head in a last group.
    pub fn quantizable_by_layer(&self) -> Vec<Vec<&QLinear>> {
        let mut out = self.linears_by_layer();
        match self.embed.usage() {
            Usage::GatherAndMatmul => out.push(vec![&self.embed]),
            _ => out[0].insert(0, &self.embed),
        }
        out
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (u32).
    pub fn forward(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.embed(tokens, None)?;
        let h = self.run_layers(h, 0..self.layers.len(), None)?;
        self.logits(&h, None)
    }

    /// Token embeddings `[batch, seq, hidden]` (`overrides` may replace the table).
    pub fn embed(
        &self,
        tokens: &Tensor,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        tokens.dims2()?;
        self.embed.gather(tokens, overrides)
    }

    /// Runs decoder layers `range` on hidden states `[batch, seq, hidden]`, with the layers
    /// `overrides` names computing with its weights and input quantizers.
    pub fn run_layers(
        &self,
        mut h: Tensor,
        range: Range<usize>,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        let pos = self.positions(h.dim(1)?, h.device())?;
        for layer in &self.layers[range] {
            h = self.layer_forward(layer, &h, &pos, overrides)?;
        }
        Ok(h)
    }

    /// Final norm and LM head: logits `[batch, seq, vocab]` (`overrides` may replace the head).
    pub fn logits(
        &self,
        h: &Tensor,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        let h = self.rms_norm(h, &self.norm)?;
        self.lm_head
            .as_ref()
            .unwrap_or(&self.embed)
            .forward_with(&h, overrides)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        if self.differentiable {
            candle_nn::ops::rms_norm_slow(x, weight, eps)
        } else {
            candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)
        }
    }

    fn positions(&self, t: usize, device: &Device) -> candle_core::Result<Positions> {
        let inv = self.config.inv_freq();
        let half = inv.len();
        let angles: Vec<f32> = (0..t)
            .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = Tensor::from_vec(angles, (t, half), device)?;
        let window = self.config.window().unwrap_or(usize::MAX);
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..t).map(move |j| {
                    if j > i || i - j >= window {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Ok(Positions {
            cos: angles.cos()?,
            sin: angles.sin()?,
            mask: Tensor::from_vec(mask, (t, t), device)?,
        })
    }

    fn layer_forward(
        &self,
        l: &Layer,
        x: &Tensor,
        pos: &Positions,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (heads, kv_heads, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());

        let n = self.rms_norm(x, &l.input_norm)?;
        let split = |y: Tensor, nh: usize| -> candle_core::Result<Tensor> {
            y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = split(l.q.forward_with(&n, overrides)?, heads)?;
        let k = split(l.k.forward_with(&n, overrides)?, kv_heads)?;
        let v = split(l.v.forward_with(&n, overrides)?, kv_heads)?;
        let rope = if self.differentiable {
            candle_nn::rotary_emb::rope_slow
        } else {
            candle_nn::rotary_emb::rope
        };
        let (q, k) = (rope(&q, &pos.cos, &pos.sin)?, rope(&k, &pos.cos, &pos.sin)?);
        let (k, v) = (
            repeat_kv(k, heads / kv_heads)?,
            repeat_kv(v, heads / kv_heads)?,
        );

        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&pos.mask)?;
        let probs = if self.differentiable {
            candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let attn = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, heads * hd))?;
        let x = (x + l.o.forward_with(&attn, overrides)?)?;

        let n = self.rms_norm(&x, &l.post_norm)?;
        let mlp =
            (l.gate.forward_with(&n, overrides)?.silu()? * l.up.forward_with(&n, overrides)?)?;
        x + l.down.forward_with(&mlp, overrides)?
    }
}

/// `[b, kv, t, d]` -> `[b, kv * n, t, d]`, each kv head repeated for its `n` query heads.
fn repeat_kv(x: Tensor, n: usize) -> candle_core::Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, n, t, d))?
        .reshape((b, kv * n, t, d))
}

/// Logits of `model` for the single sequence `tokens`, flattened row-major `[seq, vocab]`.
pub fn sequence_logits(model: &Llama, tokens: &[u32]) -> Result<Vec<f32>> {
    let ids = Tensor::new(tokens, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .map_err(Error::compute("token ids"))?;
    model
        .forward(&ids)
        .and_then(|l| l.to_dtype(DType::F32)?.flatten_all()?.to_vec1())
        .map_err(Error::compute("llama forward"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> LlamaConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn llama3_rope_scaling_keeps_high_and_divides_low_frequencies() {
        let base = r#"{"vocab_size":8,"hidden_size":128,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":1,"rms_norm_eps":1e-5,
            "rope_theta":500000.0"#;
        let plain = config(&format!("{base}}}"));
        let scaled = config(&format!(
            r#"{base},"rope_scaling":{{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192}}}}"#
        ));
        scaled.validate().unwrap();
        let (p, s) = (plain.inv_freq(), scaled.inv_freq());
        assert_eq!(p[0], s[0], "the highest frequency is kept");
        let last = p.len() - 1;
        assert!((s[last] - p[last] / 8.0).abs() <= 1e-12 * p[last].abs().max(1e-30));
        assert!(s.iter().zip(&p).all(|(s, p)| s <= p));
    }

    #[test]
    fn rejects_what_it_cannot_run_naming_the_field() {
        let c = config(
            r#"{"vocab_size":8,"hidden_size":12,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":3,"num_key_value_heads":2,"rms_norm_eps":1e-5}"#,
        );
        assert!(c.validate().unwrap_err().contains("num_key_value_heads"));
        let c = config(
            r#"{"vocab_size":8,"hidden_size":12,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":3,"rms_norm_eps":1e-5,"hidden_act":"gelu"}"#,
        );
        assert!(c.validate().unwrap_err().contains("gelu"));
        let c = config(
            r#"{"vocab_size":8,"hidden_size":12,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":3,"rms_norm_eps":1e-5,"rope_scaling":{"type":"yarn","factor":4}}"#,
        );
        assert!(c.validate().unwrap_err().contains("yarn"));
    }
}
