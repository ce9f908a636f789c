//! The Llama family (Llama, Mistral, Qwen2, SmolLM2) as an ONNX graph computing what
//! `model::llama` computes: token ids `[batch, seq]` in, logits `[batch, seq, vocab]` out, no
//! cache. RoPE angles and the causal (and sliding-window) mask are built from the sequence
//! length at run time, so any length runs.

use super::blocks::Blocks;
use super::graph::{Attr, Dim};
use super::weights::Layout;
use crate::error::Result;
use crate::model::llama::LlamaConfig;
use crate::packed::Packed;
use onnx_protobuf::tensor_proto::DataType;

/// What every layer shares: the per-sequence RoPE tables and mask, and the norm's epsilon.
struct Shared {
    cos: String,
    sin: String,
    mask: String,
    eps: String,
}

struct Builder<'a, 'c> {
    b: Blocks<'a>,
    config: &'c LlamaConfig,
}

impl Builder<'_, '_> {
    /// `x` normalised by its root mean square and scaled by `weight` (RMSNorm).
    fn rms_norm(&mut self, x: &str, weight: &str, s: &Shared) -> Result<String> {
        let w = self.b.weight(weight, Layout::Rows)?;
        let g = &mut self.b.g;
        let sq = g.op("Mul", &[x, x], vec![], "sq");
        let ms = g.op(
            "ReduceMean",
            &[&sq, "axes_last"],
            vec![("keepdims", Attr::Int(1))],
            "ms",
        );
        let var = g.op("Add", &[&ms, &s.eps], vec![], "var");
        let rms = g.op("Sqrt", &[&var], vec![], "rms");
        let n = g.op("Div", &[x, &rms], vec![], "normed");
        Ok(g.op("Mul", &[&n, &w], vec![], "norm"))
    }

    /// Rotary embedding of `x` `[b, h, s, hd]`: its halves rotated by the angles (candle's
    /// `rope`, the layout of Hugging Face checkpoints).
    fn rope(&mut self, x: &str, s: &Shared) -> String {
        let half = self.config.head_dim() as i64 / 2;
        let g = &mut self.b.g;
        let (lo, hi, end) = (
            g.i64s(&format!("{x}_lo"), &[0]),
            g.i64s(&format!("{x}_hi"), &[half]),
            g.i64s(&format!("{x}_end"), &[2 * half]),
        );
        let x1 = g.op("Slice", &[x, &lo, &hi, "axis_3"], vec![], "x1");
        let x2 = g.op("Slice", &[x, &hi, &end, "axis_3"], vec![], "x2");
        let a = g.op("Mul", &[&x1, &s.cos], vec![], "x1c");
        let b = g.op("Mul", &[&x2, &s.sin], vec![], "x2s");
        let o1 = g.op("Sub", &[&a, &b], vec![], "o1");
        let c = g.op("Mul", &[&x2, &s.cos], vec![], "x2c");
        let d = g.op("Mul", &[&x1, &s.sin], vec![], "x1s");
        let o2 = g.op("Add", &[&c, &d], vec![], "o2");
        g.op("Concat", &[&o1, &o2], vec![("axis", Attr::Int(3))], "roped")
    }

    /// Key/value heads repeated for their query heads: `[b, kv, s, hd]` -> `[b, heads, s, hd]`.
    fn repeat_kv(&mut self, x: &str) -> String {
        let c = self.config;
        let rep = c.num_attention_heads / c.kv_heads();
        if rep == 1 {
            return x.to_string();
        }
        let g = &mut self.b.g;
        let expand = g.i64s(&format!("{x}_rep"), &[1, 1, rep as i64, 1, 1]);
        let merged = g.i64s(
            &format!("{x}_merged"),
            &[0, c.num_attention_heads as i64, -1, c.head_dim() as i64],
        );
        let u = g.op("Unsqueeze", &[x, "axis_2"], vec![], "kv1");
        let e = g.op("Expand", &[&u, &expand], vec![], "kvrep");
        g.op("Reshape", &[&e, &merged], vec![], "kv")
    }

    fn layer(&mut self, h: &str, i: usize, s: &Shared) -> Result<String> {
        let c = self.config;
        let p = format!("model.layers.{i}");
        let (heads, kv, hd) = (c.num_attention_heads, c.kv_heads(), c.head_dim());
        let n = self.rms_norm(h, &format!("{p}.input_layernorm.weight"), s)?;
        let q = self.b.linear(&n, &format!("{p}.self_attn.q_proj"))?;
        let k = self.b.linear(&n, &format!("{p}.self_attn.k_proj"))?;
        let v = self.b.linear(&n, &format!("{p}.self_attn.v_proj"))?;
        let (q, k, v) = (
            self.b.heads(&q, heads, hd),
            self.b.heads(&k, kv, hd),
            self.b.heads(&v, kv, hd),
        );
        let (q, k) = (self.rope(&q, s), self.rope(&k, s));
        let (k, v) = (self.repeat_kv(&k), self.repeat_kv(&v));
        let ctx = self.b.attention(&q, &k, &v, &s.mask, heads * hd, hd);
        let o = self.b.linear(&ctx, &format!("{p}.self_attn.o_proj"))?;
        let h = self.b.g.op("Add", &[h, &o], vec![], "resid");

        let n = self.rms_norm(&h, &format!("{p}.post_attention_layernorm.weight"), s)?;
        let gate = self.b.linear(&n, &format!("{p}.mlp.gate_proj"))?;
        let up = self.b.linear(&n, &format!("{p}.mlp.up_proj"))?;
        let g = &mut self.b.g;
        let sig = g.op("Sigmoid", &[&gate], vec![], "sig");
        let silu = g.op("Mul", &[&gate, &sig], vec![], "silu");
        let act = g.op("Mul", &[&silu, &up], vec![], "act");
        let down = self.b.linear(&act, &format!("{p}.mlp.down_proj"))?;
        Ok(self.b.g.op("Add", &[&h, &down], vec![], "resid"))
    }
}

