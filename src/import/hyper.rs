//! The model's hyper-parameters from GGUF metadata, each checked on its own (counts at least 1,
//! floats finite and above 0, a sane context) and against the tensors they shape (the layers
//! present, every tensor's shape, the tensors every Llama needs), so an inconsistent file fails
//! before anything is dequantized or written.

use crate::error::{Error, Result};
use crate::gguf::layout::{gguf_layer, gguf_layer_roles, hf_name};
use crate::gguf::reader::Header;
use candle_core::quantized::gguf_file::Value;
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

/// GGUF architectures that import to HF Llama-family checkpoints.
const SUPPORTED: &[&str] = &["llama", "qwen2"];
/// The longest context accepted (16 Mi positions; the longest published is 10 M).
const MAX_CONTEXT: usize = 1 << 24;
/// `rope.freq_base` when the metadata has none (llama.cpp's default).
const DEFAULT_ROPE_THETA: f32 = 10_000.0;
/// `context_length` when the metadata has none.
const DEFAULT_CONTEXT: usize = 2048;

/// The model hyper-parameters read from GGUF metadata and the tensors.
#[derive(Debug)]
pub(super) struct Hyper {
    /// `general.architecture`.
    pub(super) arch: String,
    /// Layers (`block_count`).
    pub(super) layers: usize,
    /// Hidden size (`embedding_length`).
    pub(super) hidden: usize,
    /// MLP inner size (`feed_forward_length`).
    pub(super) ffn: usize,
    /// Query heads.
    pub(super) heads: usize,
    /// Key/value heads.
    pub(super) kv_heads: usize,
    /// Size of one head.
    pub(super) head_dim: usize,
    /// RMSNorm epsilon.
    pub(super) eps: f32,
    /// RoPE base frequency.
    pub(super) rope_theta: f32,
    /// Context length.
    pub(super) context: usize,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub(super) vocab: usize,
    /// Whether the output head is the embedding (no `output.weight`).
    pub(super) tied: bool,
}

/// Reads the hyper-parameters of the model in `header` (the GGUF file `path`) and checks them
/// against each other and against every tensor's shape.
pub(super) fn read(header: &Header, path: &Path) -> Result<Hyper> {
    let arch = match header.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(Error::invalid(
                path,
                "no general.architecture in the metadata",
            ))
        }
    };
    if !SUPPORTED.contains(&arch.as_str()) {
        return Err(Error::unsupported(
            path,
            format!(
                "GGUF architecture '{arch}' cannot be imported (supported: {})",
                SUPPORTED.join(", ")
            ),
        ));
    }
    let meta = Meta { header, path, arch };
    let layers = meta.required_count("block_count")?;
    check_layers(header, path, &meta.key("block_count"), layers)?;

    let embd = header
        .tensor("token_embd.weight")
        .ok_or_else(|| Error::invalid(path, "no token_embd.weight tensor"))?;
    let hidden = meta.required_count("embedding_length")?;
    let &[vocab, width] = embd.shape.as_slice() else {
        return Err(Error::invalid(
            path,
            format!(
                "tensor 'token_embd.weight' has shape {:?}; expected [vocabulary, {}]",
                embd.shape,
                meta.key("embedding_length")
            ),
        ));
    };
    if width != hidden {
        return Err(Error::invalid(
            path,
            format!(
                "{} is {hidden} but token_embd.weight has shape {:?}",
                meta.key("embedding_length"),
                embd.shape
            ),
        ));
    }
    let ffn = meta.required_count("feed_forward_length")?;
    let heads = meta.required_count("attention.head_count")?;
    let kv_heads = meta.count("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = match meta.count("attention.key_length")? {
        Some(d) => d,
        None if hidden % heads == 0 => hidden / heads,
        None => {
            return Err(Error::invalid(
                path,
                format!(
                    "{} {hidden} is not a multiple of {} {heads} (and {} is not given)",
                    meta.key("embedding_length"),
                    meta.key("attention.head_count"),
                    meta.key("attention.key_length"),
                ),
            ))
        }
    };
    if heads % kv_heads != 0 || head_dim % 2 != 0 || heads.checked_mul(head_dim).is_none() {
        return Err(Error::invalid(
            path,
            format!(
                "inconsistent heads: {heads} query, {kv_heads} key/value, head size {head_dim}"
            ),
        ));
    }
    if let Some(Value::String(s)) = header
        .get(&meta.key("rope.scaling.type"))
        .filter(|v| !matches!(v, Value::String(s) if s == "none"))
    {
        return Err(Error::unsupported(
            path,
            format!("RoPE scaling '{s}' cannot be imported yet"),
        ));
    }
    let eps = meta
        .positive_float("attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| {
            Error::invalid(
                path,
                format!("missing {}", meta.key("attention.layer_norm_rms_epsilon")),
            )
        })?;
    let rope_theta = meta
        .positive_float("rope.freq_base")?
        .unwrap_or(DEFAULT_ROPE_THETA);
    let context = meta.count("context_length")?.unwrap_or(DEFAULT_CONTEXT);
    if context > MAX_CONTEXT {
        return Err(Error::invalid(
            path,
            format!(
                "{} is {context}, more than the {MAX_CONTEXT} positions qpipe accepts",
                meta.key("context_length")
            ),
        ));
    }
    let hyper = Hyper {
        arch: meta.arch,
        layers,
        hidden,
        ffn,
        heads,
        kv_heads,
        head_dim,
        eps,
        rope_theta,
        context,
        vocab,
        tied: header.tensor("output.weight").is_none(),
    };
    hyper.check_tensors(header, path)?;
    Ok(hyper)
}

