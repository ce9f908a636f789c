//! BERT encoders (MiniLM) as an ONNX graph computing what `model::bert` computes: token ids and
//! the attention mask `[batch, seq]` in; the last hidden states and the sentence embeddings
//! (masked mean, L2-normalised, as sentence-transformers pools) out. Every token is segment 0.

use super::blocks::Blocks;
use super::graph::{Attr, Dim};
use super::weights::Layout;
use crate::error::Result;
use crate::model::bert::{Activation, BertConfig};
use crate::packed::Packed;
use onnx_protobuf::tensor_proto::DataType;

/// LayerNormalization of `x` over its last axis with `{prefix}.weight` and `{prefix}.bias`.
fn layer_norm(b: &mut Blocks, x: &str, prefix: &str, eps: f32) -> Result<String> {
    let w = b.weight(&format!("{prefix}.weight"), Layout::Rows)?;
    let bias = b.weight(&format!("{prefix}.bias"), Layout::Rows)?;
    Ok(b.g.op(
        "LayerNormalization",
        &[x, &w, &bias],
        vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        "ln",
    ))
}

/// Builds the graph of the BERT encoder in `packed` (configured by `config`, whose feed-forward
/// activation is `act`).
pub fn build<'a>(packed: &'a Packed, config: &BertConfig, act: Activation) -> Result<Blocks<'a>> {
    let mut b = Blocks::new(packed);
    let p = if b.has("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let (h, heads) = (config.hidden_size, config.num_attention_heads);
    let hd = h / heads;
    let eps = config.layer_norm_eps as f32;
    let batch_seq = [Dim::Named("batch"), Dim::Named("sequence")];
    b.g.input("input_ids", DataType::INT64, &batch_seq);
    b.g.input("attention_mask", DataType::INT64, &batch_seq);
    let zero = b.scalar_i64("zero", 0);
    let one = b.scalar_i64("one", 1);

    // Embeddings: (word + token type 0) + position, LayerNorm'd.
    let e = format!("{p}embeddings");
    let word = b.weight(&format!("{e}.word_embeddings.weight"), Layout::Rows)?;
    let segment = b.weight(&format!("{e}.token_type_embeddings.weight"), Layout::Rows)?;
    let position = b.weight(&format!("{e}.position_embeddings.weight"), Layout::Rows)?;
    let g = &mut b.g;
    let gather0 = || vec![("axis", Attr::Int(0))];
    let words = g.op("Gather", &[&word, "input_ids"], gather0(), "words");
    let seg = g.op("Gather", &[&segment, &zero], gather0(), "segment");
    let shape = g.op("Shape", &["input_ids"], vec![], "ids_shape");
    let seq = g.op("Gather", &[&shape, &one], gather0(), "seq");
    let pos = g.op("Range", &[&zero, &seq, &one], vec![], "pos");
    let positions = g.op("Gather", &[&position, &pos], gather0(), "positions");
    let x = g.op("Add", &[&words, &seg], vec![], "x");
    let x = g.op("Add", &[&x, &positions], vec![], "x");
    let mut x = layer_norm(&mut b, &x, &format!("{e}.LayerNorm"), eps)?;

    // HF's additive mask: 0 for tokens, the most negative f32 for padding keys.
    let g = &mut b.g;
    let to_float = || vec![("to", Attr::Int(DataType::FLOAT as i64))];
    let m = g.op("Cast", &["attention_mask"], to_float(), "maskf");
    let one_f = g.f32s("one_f", &[], &[1.0]);
    let min = g.f32s("f32_min", &[], &[f32::MIN]);
    let padding = g.op("Sub", &[&one_f, &m], vec![], "padding");
    let additive = g.op("Mul", &[&padding, &min], vec![], "additive");
    let axes_12 = g.i64s("axes_12", &[1, 2]);
    let mask = g.op("Unsqueeze", &[&additive, &axes_12], vec![], "mask");

    for i in 0..config.num_hidden_layers {
        let lp = format!("{p}encoder.layer.{i}");
        let q = b.linear(&x, &format!("{lp}.attention.self.query"))?;
        let k = b.linear(&x, &format!("{lp}.attention.self.key"))?;
        let v = b.linear(&x, &format!("{lp}.attention.self.value"))?;
        let (q, k, v) = (
            b.heads(&q, heads, hd),
            b.heads(&k, heads, hd),
            b.heads(&v, heads, hd),
        );
        let ctx = b.attention(&q, &k, &v, &mask, h, hd);
        let o = b.linear(&ctx, &format!("{lp}.attention.output.dense"))?;
        let sum = b.g.op("Add", &[&o, &x], vec![], "resid");
        let attn = layer_norm(
            &mut b,
            &sum,
            &format!("{lp}.attention.output.LayerNorm"),
            eps,
        )?;
        let inner = b.linear(&attn, &format!("{lp}.intermediate.dense"))?;
        let approximate = match act {
            Activation::GeluErf => "none",
            Activation::GeluTanh => "tanh",
        };
        let inner = b.g.op(
            "Gelu",
            &[&inner],
            vec![("approximate", Attr::String(approximate.into()))],
            "gelu",
        );
        let out = b.linear(&inner, &format!("{lp}.output.dense"))?;
        let sum = b.g.op("Add", &[&out, &attn], vec![], "resid");
        x = layer_norm(&mut b, &sum, &format!("{lp}.output.LayerNorm"), eps)?;
    }

    // Masked mean over tokens, then L2 normalisation (sentence-transformers' clamps).
    let g = &mut b.g;
    let m3 = g.op("Unsqueeze", &[&m, "axes_last"], vec![], "mask3");
    let masked = g.op("Mul", &[&x, &m3], vec![], "masked_hidden");
    let keep0 = || vec![("keepdims", Attr::Int(0))];
    let summed = g.op("ReduceSum", &[&masked, "axis_1"], keep0(), "summed");
    let count = g.op("ReduceSum", &[&m3, "axis_1"], keep0(), "count");
    let tiny = g.f32s("count_min", &[], &[1e-9]);
    let count = g.op("Max", &[&count, &tiny], vec![], "count");
    let mean = g.op("Div", &[&summed, &count], vec![], "mean");
    let sq = g.op("Mul", &[&mean, &mean], vec![], "sq");
    let ss = g.op(
        "ReduceSum",
        &[&sq, "axes_last"],
        vec![("keepdims", Attr::Int(1))],
        "ss",
    );
    let norm = g.op("Sqrt", &[&ss], vec![], "l2");
    let floor = g.f32s("norm_min", &[], &[1e-12]);
    let norm = g.op("Max", &[&norm, &floor], vec![], "l2");
    let embedding = g.op("Div", &[&mean, &norm], vec![], "embedding");
    g.output(
        &x,
        "last_hidden_state",
        DataType::FLOAT,
        &[
            Dim::Named("batch"),
            Dim::Named("sequence"),
            Dim::Fixed(h as i64),
        ],
    );
    g.output(
        &embedding,
        "sentence_embedding",
        DataType::FLOAT,
        &[Dim::Named("batch"), Dim::Fixed(h as i64)],
    );
    Ok(b)
}
