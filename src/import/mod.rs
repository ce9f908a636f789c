//! `qpipe import`: GGUF checkpoints to Hugging Face-layout safetensors, config.json and
//! tokenizer.json, so imported models load through the same path as any HF checkpoint.
//!
//! Before any other work the file's header is validated by qpipe's own reader
//! ([`crate::gguf::reader`]) and the hyper-parameters are checked against the tensors
//! ([`hyper`]); candle then reads and dequantizes the tensor data the checked header describes.
//! Tensors are dequantized to f32 one at a time while the safetensors file is written (peak
//! memory: the mapped GGUF plus one tensor). llama.cpp's converter permutes the rows of Q and K
//! for its interleaved RoPE; HF models rotate halves, so the permutation is undone here
//! (names and permutation: [`crate::gguf::layout`]).

mod hyper;

use crate::checkpoint::write::{write_atomic, write_safetensors, LazyTensor};
use crate::error::{candle_message, Error, Result};
use crate::gguf::layout::{hf_name, permuted_heads, unpermute_rows};
use crate::gguf::reader;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use hyper::{meta_usize, Hyper};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

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

/// Imports the GGUF file `gguf` into `out` (created if needed): model.safetensors (F32),
/// config.json and tokenizer.json. Each file is written atomically; weights come last.
pub fn import_gguf(gguf: &Path, out: &Path) -> Result<Imported> {
    let file = std::fs::File::open(gguf).map_err(Error::io(gguf))?;
    // SAFETY: read-only map; qpipe never writes its inputs (a concurrent external writer would
    // be a user error, as for every mmap-based loader).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(gguf))?;
    let header = reader::read(&map).map_err(|m| Error::invalid(gguf, m))?;
    let hyper = hyper::read(&header, gguf)?;
    let content = header.to_content();

    let mut infos: Vec<&reader::TensorInfo> = header.tensors.iter().collect();
    infos.sort_by_key(|t| (t.offset, t.name.as_str()));
    let mut tensors = Vec::with_capacity(infos.len());
    let mut types: HashMap<String, usize> = HashMap::new();
    let mut parameters = 0u64;
    for info in infos {
        let gname = info.name.as_str();
        let hf = hf_name(gname).ok_or_else(|| {
            Error::unsupported(
                gguf,
                format!("tensor '{gname}' has no Hugging Face Llama equivalent"),
            )
        })?;
        if matches!(info.ggml_type, GgmlDType::Q8_1 | GgmlDType::Q8K) {
            return Err(Error::unsupported(
                gguf,
                format!(
                    "tensor '{gname}' is stored as {:?}, a type only used inside matmuls, which \
                     candle cannot dequantize",
                    info.ggml_type
                ),
            ));
        }
        let shape = info.shape.clone();
        let heads = permuted_heads(&hyper.arch, &hf, hyper.heads, hyper.kv_heads);
        *types.entry(format!("{:?}", info.ggml_type)).or_default() += 1;
        parameters += shape.iter().product::<usize>() as u64;
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
    let config_path = out.join("config.json");
    let config = hf_config(&hyper, &header);
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

/// A Hugging Face config.json for the imported model.
fn hf_config(h: &Hyper, header: &reader::Header) -> serde_json::Value {
    let (arch_name, model_type) = match h.arch.as_str() {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let token = |key: &str| meta_usize(header, &format!("tokenizer.ggml.{key}"));
    serde_json::json!({
        "architectures": [arch_name],
        "model_type": model_type,
        "vocab_size": h.vocab,
        "hidden_size": h.hidden,
        "intermediate_size": h.ffn,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "num_key_value_heads": h.kv_heads,
        "head_dim": h.head_dim,
        "rms_norm_eps": shortest(h.eps),
        "rope_theta": shortest(h.rope_theta),
        "max_position_embeddings": h.context,
        "tie_word_embeddings": h.tied,
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
