//! Writes a GGUF file llama.cpp loads, from a Llama-family HF checkpoint and a GGUF block type
//! per chosen weight matrix.
//!
//! Layout (GGUF v3, little-endian): magic `GGUF`, version 3, tensor count (u64), metadata count
//! (u64), the metadata key/values, one info per tensor (name, dimension count, dimensions
//! innermost first, ggml type, data offset), zero padding to `general.alignment` (32), then the
//! tensor data, each tensor starting on a multiple of the alignment. Offsets come from each
//! type's exact size, so the header is written before any tensor is quantized; tensors are then
//! read, permuted (Q and K, see [`crate::gguf::layout`]), quantized and written one at a time, so
//! peak memory is the mapped checkpoint plus about two copies of one tensor. The file is written
//! to a temp file beside `path` and renamed at the end; the checkpoint is only read.
//!
//! Tensors without a chosen type are written as F32 (norms, and the embedding unless chosen),
//! so llama.cpp computes what qpipe's own evaluation computes for the same choice of types.

use super::encode::{ggml_type_id, Place, Sink, MAGIC};
use super::vocab;
use crate::checkpoint::write::atomically;
use crate::checkpoint::{Checkpoint, TensorView};
use crate::error::{candle_message, Error, Result};
use crate::gguf::layout::{gguf_name, permute_rows, permuted_heads};
use crate::model::llama::LlamaConfig;
use crate::quant::{Calibrator, Factor, Format, GgufType, Rescale};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The GGUF version written.
const VERSION: u32 = 3;
/// Alignment of the data section and of every tensor in it (`general.alignment`).
pub(super) const ALIGNMENT: u64 = 32;
/// `general.quantization_version` of the block layouts candle implements (llama.cpp's current).
const QUANTIZATION_VERSION: u32 = 2;

/// What a GGUF export wrote.
#[derive(Debug, Serialize)]
pub struct Written {
    /// Number of tensors in the file.
    pub tensors: usize,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Storage type names (`f32`, `q4_k`, ...) and how many tensors have each, sorted by name.
    pub types: Vec<(String, usize)>,
}

/// One tensor of the output: where it comes from and how it is stored.
struct Planned<'a> {
    /// GGUF name (`blk.0.attn_q.weight`).
    gguf: String,
    /// The source tensor.
    view: TensorView<'a>,
    /// Block type, or `None` for F32.
    block: Option<GgufType>,
    /// Rows and columns (a vector is one row).
    rows: usize,
    cols: usize,
    /// Heads whose rows llama.cpp permutes (Q and K).
    heads: Option<usize>,
    /// Exact bytes of the data.
    bytes: u64,
}

/// How a chosen weight is quantized besides its block type.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Per input column importance (mean x²) of the input as the stored weight reads it.
    pub importance: Option<&'a [f32]>,
    /// `minmax`: llama.cpp's reference scales for the 32-blocks; otherwise qpipe's search.
    pub calibrator: Calibrator,
    /// The input's GPTQ factor, to round with GPTQ.
    pub gptq: Option<&'a Factor>,
    /// How the weight is rescaled before it is stored (a transform's fold).
    pub rescale: Rescale<'a>,
}

/// The model hyper-parameters the metadata and the permutation need.
struct Hyper {
    config: LlamaConfig,
    context: usize,
}

