//! `qpipe import`: GGUF checkpoints to Hugging Face-layout safetensors, config.json and
//! tokenizer.json, so imported models load through the same path as any HF checkpoint.
//!
//! Tensors are dequantized to f32 one at a time while the safetensors file is written (peak
//! memory: the mapped GGUF plus one tensor). llama.cpp's converter permutes the rows of Q and K
//! for its interleaved RoPE; HF models rotate halves, so the permutation is undone here
//! (names and permutation: [`crate::gguf::layout`]).

use crate::checkpoint::write::{write_atomic, write_safetensors, LazyTensor};
use crate::error::{candle_message, Error, Result};
use crate::gguf::layout::{hf_name, permuted_heads, unpermute_rows};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// GGUF architectures that import to HF Llama-family checkpoints.
const SUPPORTED: &[&str] = &["llama", "qwen2"];

/// What an import wrote.
#[derive(Debug, Serialize)]
pub struct Imported {
    /// GGUF `general.architecture`.
    pub architecture: String,
    /// Number of tensors written.
    pub tensors: usize,
    /// Scalar parameters written.
    pub parameters: u64,
    /// GGUF storage types of the source tensors and how many of each.
    pub source_types: Vec<(String, usize)>,
    /// The files written.
    pub files: Vec<PathBuf>,
}

/// The model hyper-parameters read from GGUF metadata.
#[derive(Debug)]
struct Hyper {
    arch: String,
    layers: usize,
    hidden: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    rope_theta: f32,
    context: usize,
}

/// Imports the GGUF file `gguf` into `out` (created if needed): model.safetensors (F32),
/// config.json and tokenizer.json. Each file is written atomically; weights come last.
pub fn import_gguf(gguf: &Path, out: &Path) -> Result<Imported> {
    let file = std::fs::File::open(gguf).map_err(Error::io(gguf))?;
    // SAFETY: read-only map; qpipe never writes its inputs (a concurrent external writer would
    // be a user error, as for every mmap-based loader).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(gguf))?;
    let content = Content::read(&mut Cursor::new(&map[..])).map_err(|e| {
        Error::invalid(
            gguf,
            format!("not a readable GGUF file: {}", candle_message(&e)),
        )
    })?;
    let hyper = hyper_parameters(&content, gguf)?;

    let mut names: Vec<(&String, u64)> = content
        .tensor_infos
        .iter()
        .map(|(n, info)| (n, info.offset))
        .collect();
    names.sort_by_key(|(n, off)| (*off, (*n).clone()));
    let mut tensors = Vec::with_capacity(names.len());
    let mut types: HashMap<String, usize> = HashMap::new();
    let mut parameters = 0u64;
    for (gname, _) in names {
        let info = &content.tensor_infos[gname];
        let hf = hf_name(gname).ok_or_else(|| {
            Error::unsupported(
                gguf,
                format!("tensor '{gname}' has no Hugging Face Llama equivalent"),
            )
        })?;
        let shape = info.shape.dims().to_vec();
        let heads = permuted_heads(&hyper.arch, &hf, hyper.heads, hyper.kv_heads);
        if let Some(h) = heads {
            let rows = shape.first().copied().unwrap_or(0);
            if rows != h * hyper.head_dim {
                return Err(Error::invalid(
                    gguf,
                    format!(
                        "tensor '{gname}' has {rows} rows, expected {h} heads x {}",
                        hyper.head_dim
                    ),
                ));
            }
        }
        check_extent(gguf, gname, info, content.tensor_data_offset, map.len())?;
        *types.entry(format!("{:?}", info.ggml_dtype)).or_default() += 1;
        parameters += info.shape.elem_count() as u64;
        let (map, content, head_dim) = (&map, &content, hyper.head_dim);
        let produce = move || -> Result<Vec<f32>> {
            let bad = |e: candle_core::Error| {
                Error::invalid(
                    gguf,
                    format!(
                        "tensor '{gname}': cannot dequantize: {}",
                        candle_message(&e)
                    ),
                )
            };
            let values: Vec<f32> = content
                .tensor(&mut Cursor::new(&map[..]), gname, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.flatten_all()?.to_vec1())
                .map_err(bad)?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::invalid(
                    gguf,
                    format!("tensor '{gname}' has a non-finite value at element {i}"),
                ));
            }
            Ok(match heads {
                Some(h) => unpermute_rows(&values, h, head_dim),
                None => values,
            })
        };
        tensors.push((hf, LazyTensor::try_f32(shape, produce)));
    }
    let tied = !content.tensor_infos.contains_key("output.weight");
    let vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|i| i.shape.dims()[0])
        .ok_or_else(|| Error::invalid(gguf, "no token_embd.weight tensor"))?;

    let config_path = out.join("config.json");
    let config = hf_config(&hyper, &content, vocab, tied);
    let config_text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::invalid(&config_path, e.to_string()))?;
    let tokenizer = crate::gguf::tokenizer::from_gguf(&content, gguf)?;
    let tokenizer_path = out.join("tokenizer.json");
    let tokenizer_text = tokenizer
        .to_string(true)
        .map_err(|e| Error::invalid(&tokenizer_path, format!("cannot serialise: {e}")))?;

    // Everything that can be checked without dequantizing was checked above; the weights go
    // first so a failure leaves no config or tokenizer without weights.
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let weights_path = out.join("model.safetensors");
    let source = gguf
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("qpipe_imported_from".to_string(), source),
    ]);
    write_safetensors(&weights_path, &tensors, Some(metadata))?;
    write_atomic(&config_path, config_text.as_bytes())?;
    write_atomic(&tokenizer_path, tokenizer_text.as_bytes())?;

    let mut source_types: Vec<(String, usize)> = types.into_iter().collect();
    source_types.sort();
    Ok(Imported {
        architecture: hyper.arch,
        tensors: tensors.len(),
        parameters,
        source_types,
        files: vec![weights_path, config_path, tokenizer_path],
    })
}

