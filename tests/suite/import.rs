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

/// The metadata and tensors of a GGUF file before it is written.
type Parts = (Vec<(String, Value)>, Vec<(String, QTensor)>);

/// Writes a GGUF the way llama.cpp's converter would (Q/K weights and biases permuted), with a
/// tiny BPE vocabulary.
fn write_gguf(path: &Path, arch: &str) {
    write_gguf_edited(path, arch, |_| {});
}

/// Like [`write_gguf`], with `edit` changing the metadata and tensors before they are written.
fn write_gguf_edited(path: &Path, arch: &str, edit: impl FnOnce(&mut Parts)) {
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
    let s = |v: &str| Value::String(v.to_string());
    let strings = |v: &[&str]| Value::Array(v.iter().map(|x| s(x)).collect());
    let meta = vec![
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
    let mut parts = (meta, qtensors);
    edit(&mut parts);
    let (meta, qtensors) = parts;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        qtensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
}

/// A zero F32 tensor of `shape`.
fn f32_tensor(shape: &[usize]) -> QTensor {
    let t = Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap();
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

#[test]
fn round_trip_restores_hf_names_rows_config_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_gguf(&gguf, "llama");
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
    write_gguf(&gpt2, "gpt2");
    let e = import_error(&gpt2, &out);
    assert!(
        e.contains("gpt2.gguf") && e.contains("'gpt2'") && e.contains("llama, qwen2"),
        "{e}"
    );

    let fused = dir.path().join("fused.gguf");
    write_gguf_edited(&fused, "llama", |(_, tensors)| {
        tensors.push(("blk.0.attn_qkv.weight".into(), f32_tensor(&[HIDDEN])));
    });
    let e = import_error(&fused, &out);
    assert!(
        e.contains("fused.gguf") && e.contains("blk.0.attn_qkv.weight"),
        "{e}"
    );

    let good = dir.path().join("good.gguf");
    write_gguf(&good, "llama");
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

/// Imports `gguf` into a fresh `out` and checks the failure: exit code 2, one line on stderr
/// naming the file and saying each of `problem`, and nothing written into `out`.
fn assert_rejected(gguf: &Path, problem: &[&str]) {
    let out = gguf.with_extension("out");
    let e = import_error(gguf, &out);
    let file = gguf.file_name().unwrap().to_str().unwrap();
    assert!(e.contains(file), "{e}");
    for p in problem {
        assert!(e.contains(p), "'{p}' not in: {e}");
    }
    let written = std::fs::read_dir(&out).map_or(0, |d| d.count());
    assert_eq!(
        written,
        0,
        "{} has files after a failed import",
        out.display()
    );
}

/// A llama GGUF in a fresh temp dir, edited by `edit`, and its path.
fn edited(name: &str, edit: impl FnOnce(&mut Parts)) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    write_gguf_edited(&path, "llama", edit);
    (dir, path)
}

/// `key`'s value in the metadata.
fn set(meta: &mut [(String, Value)], key: &str, value: Value) {
    let entry = meta.iter_mut().find(|(k, _)| k == key).unwrap();
    entry.1 = value;
}

/// A GGUF v3 file built byte by byte, for what no writer produces: metadata (strings, u32s,
/// f32s), tensor infos with raw dimension lists (innermost first), ggml type id and offset,
/// padding to 32, then `data` zero bytes.
fn raw_gguf(meta: &[(&str, Value)], tensors: &[(&str, &[u64], u32, u64)], data: usize) -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut b, key);
        match value {
            Value::String(s) => {
                b.extend(8u32.to_le_bytes());
                string(&mut b, s);
            }
            Value::U32(v) => b.extend([4u32.to_le_bytes(), v.to_le_bytes()].concat()),
            Value::F32(v) => b.extend([6u32.to_le_bytes(), v.to_le_bytes()].concat()),
            other => panic!("raw_gguf does not write {other:?}"),
        }
    }
    for (name, dims, ggml_type, offset) in tensors {
        string(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(ggml_type.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }
    b.resize(b.len().next_multiple_of(32) + data, 0);
    b
}

// Issue 23, finding 2: a token embedding without dimensions (like the probe's 352-byte file:
// the hyper-parameters and that one F32 tensor) panicked with an index out of bounds.
#[test]
fn a_token_embedding_without_dimensions_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("no-dims.gguf");
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ];
    let bytes = raw_gguf(&meta, &[("token_embd.weight", &[], 0, 0)], 4);
    std::fs::write(&gguf, bytes).unwrap();
    assert_rejected(&gguf, &["tensor 'token_embd.weight'", "no dimensions"]);
}