/// Writes `checkpoint` as a GGUF file at `path` for llama.cpp, storing each tensor named in
/// `types` (HF names) in that block type, quantized as `inputs` says for it (else llama.cpp's
/// reference quantization), and every other tensor as F32, its first dimension divided where
/// `folded` says.
pub fn write(
    checkpoint: &Checkpoint,
    types: &HashMap<String, GgufType>,
    inputs: &HashMap<String, Input<'_>>,
    folded: &BTreeMap<String, &[f32]>,
    path: &Path,
) -> Result<Written> {
    let hyper = hyper_parameters(checkpoint)?;
    let plan = plan(checkpoint, &hyper, types, inputs, folded)?;
    let n_vocab = plan
        .iter()
        .find(|p| p.gguf == "token_embd.weight")
        .map(|p| p.rows)
        .unwrap_or(0);
    let tokenizer_path = checkpoint.tokenizer_path().ok_or_else(|| {
        Error::invalid(
            checkpoint.dir().join("tokenizer.json"),
            "no tokenizer.json beside the weights: a GGUF file must carry the tokenizer",
        )
    })?;
    let vocab = vocab::read(tokenizer_path, n_vocab)?;
    let metadata = metadata(checkpoint, &hyper, &plan, vocab)?;

    let mut offsets = Vec::with_capacity(plan.len());
    let mut end = 0u64;
    for p in &plan {
        offsets.push(end);
        end = (end + p.bytes).next_multiple_of(ALIGNMENT);
    }
    let head_dim = hyper.config.head_dim();
    let mut size = 0u64;
    atomically(path, |out, tmp| {
        let mut w = Sink { out, tmp, pos: 0 };
        w.u32(MAGIC)?;
        w.u32(VERSION)?;
        w.u64(plan.len() as u64)?;
        w.u64(metadata.len() as u64)?;
        for (key, value) in &metadata {
            w.string(key)?;
            w.value(key, value, Place::KeyValue)?;
        }
        for (p, offset) in plan.iter().zip(&offsets) {
            w.string(&p.gguf)?;
            let dims: &[usize] = if p.view.shape.len() == 2 {
                &[p.cols, p.rows]
            } else {
                &[p.cols]
            };
            w.u32(dims.len() as u32)?;
            for d in dims {
                w.u64(*d as u64)?;
            }
            w.u32(ggml_type_id(p.block.map_or(GgmlDType::F32, GgufType::ggml)))?;
            w.u64(*offset)?;
        }
        w.pad()?;
        let data_start = w.pos;
        for (p, offset) in plan.iter().zip(&offsets) {
            debug_assert_eq!(w.pos, data_start + offset);
            w.tensor(p, inputs, folded, head_dim)?;
            w.pad()?;
        }
        size = w.pos;
        Ok(())
    })?;

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for p in &plan {
        *counts.entry(type_name(p.block)).or_default() += 1;
    }
    Ok(Written {
        tensors: plan.len(),
        bytes: size,
        types: counts.into_iter().collect(),
    })
}

/// Reads and checks config.json: a Llama model llama.cpp can run as `llama`.
fn hyper_parameters(checkpoint: &Checkpoint) -> Result<Hyper> {
    let config_path = checkpoint.dir().join("config.json");
    let json = checkpoint.config().ok_or_else(|| {
        Error::invalid(
            &config_path,
            "no config.json beside the weights: GGUF needs the model's hyper-parameters",
        )
    })?;
    let arch = crate::model::arch::detect(checkpoint);
    if !arch.name.to_ascii_lowercase().starts_with("llama") {
        return Err(Error::unsupported(
            &config_path,
            format!(
                "architecture '{}' cannot be written to GGUF: only Llama (LlamaForCausalLM) is supported",
                arch.name
            ),
        ));
    }
    let config: LlamaConfig = serde_json::from_value(json.clone())
        .map_err(|e| Error::invalid(&config_path, format!("not a Llama config: {e}")))?;
    config
        .validate()
        .map_err(|m| Error::invalid(&config_path, m))?;
    if let Some(s) = &config.rope_scaling {
        return Err(Error::unsupported(
            &config_path,
            format!(
                "RoPE scaling '{}' cannot be written to GGUF yet",
                s.rope_type
            ),
        ));
    }
    if config.sliding_window.is_some() && config.use_sliding_window != Some(false) {
        return Err(Error::unsupported(
            &config_path,
            "a sliding attention window cannot be written for llama.cpp's llama architecture",
        ));
    }
    let context = json["max_position_embeddings"].as_u64().unwrap_or(2048) as usize;
    Ok(Hyper { config, context })
}