/// Checks that tensor `name`'s data lies inside the file, so a truncated download fails before
/// anything is written.
fn check_extent(
    path: &Path,
    name: &str,
    info: &candle_core::quantized::gguf_file::TensorInfo,
    data_offset: u64,
    file_len: usize,
) -> Result<()> {
    let (block, size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
    let elems = info.shape.elem_count();
    if !elems.is_multiple_of(block) {
        return Err(Error::invalid(
            path,
            format!(
                "tensor '{name}': {elems} elements is not a whole number of {block}-element blocks"
            ),
        ));
    }
    let end = data_offset
        .checked_add(info.offset)
        .and_then(|s| s.checked_add((elems / block * size) as u64));
    match end {
        Some(end) if end <= file_len as u64 => Ok(()),
        _ => Err(Error::invalid(
            path,
            format!("tensor '{name}' ends past the end of the file ({file_len} bytes): truncated?"),
        )),
    }
}

/// Reads a metadata integer of any width.
fn meta_usize(content: &Content, key: &str) -> Option<usize> {
    match content.metadata.get(key)? {
        Value::U8(v) => Some(*v as usize),
        Value::U16(v) => Some(*v as usize),
        Value::U32(v) => Some(*v as usize),
        Value::U64(v) => usize::try_from(*v).ok(),
        Value::I8(v) => usize::try_from(*v).ok(),
        Value::I16(v) => usize::try_from(*v).ok(),
        Value::I32(v) => usize::try_from(*v).ok(),
        Value::I64(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}

/// Reads a metadata float of either width.
fn meta_f32(content: &Content, key: &str) -> Option<f32> {
    match content.metadata.get(key)? {
        Value::F32(v) => Some(*v),
        Value::F64(v) => Some(*v as f32),
        _ => None,
    }
}

fn hyper_parameters(content: &Content, path: &Path) -> Result<Hyper> {
    let arch = match content.metadata.get("general.architecture") {
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
    let need = |key: &str| {
        meta_usize(content, &format!("{arch}.{key}"))
            .filter(|v| *v > 0)
            .ok_or_else(|| Error::invalid(path, format!("missing or zero metadata {arch}.{key}")))
    };
    let (layers, hidden, ffn, heads) = (
        need("block_count")?,
        need("embedding_length")?,
        need("feed_forward_length")?,
        need("attention.head_count")?,
    );
    let kv_heads = need("attention.head_count_kv").unwrap_or(heads);
    let head_dim = need("attention.key_length").unwrap_or(hidden / heads);
    if heads % kv_heads != 0 || head_dim % 2 != 0 {
        return Err(Error::invalid(
            path,
            format!(
                "inconsistent heads: {heads} query, {kv_heads} key/value, head size {head_dim}"
            ),
        ));
    }
    if let Some(Value::String(s)) = content
        .metadata
        .get(&format!("{arch}.rope.scaling.type"))
        .filter(|v| !matches!(v, Value::String(s) if s == "none"))
    {
        return Err(Error::unsupported(
            path,
            format!("RoPE scaling '{s}' cannot be imported yet"),
        ));
    }
    let eps = meta_f32(content, &format!("{arch}.attention.layer_norm_rms_epsilon")).ok_or_else(
        || {
            Error::invalid(
                path,
                format!("missing {arch}.attention.layer_norm_rms_epsilon"),
            )
        },
    )?;
    Ok(Hyper {
        layers,
        hidden,
        ffn,
        heads,
        kv_heads,
        head_dim,
        eps,
        rope_theta: meta_f32(content, &format!("{arch}.rope.freq_base")).unwrap_or(10_000.0),
        context: need("context_length").unwrap_or(2048),
        arch,
    })
}

/// A Hugging Face config.json for the imported model.
fn hf_config(h: &Hyper, content: &Content, vocab: usize, tied: bool) -> serde_json::Value {
    let (arch_name, model_type) = match h.arch.as_str() {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let token = |key: &str| meta_usize(content, &format!("tokenizer.ggml.{key}"));
    serde_json::json!({
        "architectures": [arch_name],
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": h.hidden,
        "intermediate_size": h.ffn,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "num_key_value_heads": h.kv_heads,
        "head_dim": h.head_dim,
        "rms_norm_eps": shortest(h.eps),
        "rope_theta": shortest(h.rope_theta),
        "max_position_embeddings": h.context,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "bos_token_id": token("bos_token_id"),
        "eos_token_id": token("eos_token_id"),
        "torch_dtype": "float32",
    })
}

/// GGUF stores these as f32; writing the shortest decimal that round-trips (1e-5, not
/// 9.999999747378752e-6) gives the config its authors wrote.
fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}
