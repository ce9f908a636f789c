use super::*;
use crate::checkpoint::write::{write_safetensors, LazyTensor};
use crate::model::arch;
use candle_core::Device;
use std::path::Path;

const H: usize = 16;
const I: usize = 40;
const VOCAB: usize = 50;
const LAYERS: usize = 2;

/// Deterministic pseudo-random values in [-scale, scale) (splitmix64 on a per-tensor seed).
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn config_json(hidden_act: &str, heads: usize, extra: &str) -> String {
    format!(
        r#"{{"architectures": ["BertModel"], "vocab_size": {VOCAB}, "hidden_size": {H},
        "num_hidden_layers": {LAYERS}, "num_attention_heads": {heads},
        "intermediate_size": {I}, "hidden_act": "{hidden_act}",
        "max_position_embeddings": 32, "type_vocab_size": 2, "layer_norm_eps": 1e-12{extra}}}"#
    )
}

/// A tiny random BERT checkpoint in `dir`, tensors named with `prefix`.
fn write_tiny(dir: &Path, prefix: &str, config: &str) {
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![VOCAB, H]),
        ("embeddings.position_embeddings.weight".into(), vec![32, H]),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, H]),
        ("embeddings.LayerNorm.weight".into(), vec![H]),
        ("embeddings.LayerNorm.bias".into(), vec![H]),
    ];
    for l in 0..LAYERS {
        let lp = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", H, H),
            ("attention.self.key", H, H),
            ("attention.self.value", H, H),
            ("attention.output.dense", H, H),
            ("intermediate.dense", I, H),
            ("output.dense", H, I),
        ] {
            shapes.push((format!("{lp}.{name}.weight"), vec![out, inp]));
            shapes.push((format!("{lp}.{name}.bias"), vec![out]));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            shapes.push((format!("{lp}.{norm}.weight"), vec![H]));
            shapes.push((format!("{lp}.{norm}.bias"), vec![H]));
        }
    }
    let tensors: Vec<(String, LazyTensor)> = shapes
        .into_iter()
        .enumerate()
        .map(|(seed, (name, shape))| {
            let n = shape.iter().product();
            let is_norm_weight = name.contains("LayerNorm.weight");
            let t = LazyTensor::f32(shape, move || {
                let v = values(seed as u64, n, 0.5);
                if is_norm_weight {
                    v.iter().map(|x| 1.0 + x).collect()
                } else {
                    v
                }
            });
            (format!("{prefix}{name}"), t)
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
}

fn tiny(prefix: &str) -> (tempfile::TempDir, Checkpoint) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), prefix, &config_json("gelu", 4, ""));
    let ck = Checkpoint::open(dir.path()).unwrap();
    (dir, ck)
}

fn ids(rows: &[&[u32]]) -> (Tensor, Tensor) {
    let t = rows.iter().map(|r| r.len()).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in rows {
        for j in 0..t {
            ids.push(r.get(j).copied().unwrap_or(0));
            mask.push(u32::from(j < r.len()));
        }
    }
    let dev = Device::Cpu;
    (
        Tensor::from_vec(ids, (rows.len(), t), &dev).unwrap(),
        Tensor::from_vec(mask, (rows.len(), t), &dev).unwrap(),
    )
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2().unwrap()
}

#[test]
fn padding_a_sequence_does_not_change_its_embedding() {
    let (_dir, ck) = tiny("");
    let bert = Bert::load(&ck).unwrap();
    let short: &[u32] = &[2, 17, 33, 5, 3];
    let long: &[u32] = &[2, 9, 41, 8, 12, 30, 7, 44, 3];
    let (a_ids, a_mask) = ids(&[short]);
    let alone = rows(&bert.embed(&a_ids, &a_mask).unwrap());
    let (b_ids, b_mask) = ids(&[long, short]);
    let batched = rows(&bert.embed(&b_ids, &b_mask).unwrap());
    assert_eq!(batched.len(), 2);
    let diff = alone[0]
        .iter()
        .zip(&batched[1])
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "padding changed the embedding by {diff}");
    let norm: f32 = batched[1].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    // What sits under the padding is ignored; a changed real token is not.
    let with_pad = |tail: u32, first: u32| {
        let row: Vec<u32> = (0..long.len())
            .map(|j| match j {
                0 => first,
                j if j < short.len() => short[j],
                _ => tail,
            })
            .collect();
        let ids = Tensor::cat(
            &[
                b_ids.narrow(0, 0, 1).unwrap(),
                Tensor::from_vec(row, (1, long.len()), &Device::Cpu).unwrap(),
            ],
            0,
        )
        .unwrap();
        rows(&bert.embed(&ids, &b_mask).unwrap()).remove(1)
    };
    assert_eq!(with_pad(40, short[0]), with_pad(0, short[0]));
    assert_ne!(with_pad(0, 11), with_pad(0, short[0]));
}