/// Builds the graph of the Llama-family model in `packed` (configured by `config`).
pub fn build<'a>(packed: &'a Packed, config: &LlamaConfig) -> Result<Blocks<'a>> {
    let mut b = Builder {
        b: Blocks::new(packed),
        config,
    };
    let zero = b.b.scalar_i64("zero", 0);
    let one = b.b.scalar_i64("one", 1);
    let window = config.window().map(|w| b.b.scalar_i64("window", w as i64));
    let g = &mut b.b.g;
    g.input(
        "input_ids",
        DataType::INT64,
        &[Dim::Named("batch"), Dim::Named("sequence")],
    );
    let eps = g.f32s("rms_norm_eps", &[], &[config.rms_norm_eps as f32]);
    let neg_inf = g.f32s("neg_inf", &[], &[f32::NEG_INFINITY]);
    let inv = config.inv_freq();
    let inv_freq = g.f32s("inv_freq", &[1, inv.len()], &inv);

    // Positions 0..seq, their RoPE angles and the causal mask.
    let shape = g.op("Shape", &["input_ids"], vec![], "ids_shape");
    let seq = g.op(
        "Gather",
        &[&shape, &one],
        vec![("axis", Attr::Int(0))],
        "seq",
    );
    let pos = g.op("Range", &[&zero, &seq, &one], vec![], "pos");
    let to_float = vec![("to", Attr::Int(DataType::FLOAT as i64))];
    let posf = g.op("Cast", &[&pos], to_float, "posf");
    let col = g.op("Unsqueeze", &[&posf, "axis_1"], vec![], "pos_col");
    let angles = g.op("Mul", &[&col, &inv_freq], vec![], "angles");
    let cos = g.op("Cos", &[&angles], vec![], "cos");
    let sin = g.op("Sin", &[&angles], vec![], "sin");
    let rows = g.op("Unsqueeze", &[&pos, "axis_1"], vec![], "rows");
    let cols = g.op("Unsqueeze", &[&pos, "axis_0"], vec![], "cols");
    let diff = g.op("Sub", &[&rows, &cols], vec![], "diff");
    let mut hidden = g.op("Less", &[&diff, &zero], vec![], "future");
    if let Some(window) = window {
        let far = g.op("GreaterOrEqual", &[&diff, &window], vec![], "far");
        hidden = g.op("Or", &[&hidden, &far], vec![], "hidden");
    }
    let zero_f = g.f32s("mask_zero", &[], &[0.0]);
    let mask = g.op("Where", &[&hidden, &neg_inf, &zero_f], vec![], "mask");
    let s = Shared {
        cos,
        sin,
        mask,
        eps,
    };

    let embed = b.b.weight("model.embed_tokens.weight", Layout::Rows)?;
    let mut h = b.b.g.op(
        "Gather",
        &[&embed, "input_ids"],
        vec![("axis", Attr::Int(0))],
        "embedded",
    );
    for i in 0..config.num_hidden_layers {
        h = b.layer(&h, i, &s)?;
    }
    let n = b.rms_norm(&h, "model.norm.weight", &s)?;
    let logits = if config.tie_word_embeddings {
        // The table as stored, [vocab, hidden], multiplied transposed by Gemm: a Transpose
        // node on a per-row dequantized table trips onnxruntime's layout optimizer.
        let n = b.b.input(&n, "model.embed_tokens.weight");
        let g = &mut b.b.g;
        let rows = g.i64s("head_rows", &[-1, config.hidden_size as i64]);
        let vocab = g.i64s("head_vocab", &[config.vocab_size as i64]);
        let flat = g.op("Reshape", &[&n, &rows], vec![], "head_in");
        let y = g.op(
            "Gemm",
            &[&flat, &embed],
            vec![("transB", Attr::Int(1))],
            "head",
        );
        let shape = g.op(
            "Concat",
            &[&shape, &vocab],
            vec![("axis", Attr::Int(0))],
            "logits_shape",
        );
        g.op("Reshape", &[&y, &shape], vec![], "logits")
    } else {
        b.b.linear(&n, "lm_head")?
    };
    b.b.g.output(
        &logits,
        "logits",
        DataType::FLOAT,
        &[
            Dim::Named("batch"),
            Dim::Named("sequence"),
            Dim::Fixed(config.vocab_size as i64),
        ],
    );
    Ok(b.b)
}