// Issue 23, finding 8: inconsistent files were accepted with exit code 0.
#[test]
fn a_duplicated_tensor_name_is_an_error() {
    let (_dir, gguf) = edited("duplicate.gguf", |(_, tensors)| {
        tensors.push(("output_norm.weight".into(), f32_tensor(&[HIDDEN])));
    });
    assert_rejected(&gguf, &["tensor 'output_norm.weight' is listed twice"]);
}

#[test]
fn a_nan_rope_frequency_base_is_an_error() {
    let (_dir, gguf) = edited("nan-rope.gguf", |(meta, _)| {
        set(meta, "llama.rope.freq_base", Value::F32(f32::NAN));
    });
    assert_rejected(&gguf, &["llama.rope.freq_base is NaN"]);
}

#[test]
fn a_block_count_unlike_the_layers_is_an_error() {
    let (_dir, gguf) = edited("block-count.gguf", |(meta, _)| {
        set(meta, "llama.block_count", Value::U32(u32::MAX));
    });
    assert_rejected(
        &gguf,
        &[
            "llama.block_count is 4294967295",
            "2 layers (blk.0 to blk.1)",
        ],
    );
}

#[test]
fn an_embedding_length_unlike_the_tensors_is_an_error() {
    let (_dir, gguf) = edited("embedding-length.gguf", |(meta, _)| {
        set(
            meta,
            "llama.embedding_length",
            Value::U32(HIDDEN as u32 + 1),
        );
    });
    assert_rejected(
        &gguf,
        &[
            "llama.embedding_length is 17",
            "token_embd.weight has shape [5, 16]",
        ],
    );
}

#[test]
fn a_misaligned_tensor_offset_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("misaligned.gguf");
    write_gguf(&gguf, "llama");
    let mut bytes = std::fs::read(&gguf).unwrap();
    // blk.0.attn_norm.weight's info: name (u64 length, bytes), 1 dimension (u32 count, u64),
    // type (u32), then its offset (u64), moved 4 bytes on.
    let name = b"blk.0.attn_norm.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let offset_at = at + 4 + 8 + 4;
    let offset = u64::from_le_bytes(bytes[offset_at..offset_at + 8].try_into().unwrap());
    bytes[offset_at..offset_at + 8].copy_from_slice(&(offset + 4).to_le_bytes());
    std::fs::write(&gguf, bytes).unwrap();
    assert_rejected(
        &gguf,
        &[
            "tensor 'blk.0.attn_norm.weight'",
            &format!(
                "offset {} is not a multiple of the alignment 32",
                offset + 4
            ),
        ],
    );
}

/// On a real file, qpipe's reader sees the header candle's does: every key and value, every
/// tensor's shape, type and offset, and the data section's start.
#[test]
fn the_reader_agrees_with_candle_on_smollm2() {
    let Some(dir) = common::fetched_model("smollm2-135m-gguf") else {
        return;
    };
    let bytes = std::fs::read(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let header = qpipe::gguf::reader::read(&bytes).unwrap();
    let candle = gguf_file::Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    assert_eq!(header.data_start, candle.tensor_data_offset);
    assert_eq!(header.metadata.len(), candle.metadata.len());
    for (key, value) in &header.metadata {
        assert_eq!(
            format!("{value:?}"),
            format!("{:?}", candle.metadata[key]),
            "{key}"
        );
    }
    assert_eq!(header.tensors.len(), candle.tensor_infos.len());
    for t in &header.tensors {
        let info = &candle.tensor_infos[&t.name];
        assert_eq!(
            (t.shape.as_slice(), t.ggml_type, t.offset),
            (info.shape.dims(), info.ggml_dtype, info.offset),
            "{}",
            t.name
        );
    }
}