/// Maps, checks and orders every tensor of the output before anything is written.
fn plan<'a>(
    checkpoint: &'a Checkpoint,
    hyper: &Hyper,
    types: &HashMap<String, GgufType>,
    inputs: &HashMap<String, Input<'_>>,
    folded: &BTreeMap<String, &[f32]>,
) -> Result<Vec<Planned<'a>>> {
    let weights = checkpoint.files().next().unwrap_or(checkpoint.dir());
    let c = &hyper.config;
    let mut chosen: Vec<&String> = types
        .keys()
        .chain(inputs.keys())
        .chain(folded.keys())
        .collect();
    chosen.sort();
    if let Some(name) = chosen.iter().find(|n| checkpoint.get(n).is_none()) {
        return Err(Error::invalid(
            weights,
            format!("a GGUF type or importance is given for '{name}', which is not a tensor of this checkpoint"),
        ));
    }
    let mut plan = Vec::new();
    for view in checkpoint.tensors() {
        let name = view.name;
        if name.ends_with(".rotary_emb.inv_freq") {
            continue; // llama.cpp computes the RoPE frequencies itself
        }
        if name == "lm_head.weight" && c.tie_word_embeddings {
            if types.contains_key(name) {
                return Err(Error::invalid(
                    weights,
                    "lm_head.weight is tied to model.embed_tokens.weight: choose a type for the embedding instead",
                ));
            }
            continue;
        }
        let gguf = gguf_name(name).ok_or_else(|| {
            Error::unsupported(
                view.file,
                format!("tensor '{name}' has no llama.cpp equivalent"),
            )
        })?;
        view.float_type()?;
        let (rows, cols) = match view.shape {
            [rows, cols] => (*rows, *cols),
            [n] => (1, *n),
            other => {
                return Err(Error::unsupported(
                    view.file,
                    format!(
                    "tensor '{name}' has shape {other:?}; GGUF export takes vectors and matrices"
                ),
                ))
            }
        };
        let block = types.get(name).copied();
        if let Some(t) = block {
            if view.shape.len() != 2 {
                return Err(Error::invalid(
                    view.file,
                    format!(
                        "tensor '{name}' is a vector; only matrices can be stored as {}",
                        Format::Gguf(t)
                    ),
                ));
            }
            Format::Gguf(t).check(rows, cols).map_err(|m| {
                Error::invalid(view.file, format!("tensor '{name}' [{rows}, {cols}]: {m}"))
            })?;
        }
        let input = inputs.get(name);
        let lengths = [
            ("importance values", input.and_then(|i| i.importance), cols),
            ("column scales", input.and_then(|i| i.rescale.columns), cols),
            (
                "row divisors",
                input.and_then(|i| i.rescale.rows),
                view.shape[0],
            ),
            ("fold divisors", folded.get(name).copied(), view.shape[0]),
        ];
        for (what, v, want) in lengths {
            if let Some(v) = v.filter(|v| v.len() != want) {
                return Err(Error::invalid(
                    view.file,
                    format!(
                        "tensor '{name}' {:?} takes {want} {what}, got {}",
                        view.shape,
                        v.len()
                    ),
                ));
            }
        }
        let heads = permuted_heads("llama", name, c.num_attention_heads, c.kv_heads());
        if let Some(h) = heads {
            let rows = view.shape[0];
            if rows != h * c.head_dim() {
                return Err(Error::invalid(
                    view.file,
                    format!(
                        "tensor '{name}' has {rows} rows, expected {h} heads x {}",
                        c.head_dim()
                    ),
                ));
            }
        }
        let bytes = match block {
            Some(t) => Format::Gguf(t).storage_bytes(rows, cols) as u64,
            None => (rows * cols * 4) as u64,
        };
        plan.push(Planned {
            gguf,
            view,
            block,
            rows,
            cols,
            heads,
            bytes,
        });
    }
    for required in ["token_embd.weight", "output_norm.weight"]
        .into_iter()
        .chain((!c.tie_word_embeddings).then_some("output.weight"))
    {
        if !plan.iter().any(|p| p.gguf == required) {
            return Err(Error::invalid(
                weights,
                format!("the checkpoint has no tensor for llama.cpp's '{required}'"),
            ));
        }
    }
    // llama.cpp's order: embedding, the layers in order, then the output norm and head.
    plan.sort_by_key(|p| {
        let layer = p
            .gguf
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|l| l.parse::<usize>().ok());
        match (p.gguf.as_str(), layer) {
            ("token_embd.weight", _) => 0,
            (_, Some(l)) => l + 1,
            _ => usize::MAX,
        }
    });
    Ok(plan)
}

