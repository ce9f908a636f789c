//! Architecture detection from config.json or tensor names, and the matmul weights per family.

use crate::checkpoint::Checkpoint;
use serde::Serialize;

/// Model families qpipe has forward passes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Decoder-only Llama family: Llama, Mistral, Qwen2, SmolLM2 (GQA, RoPE, RMSNorm, SwiGLU).
    Llama,
    /// BERT encoders (MiniLM and friends).
    Bert,
}

impl Family {
    /// Suffixes of the per-layer matmul weights, in forward order.
    pub fn matmul_roles(self) -> &'static [&'static str] {
        match self {
            Family::Llama => &[
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
                "self_attn.o_proj.weight",
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
            ],
            Family::Bert => &[
                "attention.self.query.weight",
                "attention.self.key.weight",
                "attention.self.value.weight",
                "attention.output.dense.weight",
                "intermediate.dense.weight",
                "output.dense.weight",
            ],
        }
    }

    /// Matmul weights outside the layer stack (an untied LM head).
    fn head_weights(self) -> &'static [&'static str] {
        match self {
            Family::Llama => &["lm_head.weight"],
            Family::Bert => &[],
        }
    }

    fn from_config_name(name: &str) -> Option<Family> {
        let n = name.to_ascii_lowercase();
        if ["llama", "mistral", "qwen2"]
            .iter()
            .any(|k| n.starts_with(k))
        {
            Some(Family::Llama)
        } else if n.starts_with("bert") {
            Some(Family::Bert)
        } else {
            None
        }
    }
}

/// Where the architecture was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectedFrom {
    /// config.json `architectures`.
    ConfigArchitectures,
    /// config.json `model_type`.
    ConfigModelType,
    /// Tensor naming conventions.
    TensorNames,
    /// Nothing matched.
    Unknown,
}

/// A detected architecture: the family qpipe supports (if any) and the name that identified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Architecture {
    /// Supported family, or None for an architecture qpipe cannot run.
    pub family: Option<Family>,
    /// Name as found (e.g. "LlamaForCausalLM"), or a description of the tensor-name match.
    pub name: String,
    /// Evidence used.
    pub detected_from: DetectedFrom,
}

/// Detects the architecture of `checkpoint`: config.json first, tensor names as the fallback.
pub fn detect(checkpoint: &Checkpoint) -> Architecture {
    if let Some(config) = checkpoint.config() {
        let archs = config.get("architectures").and_then(|a| a.as_array());
        if let Some(name) = archs.and_then(|a| a.first()).and_then(|n| n.as_str()) {
            return Architecture {
                family: Family::from_config_name(name),
                name: name.to_string(),
                detected_from: DetectedFrom::ConfigArchitectures,
            };
        }
        if let Some(name) = config.get("model_type").and_then(|n| n.as_str()) {
            return Architecture {
                family: Family::from_config_name(name),
                name: name.to_string(),
                detected_from: DetectedFrom::ConfigModelType,
            };
        }
    }
    for (family, probe) in [
        (Family::Llama, "self_attn.q_proj.weight"),
        (Family::Bert, "attention.self.query.weight"),
    ] {
        // A packed checkpoint stores a quantized weight as NAME.qweight (and its scales).
        let packed = format!("{probe}.qweight");
        if checkpoint
            .tensors()
            .any(|t| t.name.ends_with(probe) || t.name.ends_with(&packed))
        {
            return Architecture {
                family: Some(family),
                name: format!("{family:?} (tensor names)").to_lowercase(),
                detected_from: DetectedFrom::TensorNames,
            };
        }
    }
    Architecture {
        family: None,
        name: "unknown".into(),
        detected_from: DetectedFrom::Unknown,
    }
}

/// One weight matrix that quantization acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatmulWeight {
    /// Tensor name in the checkpoint.
    pub name: String,
    /// Layer index, or None for weights outside the layer stack.
    pub layer: Option<usize>,
    /// Role within the layer, e.g. "self_attn.q_proj".
    pub role: String,
    /// Shape as stored ([out, in]).
    pub shape: Vec<usize>,
}

/// The layer index in a name like `model.layers.12.mlp.up_proj.weight`, and the suffix after it.
fn split_layer(name: &str) -> Option<(usize, &str)> {
    let mut rest = name;
    while let Some(dot) = rest.find('.') {
        let (head, tail) = (&rest[..dot], &rest[dot + 1..]);
        if matches!(head, "layers" | "layer" | "h" | "blocks") {
            let end = tail.find('.')?;
            let idx = tail[..end].parse().ok()?;
            return Some((idx, &tail[end + 1..]));
        }
        rest = tail;
    }
    None
}

/// The matmul weights of `checkpoint` for `family`, sorted by layer then forward order.
///
/// With no family, falls back to a heuristic: 2-D `.weight` tensors inside numbered layers that
/// are not norms or embeddings.
pub fn matmul_weights(checkpoint: &Checkpoint, family: Option<Family>) -> Vec<MatmulWeight> {
    let mut out: Vec<(usize, MatmulWeight)> = Vec::new();
    for t in checkpoint.tensors() {
        if t.shape.len() != 2 {
            continue;
        }
        let found = match (split_layer(t.name), family) {
            (Some((layer, suffix)), Some(f)) => f
                .matmul_roles()
                .iter()
                .position(|r| *r == suffix)
                .map(|rank| (Some(layer), rank, suffix)),
            (None, Some(f)) => f
                .head_weights()
                .iter()
                .find(|h| t.name == **h)
                .map(|h| (None, usize::MAX, *h)),
            (Some((layer, suffix)), None) => {
                let lower = suffix.to_ascii_lowercase();
                let generic = suffix.ends_with(".weight")
                    && !["norm", "ln", "embed"].iter().any(|k| lower.contains(k));
                generic.then_some((Some(layer), 0, suffix))
            }
            (None, None) => None,
        };
        if let Some((layer, rank, suffix)) = found {
            out.push((
                rank,
                MatmulWeight {
                    name: t.name.to_string(),
                    layer,
                    role: suffix.trim_end_matches(".weight").to_string(),
                    shape: t.shape.to_vec(),
                },
            ));
        }
    }
    // Layers in order, then the family's forward order; weights outside the stack last.
    out.sort_by_key(|(rank, w)| (w.layer.unwrap_or(usize::MAX), *rank));
    out.into_iter().map(|(_, w)| w).collect()
}

#[cfg(test)]
mod tests {
    use super::split_layer;

    #[test]
    fn splits_layer_index_from_hf_names() {
        assert_eq!(
            split_layer("model.layers.12.mlp.up_proj.weight"),
            Some((12, "mlp.up_proj.weight"))
        );
        assert_eq!(
            split_layer("bert.encoder.layer.3.attention.self.query.weight"),
            Some((3, "attention.self.query.weight"))
        );
        assert_eq!(split_layer("model.embed_tokens.weight"), None);
        assert_eq!(split_layer("model.layers.x.mlp.weight"), None);
    }
}
