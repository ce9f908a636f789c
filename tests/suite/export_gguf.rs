//! `gguf::writer::write` on the committed demo model (models/tiny: Llama, 4 layers, hidden 256,
//! ffn 640, vocab 2048, tied): read back by candle's GGUF reader and by llama.cpp's own Python
//! reader (PyPI `gguf`), imported back to HF weights equal to the fake-quantized originals, and
//! one-line errors that leave no file behind.

use crate::common;
use crate::common::{gguf_name, llama_cpp_permute};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use qpipe::checkpoint::Checkpoint;
use qpipe::gguf::writer::{write, Input, Written};
use qpipe::quant::{fake_quantize, Calibrator, Format, GgufType, Rescale};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const ROLES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// A mix of every type, each legal for its tensor (k-quants only on 256-column tensors; down
/// has 640 columns), layer 2 left in F32, the tied embedding in Q8_0; importance for two
/// k-quant tensors.
fn choice() -> (HashMap<String, GgufType>, HashMap<String, Vec<f32>>) {
    use GgufType::*;
    let per_layer: [[Option<GgufType>; 7]; 4] = [
        [
            Some(Q8_0),
            Some(Q4_0),
            Some(Q4_1),
            Some(Q5_0),
            Some(Q5_1),
            Some(Q4K),
            Some(Q8_0),
        ],
        [
            Some(Q4K),
            Some(Q6K),
            Some(Q5K),
            Some(Q3K),
            Some(Q2K),
            Some(Q6K),
            Some(Q4_1),
        ],
        [None; 7],
        [
            Some(Q5_1),
            Some(Q8_0),
            Some(Q6K),
            Some(Q4_0),
            Some(Q4K),
            Some(Q5_0),
            Some(Q5_1),
        ],
    ];
    let mut types = HashMap::new();
    for (layer, row) in per_layer.iter().enumerate() {
        for (role, t) in ROLES.iter().zip(row) {
            if let Some(t) = t {
                types.insert(format!("model.layers.{layer}.{role}.weight"), *t);
            }
        }
    }
    types.insert("model.embed_tokens.weight".into(), Q8_0);
    let importance = [
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.3.mlp.gate_proj.weight",
    ]
    .iter()
    .map(|n| {
        (
            n.to_string(),
            (0..256).map(|i| 0.5 + (i % 7) as f32).collect(),
        )
    })
    .collect();
    (types, importance)
}

/// The importance as the writer takes it, with qpipe's block search (the mse calibrator).
fn inputs(importance: &HashMap<String, Vec<f32>>) -> HashMap<String, Input<'_>> {
    importance
        .iter()
        .map(|(n, imp)| {
            let input = Input {
                importance: Some(imp),
                calibrator: Calibrator::Mse,
                gptq: None,
                rescale: Rescale::NONE,
            };
            (n.clone(), input)
        })
        .collect()
}

fn export(dir: &Path) -> (PathBuf, Written) {
    let ckpt = Checkpoint::open(common::tiny()).unwrap();
    let (types, importance) = choice();
    let path = dir.join("tiny.gguf");
    let written = write(&ckpt, &types, &inputs(&importance), &BTreeMap::new(), &path).unwrap();
    (path, written)
}

fn ggml(t: Option<GgufType>) -> GgmlDType {
    t.map_or(GgmlDType::F32, |t| t.ggml())
}

