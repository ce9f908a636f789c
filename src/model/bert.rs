//! BERT encoders (MiniLM): post-LN transformer, GELU, mean pooling and L2 normalisation.
//!
//! The forward pass follows candle-transformers' `bert` op for op (same embedding sum order,
//! fused layer norm, additive `f32::MIN` padding mask), so FP32 results agree with that
//! reference to rounding; the only difference is that the six matmuls of each layer run through
//! [`QLinear`], which lets the search swap their weights and calibration observe their inputs.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::model::arch::Family;
use crate::model::qlinear::{Overrides, QLinear};
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
enum Activation {
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
    /// Checks the config describes a model this forward pass computes exactly.
    fn validate(&self, checkpoint: &Checkpoint) -> Result<Activation> {
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
    word: Tensor,
    position: Tensor,
    /// Row 0 of the token-type table, `[hidden]`: every token is segment 0.
    token_type0: Tensor,
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
        let word = w.tensor(
            &format!("{e}.word_embeddings.weight"),
            &[config.vocab_size, h],
        )?;
        let position = w.tensor(
            &format!("{e}.position_embeddings.weight"),
            &[config.max_position_embeddings, h],
        )?;
        let token_types = w.tensor(
            &format!("{e}.token_type_embeddings.weight"),
            &[config.type_vocab_size, h],
        )?;
        let token_type0 = token_types
            .get(0)
            .map_err(Error::compute(format!("{e}.token_type_embeddings.weight")))?;
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
            token_type0,
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

    /// Last hidden states `(b, t, hidden)` f32 for u32 `input_ids` and `attention_mask` `(b, t)`
    /// (mask 1 = token, 0 = padding); every token is segment 0.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let x = self.embed_tokens(input_ids, attention_mask)?;
        let mask = additive_mask(attention_mask)?;
        self.run_layers(x, &mask, 0..self.layers.len(), None)
    }

    /// The embedding block's output `(b, t, hidden)`: word + token-type + position embeddings,
    /// LayerNorm'd; checks that `attention_mask` matches and the sequence fits.
    pub fn embed_tokens(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
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
        let words = self
            .word
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        // Same summation order as the reference: (word + token type) + position.
        let positions = self.position.narrow(0, 0, t)?;
        let x = words
            .broadcast_add(&self.token_type0)?
            .broadcast_add(&positions)?;
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
mod tests {
    use super::*;
    use crate::checkpoint::write::{write_safetensors, LazyTensor};
    use crate::model::arch;
    use candle_core::Device;
    use std::path::Path;

    const H: usize = 16;
    const I: usize = 40;
    const VOCAB: usize = 50;
    const LAYERS: usize = 2;

    /// Deterministic pseudo-random values in [-scale, scale) (splitmix64 on a per-tensor seed).
    fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn config_json(hidden_act: &str, heads: usize, extra: &str) -> String {
        format!(
            r#"{{"architectures": ["BertModel"], "vocab_size": {VOCAB}, "hidden_size": {H},
            "num_hidden_layers": {LAYERS}, "num_attention_heads": {heads},
            "intermediate_size": {I}, "hidden_act": "{hidden_act}",
            "max_position_embeddings": 32, "type_vocab_size": 2, "layer_norm_eps": 1e-12{extra}}}"#
        )
    }