#[test]
fn all_padding_row_gives_zeros_not_nan() {
    let (_dir, ck) = tiny("");
    let bert = Bert::load(&ck).unwrap();
    let (ids, _) = ids(&[&[2, 3, 4]]);
    let mask = Tensor::zeros((1, 3), DType::U32, &Device::Cpu).unwrap();
    let e = rows(&bert.embed(&ids, &mask).unwrap());
    assert!(e[0].iter().all(|v| *v == 0.0));
}

#[test]
fn bert_prefix_loads_and_linears_follow_the_forward_order() {
    let (_dir, ck) = tiny("bert.");
    let bert = Bert::load(&ck).unwrap();
    let names: Vec<&str> = bert.linears().iter().map(|l| l.name()).collect();
    assert_eq!(names.len(), LAYERS * 6);
    assert_eq!(names[0], "bert.encoder.layer.0.attention.self.query.weight");
    assert_eq!(names[11], "bert.encoder.layer.1.output.dense.weight");
    // The same list the architecture module reports as quantizable.
    let expected: Vec<String> = arch::matmul_weights(&ck, Some(Family::Bert))
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, expected);
    assert_eq!(bert.linears()[4].shape(), (I, H));
    // A prefixed and an unprefixed copy of the same weights compute the same thing.
    let (_d2, plain) = tiny("");
    let plain = Bert::load(&plain).unwrap();
    let (i, m) = ids(&[&[2, 10, 20, 3]]);
    assert_eq!(
        rows(&bert.embed(&i, &m).unwrap()),
        rows(&plain.embed(&i, &m).unwrap())
    );
}

#[test]
fn too_long_or_out_of_vocab_input_is_an_error_not_a_panic() {
    let (_dir, ck) = tiny("");
    let bert = Bert::load(&ck).unwrap();
    let long = Tensor::zeros((1, 33), DType::U32, &Device::Cpu).unwrap();
    let err = bert.forward(&long, &long.ones_like().unwrap()).unwrap_err();
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    let (oov, mask) = ids(&[&[2, VOCAB as u32, 3]]);
    assert!(bert.forward(&oov, &mask).is_err());
}

fn load_err(config: &str) -> Error {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), "", config);
    let ck = Checkpoint::open(dir.path()).unwrap();
    match Bert::load(&ck) {
        Ok(_) => panic!("config accepted: {config}"),
        Err(e) => e,
    }
}

#[test]
fn unsupported_configs_are_rejected_naming_config_json() {
    let e = load_err(&config_json("relu", 4, ""));
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("config.json") && msg.contains("relu"), "{msg}");
    assert!(
        msg.contains("gelu_new") && msg.contains("gelu_pytorch_tanh"),
        "{msg}"
    );

    let e = load_err(&config_json(
        "gelu",
        4,
        r#", "position_embedding_type": "relative_key""#,
    ));
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("relative_key"), "{e}");

    let e = load_err(&config_json("gelu", 3, ""));
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("divisible"), "{e}");

    let e = load_err(&config_json("gelu", 0, ""));
    assert!(e.to_string().contains("num_attention_heads is 0"), "{e}");
}

#[test]
fn tanh_gelu_is_accepted_and_differs_from_exact_gelu() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny(dir.path(), "", &config_json("gelu_new", 4, ""));
    let approx = Bert::load(&Checkpoint::open(dir.path()).unwrap()).unwrap();
    let (_d, exact) = tiny("");
    let exact = Bert::load(&exact).unwrap();
    let (i, m) = ids(&[&[2, 10, 20, 3]]);
    let a = rows(&approx.embed(&i, &m).unwrap());
    let e = rows(&exact.embed(&i, &m).unwrap());
    let diff = a[0]
        .iter()
        .zip(&e[0])
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff > 0.0 && diff < 1e-2, "{diff}");
}