/// Checks that the layers the tensors are in are exactly `blk.0` to `blk.{layers - 1}`, as the
/// metadata `key` says.
fn check_layers(header: &Header, path: &Path, key: &str, layers: usize) -> Result<()> {
    let present: BTreeSet<usize> = header
        .tensors
        .iter()
        .filter_map(|t| gguf_layer(&t.name))
        .collect();
    let n = present.len();
    if let Some(missing) = (0..n).find(|l| !present.contains(l)) {
        return Err(Error::invalid(
            path,
            format!(
                "no tensor is in layer blk.{missing}, yet there are tensors up to blk.{}",
                present.last().copied().unwrap_or(0)
            ),
        ));
    }
    if layers != n {
        let have = match n {
            0 => "no layers".to_string(),
            n => format!("{n} layers (blk.0 to blk.{})", n - 1),
        };
        return Err(Error::invalid(
            path,
            format!("{key} is {layers} but the tensors have {have}"),
        ));
    }
    Ok(())
}

impl Hyper {
    /// The shape (outermost first) that tensor `name` has in a model of these
    /// hyper-parameters, `None` for a tensor import does not map to Hugging Face's Llama.
    fn expected_shape(&self, name: &str) -> Option<Vec<usize>> {
        hf_name(name)?;
        let role = match gguf_layer(name) {
            Some(l) => name.strip_prefix(&format!("blk.{l}."))?,
            None => name,
        };
        let (h, q, kv) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        Some(match role {
            "token_embd.weight" | "output.weight" => vec![self.vocab, h],
            "output_norm.weight" | "attn_norm.weight" | "ffn_norm.weight" => vec![h],
            "attn_q.weight" => vec![q, h],
            "attn_q.bias" => vec![q],
            "attn_k.weight" | "attn_v.weight" => vec![kv, h],
            "attn_k.bias" | "attn_v.bias" => vec![kv],
            "attn_output.weight" => vec![h, q],
            "ffn_gate.weight" | "ffn_up.weight" => vec![self.ffn, h],
            "ffn_down.weight" => vec![h, self.ffn],
            _ => return None,
        })
    }