    /// A tiny random BERT checkpoint in `dir`, tensors named with `prefix`.
    fn write_tiny(dir: &Path, prefix: &str, config: &str) {
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![VOCAB, H]),
            ("embeddings.position_embeddings.weight".into(), vec![32, H]),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, H]),
            ("embeddings.LayerNorm.weight".into(), vec![H]),
            ("embeddings.LayerNorm.bias".into(), vec![H]),
        ];
        for l in 0..LAYERS {
            let lp = format!("encoder.layer.{l}");
            for (name, out, inp) in [
                ("attention.self.query", H, H),
                ("attention.self.key", H, H),
                ("attention.self.value", H, H),
                ("attention.output.dense", H, H),
                ("intermediate.dense", I, H),
                ("output.dense", H, I),
            ] {
                shapes.push((format!("{lp}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("{lp}.{name}.bias"), vec![out]));
            }
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{lp}.{norm}.weight"), vec![H]));
                shapes.push((format!("{lp}.{norm}.bias"), vec![H]));
            }
        }
        let tensors: Vec<(String, LazyTensor)> = shapes
            .into_iter()
            .enumerate()
            .map(|(seed, (name, shape))| {
                let n = shape.iter().product();
                let is_norm_weight = name.contains("LayerNorm.weight");
                let t = LazyTensor::f32(shape, move || {
                    let v = values(seed as u64, n, 0.5);
                    if is_norm_weight {
                        v.iter().map(|x| 1.0 + x).collect()
                    } else {
                        v
                    }
                });
                (format!("{prefix}{name}"), t)
            })
            .collect();
        write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
    }

    fn tiny(prefix: &str) -> (tempfile::TempDir, Checkpoint) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), prefix, &config_json("gelu", 4, ""));
        let ck = Checkpoint::open(dir.path()).unwrap();
        (dir, ck)
    }

    fn ids(rows: &[&[u32]]) -> (Tensor, Tensor) {
        let t = rows.iter().map(|r| r.len()).max().unwrap();
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for r in rows {
            for j in 0..t {
                ids.push(r.get(j).copied().unwrap_or(0));
                mask.push(u32::from(j < r.len()));
            }
        }
        let dev = Device::Cpu;
        (
            Tensor::from_vec(ids, (rows.len(), t), &dev).unwrap(),
            Tensor::from_vec(mask, (rows.len(), t), &dev).unwrap(),
        )
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2().unwrap()
    }

    #[test]
    fn padding_a_sequence_does_not_change_its_embedding() {
        let (_dir, ck) = tiny("");
        let bert = Bert::load(&ck).unwrap();
        let short: &[u32] = &[2, 17, 33, 5, 3];
        let long: &[u32] = &[2, 9, 41, 8, 12, 30, 7, 44, 3];
        let (a_ids, a_mask) = ids(&[short]);
        let alone = rows(&bert.embed(&a_ids, &a_mask).unwrap());
        let (b_ids, b_mask) = ids(&[long, short]);
        let batched = rows(&bert.embed(&b_ids, &b_mask).unwrap());
        assert_eq!(batched.len(), 2);
        let diff = alone[0]
            .iter()
            .zip(&batched[1])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "padding changed the embedding by {diff}");
        let norm: f32 = batched[1].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        // What sits under the padding is ignored; a changed real token is not.
        let with_pad = |tail: u32, first: u32| {
            let row: Vec<u32> = (0..long.len())
                .map(|j| match j {
                    0 => first,
                    j if j < short.len() => short[j],
                    _ => tail,
                })
                .collect();
            let ids = Tensor::cat(
                &[
                    b_ids.narrow(0, 0, 1).unwrap(),
                    Tensor::from_vec(row, (1, long.len()), &Device::Cpu).unwrap(),
                ],
                0,
            )
            .unwrap();
            rows(&bert.embed(&ids, &b_mask).unwrap()).remove(1)
        };
        assert_eq!(with_pad(40, short[0]), with_pad(0, short[0]));
        assert_ne!(with_pad(0, 11), with_pad(0, short[0]));
    }

    #[test]
    fn all_padding_row_gives_zeros_not_nan() {
        let (_dir, ck) = tiny("");
        let bert = Bert::load(&ck).unwrap();
        let (ids, _) = ids(&[&[2, 3, 4]]);
        let mask = Tensor::zeros((1, 3), DType::U32, &Device::Cpu).unwrap();
        let e = rows(&bert.embed(&ids, &mask).unwrap());
        assert!(e[0].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn bert_prefix_loads_and_linears_follow_the_forward_order() {
        let (_dir, ck) = tiny("bert.");
        let bert = Bert::load(&ck).unwrap();
        let names: Vec<&str> = bert.linears().iter().map(|l| l.name()).collect();
        assert_eq!(names.len(), LAYERS * 6);
        assert_eq!(names[0], "bert.encoder.layer.0.attention.self.query.weight");
        assert_eq!(names[11], "bert.encoder.layer.1.output.dense.weight");
        // The same list the architecture module reports as quantizable.
        let expected: Vec<String> = arch::matmul_weights(&ck, Some(Family::Bert))
            .into_iter()
            .map(|w| w.name)
            .collect();
        assert_eq!(names, expected);
        assert_eq!(bert.linears()[4].shape(), (I, H));
        // A prefixed and an unprefixed copy of the same weights compute the same thing.
        let (_d2, plain) = tiny("");
        let plain = Bert::load(&plain).unwrap();
        let (i, m) = ids(&[&[2, 10, 20, 3]]);
        assert_eq!(
            rows(&bert.embed(&i, &m).unwrap()),
            rows(&plain.embed(&i, &m).unwrap())
        );
    }

    #[test]
    fn too_long_or_out_of_vocab_input_is_an_error_not_a_panic() {
        let (_dir, ck) = tiny("");
        let bert = Bert::load(&ck).unwrap();
        let long = Tensor::zeros((1, 33), DType::U32, &Device::Cpu).unwrap();
        let err = bert.forward(&long, &long.ones_like().unwrap()).unwrap_err();
        assert!(err.to_string().contains("max_position_embeddings"), "{err}");
        let (oov, mask) = ids(&[&[2, VOCAB as u32, 3]]);
        assert!(bert.forward(&oov, &mask).is_err());
    }

    fn load_err(config: &str) -> Error {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), "", config);
        let ck = Checkpoint::open(dir.path()).unwrap();
        match Bert::load(&ck) {
            Ok(_) => panic!("config accepted: {config}"),
            Err(e) => e,
        }
    }

    #[test]
    fn unsupported_configs_are_rejected_naming_config_json() {
        let e = load_err(&config_json("relu", 4, ""));
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("config.json") && msg.contains("relu"), "{msg}");
        assert!(
            msg.contains("gelu_new") && msg.contains("gelu_pytorch_tanh"),
            "{msg}"
        );

        let e = load_err(&config_json(
            "gelu",
            4,
            r#", "position_embedding_type": "relative_key""#,
        ));
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("relative_key"), "{e}");

        let e = load_err(&config_json("gelu", 3, ""));
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("divisible"), "{e}");

        let e = load_err(&config_json("gelu", 0, ""));
        assert!(e.to_string().contains("num_attention_heads is 0"), "{e}");
    }

    #[test]
    fn tanh_gelu_is_accepted_and_differs_from_exact_gelu() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny(dir.path(), "", &config_json("gelu_new", 4, ""));
        let approx = Bert::load(&Checkpoint::open(dir.path()).unwrap()).unwrap();
        let (_d, exact) = tiny("");
        let exact = Bert::load(&exact).unwrap();
        let (i, m) = ids(&[&[2, 10, 20, 3]]);
        let a = rows(&approx.embed(&i, &m).unwrap());
        let e = rows(&exact.embed(&i, &m).unwrap());
        let diff = a[0]
            .iter()
            .zip(&e[0])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff > 0.0 && diff < 1e-2, "{diff}");
    }
}
