//! Synthetic checkpoints with a real Llama layout and deterministic weights, written through
//! qpipe's own lazy safetensors writer. Shared by tests, benches and examples via `#[path]`.
#![allow(dead_code)]

use qpipe::checkpoint::write::{write_safetensors, LazyTensor};
use qpipe::checkpoint::Dtype;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// Shape of a synthetic Llama-style checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct LlamaSpec {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub tied: bool,
    pub dtype: Dtype,
}

impl LlamaSpec {
    /// A tiny spec for fast tests: 2 layers, hidden 64.
    pub fn tiny() -> Self {
        LlamaSpec {
            layers: 2,
            hidden: 64,
            intermediate: 160,
            heads: 4,
            kv_heads: 2,
            vocab: 256,
            tied: true,
            dtype: Dtype::F32,
        }
    }

    /// Every tensor name and shape, in forward order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, kv) = (
            self.hidden,
            self.intermediate,
            self.hidden / self.heads * self.kv_heads,
        );
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tied {
            out.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        }
        out
    }

    pub fn config_json(&self) -> String {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 2048,
            "tie_word_embeddings": self.tied,
        })
        .to_string()
    }
}

/// Deterministic N(0, std) values seeded by `seed` (Box-Muller over StdRng).
pub fn normal_values(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let t = 2.0 * std::f32::consts::PI * u2;
        out.push(r * t.cos());
        out.push(r * t.sin());
    }
    out.truncate(n);
    out
}

/// Encodes f32 values in `dtype` (F32, F16 or BF16), little-endian.
pub fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    qpipe::checkpoint::FloatType::from_dtype(dtype)
        .unwrap_or_else(|| panic!("fixture cannot encode {dtype:?}"))
        .encode(values)
}

/// Writes `model.safetensors` + `config.json` for `spec` into `dir`; norms are 1, the rest
/// N(0, 0.02). Tensor bytes are generated one at a time while writing.
pub fn write_llama(dir: &Path, spec: &LlamaSpec, seed: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let tensors: Vec<(String, LazyTensor)> = spec
        .tensors()
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let norm = name.contains("norm");
            let dtype = spec.dtype;
            let lazy = LazyTensor::new(dtype, shape, move || {
                let v = if norm {
                    vec![1.0; n]
                } else {
                    normal_values(n, 0.02, seed + k as u64)
                };
                encode(&v, dtype)
            });
            (name, lazy)
        })
        .collect();
    let path = dir.join("model.safetensors");
    write_safetensors(&path, &tensors, None).unwrap();
    std::fs::write(dir.join("config.json"), spec.config_json()).unwrap();
    path
}
