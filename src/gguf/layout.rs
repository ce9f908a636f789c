//! How llama.cpp lays out a Llama-family model in GGUF, shared by `import` (GGUF -> HF) and
//! the GGUF writer (HF -> GGUF): tensor names and the Q/K row permutation for its RoPE.
//!
//! llama.cpp's converter permutes the rows of Q and K (weights and biases) for its interleaved
//! RoPE; HF models rotate halves. Within each head of size `d`, HF row `j * d/2 + i` is GGUF row
//! `2i + j`.

/// Tensor names outside the layer stack: (GGUF, HF).
const FIXED: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer roles: (GGUF `blk.N.<role>`, HF `model.layers.N.<role>`).
const LAYER_ROLES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Which side of the name mapping a name is spelled in.
#[derive(Clone, Copy)]
enum Side {
    Gguf,
    Hf,
}

/// Maps `name` from spelling `from` to the other one through the two tables.
fn translate(name: &str, from: Side) -> Option<String> {
    let pick = |pair: &(&'static str, &'static str), side: Side| match side {
        Side::Gguf => pair.0,
        Side::Hf => pair.1,
    };
    let to = match from {
        Side::Gguf => Side::Hf,
        Side::Hf => Side::Gguf,
    };
    if let Some(pair) = FIXED.iter().find(|p| pick(p, from) == name) {
        return Some(pick(pair, to).to_string());
    }
    let layer_prefix = |side: Side| match side {
        Side::Gguf => "blk.",
        Side::Hf => "model.layers.",
    };
    let rest = name.strip_prefix(layer_prefix(from))?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = canonical_index(layer)?;
    let (role, kind) = rest.rsplit_once('.')?;
    let pair = LAYER_ROLES.iter().find(|p| pick(p, from) == role)?;
    matches!(kind, "weight" | "bias")
        .then(|| format!("{}{layer}.{}.{kind}", layer_prefix(to), pick(pair, to)))
}

/// `digits` as a layer index if written the one way Rust prints it (`7`, not `07` or `+7`), so
/// two names never map to one.
fn canonical_index(digits: &str) -> Option<usize> {
    digits
        .parse()
        .ok()
        .filter(|l: &usize| l.to_string() == digits)
}

/// The layer a GGUF tensor name is in (`blk.3.attn_q.weight` -> 3), `None` outside the layers.
pub fn gguf_layer(name: &str) -> Option<usize> {
    let (layer, _) = name.strip_prefix("blk.")?.split_once('.')?;
    canonical_index(layer)
}

/// The GGUF roles of a layer's weights (`attn_norm`, `attn_q`, ..., `ffn_down`): every Llama
/// layer has a `blk.N.<role>.weight` for each.
pub fn gguf_layer_roles() -> impl Iterator<Item = &'static str> {
    LAYER_ROLES.iter().map(|(gguf, _)| *gguf)
}

/// The HF Llama name for a GGUF tensor name (`blk.3.attn_q.weight` ->
/// `model.layers.3.self_attn.q_proj.weight`).
pub fn hf_name(gguf: &str) -> Option<String> {
    translate(gguf, Side::Gguf)
}

/// The GGUF name for an HF Llama tensor name (the inverse of [`hf_name`]).
pub fn gguf_name(hf: &str) -> Option<String> {
    translate(hf, Side::Hf)
}

/// Heads whose rows llama.cpp permutes in HF tensor `hf`: Q and K (weights and biases) of the
/// `llama` GGUF architecture only (`qwen2` keeps HF's order).
pub fn permuted_heads(arch: &str, hf: &str, heads: usize, kv_heads: usize) -> Option<usize> {
    if arch != "llama" {
        None
    } else if hf.contains(".self_attn.q_proj.") {
        Some(heads)
    } else if hf.contains(".self_attn.k_proj.") {
        Some(kv_heads)
    } else {
        None
    }
}

/// Applies llama.cpp's `permute` to HF rows (for export): HF row `j * d/2 + i` of each head
/// becomes GGUF row `2i + j`. Works for weights (rows of `values.len() / (heads * d)` columns)
/// and biases (one column).
pub fn permute_rows(values: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    move_rows(values, heads, head_dim, Order::Gguf)
}

/// Undoes llama.cpp's `permute` (for import): GGUF row `2i + j` of each head becomes HF row
/// `j * d/2 + i`.
pub fn unpermute_rows(values: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    move_rows(values, heads, head_dim, Order::Hf)
}

/// The row order of Q and K within each head.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Hugging Face's: the two rotated halves one after the other.
    Hf,
    /// llama.cpp's: the halves interleaved.
    Gguf,
}

/// Rows of `values` rearranged into the order `to` (from the other one).
fn move_rows(values: &[f32], heads: usize, head_dim: usize, to: Order) -> Vec<f32> {
    let cols = values.len() / (heads * head_dim).max(1);
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let gguf = (h * head_dim + 2 * i + j) * cols;
                let hf = (h * head_dim + j * half + i) * cols;
                let (src, dst) = match to {
                    Order::Gguf => (hf, gguf),
                    Order::Hf => (gguf, hf),
                };
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

/// The inverse against llama.cpp's `permute` (weights and biases) is tested end to end in
/// tests/suite/import.rs, with an independent transcription of it.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_gguf_names_to_hf_names_and_back() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").as_deref(),
            Some("model.layers.0.self_attn.k_proj.bias")
        );
        assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
        assert_eq!(hf_name("blk.0.attn_q.scale"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        for alias in ["blk.01.attn_q.weight", "blk.+1.attn_q.weight"] {
            assert_eq!(hf_name(alias), None, "{alias}");
            assert_eq!(gguf_layer(alias), None, "{alias}");
        }
        assert_eq!(gguf_layer("blk.10.ffn_up.weight"), Some(10));
        assert_eq!(gguf_layer("output.weight"), None);
        assert_eq!(
            gguf_name("model.layers.7.mlp.down_proj.weight").as_deref(),
            Some("blk.7.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
            None
        );
        assert_eq!(gguf_name("blk.0.attn_q.weight"), None);
        for layer in [0, 31] {
            for (g, _) in LAYER_ROLES {
                let name = format!("blk.{layer}.{g}.weight");
                assert_eq!(hf_name(&name).and_then(|h| gguf_name(&h)), Some(name));
            }
        }
        for (g, h) in FIXED {
            assert_eq!(gguf_name(h).as_deref(), Some(g));
        }
    }

    #[test]
    fn permute_and_unpermute_are_inverse() {
        // 2 heads of size 4, 3 columns.
        let values: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let permuted = permute_rows(&values, 2, 4);
        // Head 0, HF rows (0, 1 | 2, 3) -> GGUF rows 0, 2, 1, 3.
        assert_eq!(
            &permuted[..12],
            &[0., 1., 2., 6., 7., 8., 3., 4., 5., 9., 10., 11.]
        );
        assert_eq!(unpermute_rows(&permuted, 2, 4), values);
    }
}
