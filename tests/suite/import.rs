//! `qpipe import` on hand-built GGUF files: a lossless round trip (names, llama.cpp's Q/K row
//! permutation undone, config, tokenizer) and one-line errors for bad inputs.

use crate::common;
use crate::common::{gguf_name, llama_cpp_permute, qpipe};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use qpipe::checkpoint::Checkpoint;
use std::path::Path;

const HIDDEN: usize = 16;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 24;
const LAYERS: usize = 2;
const VOCAB: usize = 5;

/// HF name, shape, values of a tiny tied Llama with Q/K biases and distinct values everywhere.
fn hf_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut seed = 0u32;
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed += 1;
                ((seed as f32) * 0.618_034).fract() - 0.5
            })
            .collect()
    };
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![VOCAB, HIDDEN],
        values(VOCAB * HIDDEN),
    )];
    let kv = KV_HEADS * HEAD_DIM;
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (suffix, shape) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.q_proj.bias", vec![HIDDEN]),
            ("self_attn.k_proj.weight", vec![kv, HIDDEN]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, HIDDEN]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HIDDEN]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
            ("mlp.gate_proj.weight", vec![FFN, HIDDEN]),
            ("mlp.up_proj.weight", vec![FFN, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, FFN]),
        ] {
            let n = shape.iter().product();
            out.push((format!("{p}.{suffix}"), shape, values(n)));
        }
    }
    out.push((
        "model.norm.weight".to_string(),
        vec![HIDDEN],
        values(HIDDEN),
    ));
    out
}

/// Writes a GGUF the way llama.cpp's converter would (Q/K weights and biases permuted), with a
/// tiny BPE vocabulary.
fn write_gguf(path: &Path, arch: &str, extra_tensor: Option<&str>) {
    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    for (name, shape, values) in hf_tensors() {
        let cols = if name.ends_with(".bias") { 1 } else { HIDDEN };
        let values = if name.contains("q_proj") {
            llama_cpp_permute(&values, HEADS, cols)
        } else if name.contains("k_proj") {
            llama_cpp_permute(&values, KV_HEADS, cols)
        } else {
            values
        };
        let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
        qtensors.push((
            gguf_name(&name),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    if let Some(extra) = extra_tensor {
        let t = Tensor::zeros(HIDDEN, candle_core::DType::F32, &Device::Cpu).unwrap();
        qtensors.push((
            extra.to_string(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let s = |v: &str| Value::String(v.to_string());
    let strings = |v: &[&str]| Value::Array(v.iter().map(|x| s(x)).collect());
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(arch)),
        (format!("{arch}.block_count"), Value::U32(LAYERS as u32)),
        (
            format!("{arch}.embedding_length"),
            Value::U32(HIDDEN as u32),
        ),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(FFN as u32),
        ),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(HEADS as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(KV_HEADS as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(100_000.0)),
        (format!("{arch}.context_length"), Value::U32(64)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            strings(&["<|endoftext|>", "a", "b", "ab", "abab"]),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vec![
                Value::I32(3),
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
            ]),
        ),
        ("tokenizer.ggml.merges".into(), strings(&["a b", "ab ab"])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        qtensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

#[test]
fn round_trip_restores_hf_names_rows_config_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, "llama", None);
    let out = dir.path().join("hf");
    let (code, stdout, stderr) = qpipe(&[
        "import",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("llama architecture"), "{stdout}");

    let ckpt = Checkpoint::open(&out).unwrap();
    let expected = hf_tensors();
    assert_eq!(ckpt.len(), expected.len());
    for (name, shape, values) in &expected {
        let t = ckpt.tensor(name).unwrap();
        assert_eq!(t.shape, shape.as_slice(), "{name}");
        assert_eq!(
            &t.to_f32_vec().unwrap(),
            values,
            "{name} differs after import"
        );
    }
    let config = ckpt.config().unwrap();
    assert_eq!(config["num_key_value_heads"], KV_HEADS);
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(config["rope_theta"].as_f64(), Some(100_000.0));
    // The imported checkpoint loads through the HF path and runs.
    let model = qpipe::model::Model::load(&ckpt).unwrap();
    assert_eq!(model.linears().len(), LAYERS * 7);

    let tok = qpipe::data::tokenizer(&ckpt).unwrap();
    let ids = tok.encode("abab", false).unwrap().get_ids().to_vec();
    assert_eq!(ids, vec![4]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "abab");
}

fn import_error(gguf: &Path, out: &Path) -> String {
    let (code, stdout, stderr) = qpipe(&[
        "import",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "stdout {stdout} stderr {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn bad_inputs_give_one_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");

    let gpt2 = dir.path().join("gpt2.gguf");
    write_gguf(&gpt2, "gpt2", None);
    let e = import_error(&gpt2, &out);
    assert!(
        e.contains("gpt2.gguf") && e.contains("'gpt2'") && e.contains("llama, qwen2"),
        "{e}"
    );

    let fused = dir.path().join("fused.gguf");
    write_gguf(&fused, "llama", Some("blk.0.attn_qkv.weight"));
    let e = import_error(&fused, &out);
    assert!(
        e.contains("fused.gguf") && e.contains("blk.0.attn_qkv.weight"),
        "{e}"
    );

    let good = dir.path().join("good.gguf");
    write_gguf(&good, "llama", None);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let e = import_error(&truncated, &out);
    assert!(e.contains("truncated.gguf"), "{e}");
    assert!(
        !out.join("model.safetensors").exists(),
        "no weights from a truncated file"
    );

    let not_gguf = dir.path().join("model.safetensors");
    std::fs::write(&not_gguf, common::raw_safetensors("{}", &[])).unwrap();
    let e = import_error(&not_gguf, &out);
    assert!(e.contains("model.safetensors") && e.contains("GGUF"), "{e}");

    let e = import_error(&dir.path().join("missing.gguf"), &out);
    assert!(e.contains("missing.gguf"), "{e}");

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let e = import_error(&good, &blocker.join("out"));
    assert!(e.contains("a-file"), "{e}");
}