/// The metadata key/values in writing order.
fn metadata(
    checkpoint: &Checkpoint,
    hyper: &Hyper,
    plan: &[Planned<'_>],
    vocab: vocab::Vocab,
) -> Result<Vec<(String, Value)>> {
    let config_path = checkpoint.dir().join("config.json");
    let c = &hyper.config;
    let count = |what: &str, v: usize| {
        u32::try_from(v).map_err(|_| {
            Error::invalid(&config_path, format!("{what} {v} does not fit GGUF's u32"))
        })
    };
    let n_vocab = vocab.tokens.len();
    let json = checkpoint.config().cloned().unwrap_or_default();
    // bos/eos may be an id, a list of ids (the first is llama.cpp's), or null.
    let token_id = |key: &str| -> Result<Option<u32>> {
        let v = match &json[key] {
            serde_json::Value::Array(ids) => ids.first().cloned().unwrap_or_default(),
            v => v.clone(),
        };
        match v {
            serde_json::Value::Null => Ok(None),
            v => v
                .as_u64()
                .filter(|&id| id < n_vocab as u64)
                .map(|id| Some(id as u32))
                .ok_or_else(|| {
                    Error::invalid(
                        &config_path,
                        format!("{key} is {v}, not a token id below {n_vocab}"),
                    )
                }),
        }
    };
    let name = checkpoint
        .dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let head_dim = c.head_dim();
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(name)),
        ("general.alignment".into(), Value::U32(ALIGNMENT as u32)),
        ("general.file_type".into(), Value::U32(file_type(plan))),
        (
            "general.quantization_version".into(),
            Value::U32(QUANTIZATION_VERSION),
        ),
        (
            "llama.vocab_size".into(),
            Value::U32(count("vocab size", n_vocab)?),
        ),
        (
            "llama.context_length".into(),
            Value::U32(count("max_position_embeddings", hyper.context)?),
        ),
        (
            "llama.embedding_length".into(),
            Value::U32(count("hidden_size", c.hidden_size)?),
        ),
        (
            "llama.block_count".into(),
            Value::U32(count("num_hidden_layers", c.num_hidden_layers)?),
        ),
        (
            "llama.feed_forward_length".into(),
            Value::U32(count("intermediate_size", c.intermediate_size)?),
        ),
        (
            "llama.attention.head_count".into(),
            Value::U32(count("num_attention_heads", c.num_attention_heads)?),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(count("num_key_value_heads", c.kv_heads())?),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(c.rope_theta as f32),
        ),
        (
            "llama.rope.dimension_count".into(),
            Value::U32(count("head_dim", head_dim)?),
        ),
    ];
    if head_dim * c.num_attention_heads != c.hidden_size {
        m.push((
            "llama.attention.key_length".into(),
            Value::U32(count("head_dim", head_dim)?),
        ));
        m.push((
            "llama.attention.value_length".into(),
            Value::U32(count("head_dim", head_dim)?),
        ));
    }
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    m.extend([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(vocab.pre.into())),
        ("tokenizer.ggml.tokens".into(), strings(vocab.tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vocab.types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(vocab.merges)),
    ]);
    for (key, id) in [
        ("bos_token_id", token_id("bos_token_id")?),
        ("eos_token_id", token_id("eos_token_id")?),
        ("padding_token_id", token_id("pad_token_id")?),
        ("unknown_token_id", vocab.unknown),
    ] {
        if let Some(id) = id {
            m.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    m.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(vocab.add_bos),
    ));
    m.push((
        "tokenizer.ggml.add_eos_token".into(),
        Value::Bool(vocab.add_eos),
    ));
    Ok(m)
}