    /// Checks every tensor's shape against these hyper-parameters and that every tensor a
    /// Llama needs is there.
    fn check_tensors(&self, header: &Header, path: &Path) -> Result<()> {
        for t in &header.tensors {
            let Some(want) = self.expected_shape(&t.name) else {
                return Err(Error::unsupported(
                    path,
                    format!("tensor '{}' has no Hugging Face Llama equivalent", t.name),
                ));
            };
            if t.shape != want {
                return Err(Error::invalid(
                    path,
                    format!(
                        "tensor '{}' has shape {:?}, but the metadata gives {want:?} (vocabulary \
                         {}, embedding_length {}, feed_forward_length {}, {} heads and {} \
                         key/value heads of size {})",
                        t.name,
                        t.shape,
                        self.vocab,
                        self.hidden,
                        self.ffn,
                        self.heads,
                        self.kv_heads,
                        self.head_dim
                    ),
                ));
            }
        }
        let names: HashSet<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        let required = (0..self.layers)
            .flat_map(|l| gguf_layer_roles().map(move |role| format!("blk.{l}.{role}.weight")))
            .chain(["output_norm.weight".to_string()]);
        for name in required {
            if !names.contains(name.as_str()) {
                return Err(Error::invalid(path, format!("no tensor '{name}'")));
            }
        }
        Ok(())
    }
}

/// Typed reads of `ARCH.*` metadata, with errors naming the file and key.
struct Meta<'a> {
    /// The checked header.
    header: &'a Header,
    /// The GGUF file, for errors.
    path: &'a Path,
    /// `general.architecture`, the prefix of the keys.
    arch: String,
}

impl Meta<'_> {
    /// The full key of `name` (`llama.block_count`).
    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.arch)
    }

    /// A count (an integer of any width, at least 1), `None` if absent.
    fn count(&self, name: &str) -> Result<Option<usize>> {
        let key = self.key(name);
        let Some(value) = self.header.get(&key) else {
            return Ok(None);
        };
        match integer(value) {
            Some(n) if n >= 1 => usize::try_from(n).map(Some).map_err(|_| {
                Error::invalid(
                    self.path,
                    format!("{key} is {n}, too large for this machine"),
                )
            }),
            Some(n) => Err(Error::invalid(
                self.path,
                format!("{key} is {n}; it must be at least 1"),
            )),
            None => Err(Error::invalid(
                self.path,
                format!("{key} should be an integer, found {:?}", value.value_type()),
            )),
        }
    }

    /// A count that must be present.
    fn required_count(&self, name: &str) -> Result<usize> {
        self.count(name)?.ok_or_else(|| {
            Error::invalid(self.path, format!("missing metadata {}", self.key(name)))
        })
    }

    /// A float of either width, finite and above 0 as f32, `None` if absent.
    fn positive_float(&self, name: &str) -> Result<Option<f32>> {
        let key = self.key(name);
        let v = match self.header.get(&key) {
            None => return Ok(None),
            Some(Value::F32(v)) => *v,
            Some(Value::F64(v)) => *v as f32,
            Some(other) => {
                return Err(Error::invalid(
                    self.path,
                    format!("{key} should be a float, found {:?}", other.value_type()),
                ))
            }
        };
        if v.is_finite() && v > 0.0 {
            Ok(Some(v))
        } else {
            Err(Error::invalid(
                self.path,
                format!("{key} is {v}; it must be a finite number above 0"),
            ))
        }
    }
}

/// An integer metadata value of any width.
fn integer(value: &Value) -> Option<i128> {
    Some(match *value {
        Value::U8(v) => v.into(),
        Value::I8(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::I16(v) => v.into(),
        Value::U32(v) => v.into(),
        Value::I32(v) => v.into(),
        Value::U64(v) => v.into(),
        Value::I64(v) => v.into(),
        _ => return None,
    })
}

/// A metadata integer of any width as a usize, `None` if absent, negative or not an integer.
pub(super) fn meta_usize(header: &Header, key: &str) -> Option<usize> {
    header
        .get(key)
        .and_then(integer)
        .and_then(|n| usize::try_from(n).ok())
}