fn meta_u32(c: &Content, key: &str) -> u32 {
    match c.metadata.get(key) {
        Some(Value::U32(v)) => *v,
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn candle_reads_it_back_and_import_gives_the_fake_quantized_weights() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let (path, written) = export(dir.path());
    let ckpt = Checkpoint::open(common::tiny()).unwrap();
    let (types, importance) = choice();

    // (a) candle's reader: every tensor's type and shape, alignment, key metadata.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(written.bytes, bytes.len() as u64);
    let content = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    // 4 layers x 9 tensors + embedding + final norm; tied, so no output.weight.
    assert_eq!(content.tensor_infos.len(), 38);
    assert_eq!(written.tensors, 38);
    assert!(!content.tensor_infos.contains_key("output.weight"));
    assert_eq!(content.tensor_data_offset % 32, 0);
    for t in ckpt.tensors() {
        let info = &content.tensor_infos[&gguf_name(t.name)];
        assert_eq!(info.shape.dims(), t.shape, "{}", t.name);
        assert_eq!(
            info.ggml_dtype,
            ggml(types.get(t.name).copied()),
            "{}",
            t.name
        );
        assert_eq!(info.offset % 32, 0, "{}", t.name);
    }
    let f32_count = 38 - types.len();
    assert!(
        written.types.contains(&("f32".to_string(), f32_count)),
        "{:?}",
        written.types
    );
    assert!(
        written.types.contains(&("q8_0".to_string(), 4)),
        "{:?}",
        written.types
    );
    let s = |key: &str| match content.metadata.get(key) {
        Some(Value::String(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    };
    assert_eq!(s("general.architecture"), "llama");
    assert_eq!(s("tokenizer.ggml.model"), "gpt2");
    assert_eq!(s("tokenizer.ggml.pre"), "gpt-2");
    for (key, want) in [
        ("general.alignment", 32),
        ("llama.block_count", 4),
        ("llama.embedding_length", 256),
        ("llama.feed_forward_length", 640),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.context_length", 512),
        ("llama.rope.dimension_count", 64),
        ("llama.vocab_size", 2048),
        ("tokenizer.ggml.bos_token_id", 0),
        ("tokenizer.ggml.eos_token_id", 0),
    ] {
        assert_eq!(meta_u32(&content, key), want, "{key}");
    }
    let Some(Value::Array(tokens)) = content.metadata.get("tokenizer.ggml.tokens") else {
        panic!("no tokens")
    };
    assert_eq!(tokens.len(), 2048);
    assert!(matches!(&tokens[0], Value::String(s) if s == "<|endoftext|>"));
    let Some(Value::Array(token_types)) = content.metadata.get("tokenizer.ggml.token_type") else {
        panic!("no token types")
    };
    assert!(
        matches!(token_types[0], Value::I32(3)),
        "the special token is CONTROL"
    );
    assert!(token_types[1..].iter().all(|t| matches!(t, Value::I32(1))));

    // Layer 2 is F32: its Q and K data are exactly llama.cpp's permutation of the HF rows.
    for (role, heads) in [("q", 4), ("k", 2)] {
        let hf = ckpt
            .tensor(&format!("model.layers.2.self_attn.{role}_proj.weight"))
            .unwrap()
            .to_f32_vec()
            .unwrap();
        let stored = content
            .tensor(
                &mut std::io::Cursor::new(&bytes),
                &format!("blk.2.attn_{role}.weight"),
                &Device::Cpu,
            )
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(stored, llama_cpp_permute(&hf, heads, 256), "{role}");
    }

    // (b) qpipe's importer (names mapped back, permutation undone) gives the fake-quantized
    // originals: quantization acted on the right rows and the round trip is exact.
    let imported = dir.path().join("imported");
    qpipe::import::import_gguf(&path, &imported).unwrap();
    let back = Checkpoint::open(&imported).unwrap();
    assert_eq!(back.len(), 38);
    for t in ckpt.tensors() {
        let original = t.to_f32_vec().unwrap();
        // With importance the writer runs qpipe's block search, else llama.cpp's reference.
        let imp = importance.get(t.name).map(Vec::as_slice);
        let cal = imp.map_or(Calibrator::MinMax, |_| Calibrator::Mse);
        let expected = match types.get(t.name) {
            Some(&ty) => fake_quantize(
                &original,
                t.shape[0],
                t.shape[1],
                Format::Gguf(ty),
                cal,
                imp,
                None,
            )
            .unwrap(),
            None => original,
        };
        let got = back.tensor(t.name).unwrap().to_f32_vec().unwrap();
        let worst = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{}: max |diff| {worst}", t.name);
    }
    // Importance changed the k-quant result (so it was passed through, not dropped).
    let name = "model.layers.1.self_attn.q_proj.weight";
    let w = ckpt.tensor(name).unwrap().to_f32_vec().unwrap();
    let plain = fake_quantize(
        &w,
        256,
        256,
        Format::Gguf(GgufType::Q4K),
        Calibrator::MinMax,
        None,
        None,
    )
    .unwrap();
    assert_ne!(back.tensor(name).unwrap().to_f32_vec().unwrap(), plain);

    // The tokenizer survives the trip: same ids for the same text.
    let original = tokenizers::Tokenizer::from_file(common::tiny().join("tokenizer.json")).unwrap();
    let rebuilt = tokenizers::Tokenizer::from_file(imported.join("tokenizer.json")).unwrap();
    let text = "Call me Ishmael. In 1851,  he'd paid $3.50<|endoftext|>\n\nfor 12 OF THEM";
    assert_eq!(
        original.encode(text, true).unwrap().get_ids(),
        rebuilt.encode(text, true).unwrap().get_ids()
    );
}

/// The PyPI `gguf` package installed by scripts/fetch-models.sh (the PYTHONPATH), if present.
fn gguf_py() -> Option<PathBuf> {
    common::fetched("models/.pylib/gguf").and_then(|p| p.parent().map(Path::to_path_buf))
}

#[test]
fn llama_cpp_gguf_py_reads_the_chosen_types_shapes_and_metadata() {
    let _cpu = common::busy();
    let Some(lib) = gguf_py() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (path, written) = export(dir.path());
    let script = common::root().join("tests/fixtures/gguf_read.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&path)
        .env("PYTHONPATH", &lib)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let ckpt = Checkpoint::open(common::tiny()).unwrap();
    let (types, _) = choice();
    let tensors = json["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 38);
    let by_name: HashMap<&str, &serde_json::Value> = tensors
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t))
        .collect();
    for t in ckpt.tensors() {
        let g = by_name[gguf_name(t.name).as_str()];
        // gguf-py names types as ggml does: Q4_K, Q8_0, F32.
        let want = types.get(t.name).map_or("F32".to_string(), |ty| {
            Format::Gguf(*ty).to_string().to_uppercase()
        });
        assert_eq!(g["type"], want.as_str(), "{}", t.name);
        let shape: Vec<usize> = t.shape.iter().rev().copied().collect();
        assert_eq!(g["shape"], serde_json::json!(shape), "{}", t.name);
        let rows = t.shape[0];
        let cols = *t.shape.last().unwrap();
        let bytes = types.get(t.name).map_or(t.numel() * 4, |ty| {
            Format::Gguf(*ty).storage_bytes(rows, cols)
        });
        assert_eq!(g["bytes"], bytes, "{}", t.name);
        assert_eq!(g["offset"].as_u64().unwrap() % 32, 0, "{}", t.name);
    }
    // The last tensor ends inside the file.
    let end = tensors
        .iter()
        .map(|t| t["offset"].as_u64().unwrap() + t["bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(end <= written.bytes);

    let m = &json["metadata"];
    for (key, value, ty) in [
        ("general.architecture", serde_json::json!("llama"), "STRING"),
        ("general.alignment", serde_json::json!(32), "UINT32"),
        ("llama.block_count", serde_json::json!(4), "UINT32"),
        ("llama.context_length", serde_json::json!(512), "UINT32"),
        ("llama.embedding_length", serde_json::json!(256), "UINT32"),
        (
            "llama.feed_forward_length",
            serde_json::json!(640),
            "UINT32",
        ),
        ("llama.attention.head_count", serde_json::json!(4), "UINT32"),
        (
            "llama.attention.head_count_kv",
            serde_json::json!(2),
            "UINT32",
        ),
        (
            "llama.rope.dimension_count",
            serde_json::json!(64),
            "UINT32",
        ),
        (
            "llama.rope.freq_base",
            serde_json::json!(10000.0),
            "FLOAT32",
        ),
        ("tokenizer.ggml.model", serde_json::json!("gpt2"), "STRING"),
        ("tokenizer.ggml.pre", serde_json::json!("gpt-2"), "STRING"),
        (
            "tokenizer.ggml.bos_token_id",
            serde_json::json!(0),
            "UINT32",
        ),
        (
            "tokenizer.ggml.eos_token_id",
            serde_json::json!(0),
            "UINT32",
        ),
        (
            "tokenizer.ggml.add_bos_token",
            serde_json::json!(false),
            "BOOL",
        ),
    ] {
        assert_eq!(m[key]["value"], value, "{key}");
        assert_eq!(m[key]["type"], ty, "{key}");
    }
    let eps = m["llama.attention.layer_norm_rms_epsilon"]["value"]
        .as_f64()
        .unwrap();
    assert!((eps - 1e-5).abs() < 1e-10, "{eps}");
    for (key, len, first, ty) in [
        (
            "tokenizer.ggml.tokens",
            2048,
            serde_json::json!("<|endoftext|>"),
            "STRING",
        ),
        (
            "tokenizer.ggml.token_type",
            2048,
            serde_json::json!(3),
            "INT32",
        ),
        (
            "tokenizer.ggml.merges",
            1791,
            serde_json::json!("Ġ t"),
            "STRING",
        ),
    ] {
        assert_eq!(m[key]["array"], len, "{key}");
        assert_eq!(m[key]["first"], first, "{key}");
        assert_eq!(m[key]["type"], ty, "{key}");
    }
}

/// The error of a failed export, after checking it left nothing in `dir`.
fn failed(ckpt: &Checkpoint, types: &HashMap<String, GgufType>, dir: &Path) -> String {
    let path = dir.join("out.gguf");
    let err = write(ckpt, types, &HashMap::new(), &BTreeMap::new(), &path)
        .unwrap_err()
        .to_string();
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?} after: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_choices_and_inputs_fail_in_one_line_and_leave_no_file() {
    let _cpu = common::busy();
    let ckpt = Checkpoint::open(common::tiny()).unwrap();
    let out = tempfile::tempdir().unwrap();

    let down = "model.layers.0.mlp.down_proj.weight";
    let types = HashMap::from([(down.to_string(), GgufType::Q4K)]);
    let err = failed(&ckpt, &types, out.path());
    assert!(
        err.contains(down) && err.contains("q4_k") && err.contains("multiple of 256, got 640"),
        "{err}"
    );

    let types = HashMap::from([(
        "model.layers.9.mlp.up_proj.weight".to_string(),
        GgufType::Q8_0,
    )]);
    let err = failed(&ckpt, &types, out.path());
    assert!(
        err.contains("model.layers.9.mlp.up_proj.weight") && err.contains("not a tensor"),
        "{err}"
    );

    let types = HashMap::from([("model.norm.weight".to_string(), GgufType::Q8_0)]);
    let err = failed(&ckpt, &types, out.path());
    assert!(
        err.contains("model.norm.weight") && err.contains("vector"),
        "{err}"
    );

    // An existing file is left as it was by a failed export.
    let existing = out.path().join("keep.gguf");
    std::fs::write(&existing, b"old").unwrap();
    let types = HashMap::from([(down.to_string(), GgufType::Q6K)]);
    assert!(write(&ckpt, &types, &HashMap::new(), &BTreeMap::new(), &existing).is_err());
    assert_eq!(std::fs::read(&existing).unwrap(), b"old");
    std::fs::remove_file(&existing).unwrap();

    // Unwritable output: the error names the path.
    let nowhere = out.path().join("missing-dir/out.gguf");
    let err = write(
        &ckpt,
        &HashMap::new(),
        &HashMap::new(),
        &BTreeMap::new(),
        &nowhere,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing-dir"), "{err}");

    // A checkpoint without tokenizer.json, and one that is not a Llama.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::tiny().join("model.safetensors"),
        copy.path().join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(common::tiny().join("config.json")).unwrap();
    std::fs::write(copy.path().join("config.json"), &config).unwrap();
    let no_tokenizer = Checkpoint::open(copy.path()).unwrap();
    let err = failed(&no_tokenizer, &HashMap::new(), out.path());
    assert!(err.contains("tokenizer.json"), "{err}");

    std::fs::copy(
        common::tiny().join("tokenizer.json"),
        copy.path().join("tokenizer.json"),
    )
    .unwrap();
    let mistral = config.replace("LlamaForCausalLM", "MistralForCausalLM");
    std::fs::write(copy.path().join("config.json"), mistral).unwrap();
    let not_llama = Checkpoint::open(copy.path()).unwrap();
    let err = failed(&not_llama, &HashMap::new(), out.path());
    assert!(
        err.contains("config.json") && err.contains("MistralForCausalLM"),
        "{err}"
    );
}