/// `general.file_type` (llama.cpp's `llama_ftype`): the block type holding the most weights,
/// or all-F32 when nothing is quantized.
fn file_type(plan: &[Planned<'_>]) -> u32 {
    let mut weights: BTreeMap<GgufType, usize> = BTreeMap::new();
    for p in plan {
        if let Some(t) = p.block {
            *weights.entry(t).or_default() += p.rows * p.cols;
        }
    }
    let Some((t, _)) = weights
        .into_iter()
        .max_by_key(|(t, n)| (*n, std::cmp::Reverse(*t)))
    else {
        return 0;
    };
    match t {
        GgufType::Q4_0 => 2,
        GgufType::Q4_1 => 3,
        GgufType::Q8_0 => 7,
        GgufType::Q5_0 => 8,
        GgufType::Q5_1 => 9,
        GgufType::Q2K => 10,
        GgufType::Q3K => 12, // Q3_K_M
        GgufType::Q4K => 15, // Q4_K_M
        GgufType::Q5K => 17, // Q5_K_M
        GgufType::Q6K => 18,
    }
}

/// The name a storage type is counted under in [`Written::types`].
fn type_name(block: Option<GgufType>) -> String {
    block.map_or_else(|| "f32".to_string(), |t| Format::Gguf(t).to_string())
}

impl Sink<'_> {
    /// One tensor's data: read, permuted if Q/K, quantized if chosen.
    fn tensor(
        &mut self,
        p: &Planned<'_>,
        inputs: &HashMap<String, Input<'_>>,
        folded: &BTreeMap<String, &[f32]>,
        head_dim: usize,
    ) -> Result<()> {
        let name = p.view.name;
        let mut values = p.view.to_f32_vec()?;
        let input = inputs.get(name);
        // Folds act in the checkpoint's layout, before Q/K rows are permuted.
        let rescale = Rescale {
            columns: input.and_then(|i| i.rescale.columns),
            rows: input
                .and_then(|i| i.rescale.rows)
                .or_else(|| folded.get(name).copied()),
        };
        let first = p.view.shape.first().copied().unwrap_or(1).max(1);
        let cols = values.len() / first;
        rescale.apply(&mut values, cols);
        let values = match p.heads {
            Some(h) => permute_rows(&values, h, head_dim),
            None => values,
        };
        let start = self.pos;
        match p.block {
            None => {
                for chunk in values.chunks(1 << 14) {
                    let b: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                    self.bytes(&b)?;
                }
            }
            Some(t) => {
                let bad = |m: String| Error::invalid(p.view.file, format!("tensor '{name}': {m}"));
                let q = crate::quant::gguf::quantize(
                    &values,
                    p.rows,
                    p.cols,
                    t,
                    input.map_or(Calibrator::MinMax, |i| i.calibrator),
                    input.and_then(|i| i.importance),
                    input.and_then(|i| i.gptq),
                )
                .map_err(bad)?;
                drop(values);
                let data = q.data().map_err(|e| bad(candle_message(&e)))?;
                self.bytes(&data)?;
            }
        }
        if self.pos - start != p.bytes {
            return Err(Error::invalid(
                p.view.file,
                format!(
                    "tensor '{name}': wrote {} bytes, expected {}",
                    self.pos - start,
                    p.bytes
                ),
            ));
        }
        Ok(())
    }
}
