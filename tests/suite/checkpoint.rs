//! Checkpoint reading: layouts, value round trips, shards, statistics and architecture detection.

use crate::common::synthetic::{encode, normal_values, write_llama, LlamaSpec};
use crate::common::{self, raw_safetensors};
use qpipe::checkpoint::write::{write_safetensors, LazyTensor};
use qpipe::checkpoint::{stats, Checkpoint, Dtype};
use qpipe::model::arch::{self, DetectedFrom, Family};
use std::path::Path;

fn write_tensors(path: &Path, tensors: Vec<(&str, Dtype, Vec<usize>, Vec<f32>)>) {
    let lazy: Vec<(String, LazyTensor)> = tensors
        .into_iter()
        .map(|(n, d, s, v)| (n.to_string(), LazyTensor::new(d, s, move || encode(&v, d))))
        .collect();
    write_safetensors(path, &lazy, None).unwrap();
}

#[test]
fn opens_file_and_directory_with_side_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LlamaSpec::tiny();
    let file = write_llama(dir.path(), &spec, 1);
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    for target in [dir.path(), file.as_path()] {
        let c = Checkpoint::open(target).unwrap();
        assert_eq!(c.len(), spec.tensors().len());
        let expected: u64 = spec
            .tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum();
        assert_eq!(c.parameter_count(), expected);
        assert_eq!(c.bytes_by_dtype()["F32"], expected * 4);
        assert!(c.config().is_some());
        assert!(c.tokenizer_path().is_some());
    }
}

#[test]
fn float_dtypes_decode_and_convert_to_candle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let values = normal_values(999, 1.0, 3);
    write_tensors(
        &path,
        vec![
            ("f32", Dtype::F32, vec![27, 37], values.clone()),
            ("f16", Dtype::F16, vec![999], values.clone()),
            ("bf16", Dtype::BF16, vec![3, 333], values.clone()),
        ],
    );
    let c = Checkpoint::open(&path).unwrap();
    let expect = |d: Dtype| -> Vec<f32> {
        values
            .iter()
            .map(|&v| match d {
                Dtype::F16 => half::f16::from_f32(v).to_f32(),
                Dtype::BF16 => half::bf16::from_f32(v).to_f32(),
                _ => v,
            })
            .collect()
    };
    for (name, dtype) in [
        ("f32", Dtype::F32),
        ("f16", Dtype::F16),
        ("bf16", Dtype::BF16),
    ] {
        let t = c.tensor(name).unwrap();
        assert_eq!(t.dtype, dtype);
        assert_eq!(t.to_f32_vec().unwrap(), expect(dtype), "{name}");
        // Decoding from an offset (the streaming path) gives the same elements.
        let mut part = vec![0f32; 100];
        t.decode_f32(500, &mut part).unwrap();
        assert_eq!(part, expect(dtype)[500..600]);
        let candle = t.to_candle(&candle_core::Device::Cpu).unwrap();
        assert_eq!(candle.dims(), t.shape);
        let back: Vec<f32> = candle
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(back, expect(dtype), "{name} via candle");
    }
}

#[test]
fn integer_dtypes_are_listed_but_refused_for_compute() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let header = r#"{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"w":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}"#;
    let mut data = vec![0u8; 16];
    data.extend(1.5f32.to_le_bytes());
    data.extend((-2.0f32).to_le_bytes());
    std::fs::write(&path, raw_safetensors(header, &data)).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    let ids = c.tensor("ids").unwrap();
    let err = ids
        .to_candle(&candle_core::Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.safetensors") && err.contains("I64") && err.contains("'ids'"),
        "{err}"
    );
    assert!(ids.to_f32_vec().is_err());
    let s = stats::compute(&c).unwrap();
    assert_eq!(s.len(), 1, "stats skip integer tensors");
    assert_eq!((s[0].min, s[0].max, s[0].absmax), (-2.0, 1.5, 2.0));
}

fn write_sharded(dir: &Path) {
    write_tensors(
        &dir.join("model-00001-of-00002.safetensors"),
        vec![("a", Dtype::F32, vec![2], vec![1.0, 2.0])],
    );
    write_tensors(
        &dir.join("model-00002-of-00002.safetensors"),
        vec![("b", Dtype::F16, vec![3], vec![3.0, 4.0, 5.0])],
    );
    let index = r#"{"metadata":{"total_size":14},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
}

#[test]
fn sharded_checkpoint_via_index_or_directory() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path());
    for target in [
        dir.path().to_path_buf(),
        dir.path().join("model.safetensors.index.json"),
    ] {
        let c = Checkpoint::open(&target).unwrap();
        assert_eq!(c.files().count(), 2);
        assert_eq!(
            c.tensor("b").unwrap().to_f32_vec().unwrap(),
            vec![3.0, 4.0, 5.0]
        );
        assert!(c
            .tensor("b")
            .unwrap()
            .file
            .ends_with("model-00002-of-00002.safetensors"));
        assert_eq!(c.parameter_count(), 5);
    }
}

fn open_err(path: &Path) -> String {
    match Checkpoint::open(path) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn shard_inconsistencies_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path());
    let index = dir.path().join("model.safetensors.index.json");

    std::fs::write(
        &index,
        r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00003.safetensors"}}"#,
    )
    .unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("shard 'model-00003.safetensors' is listed but missing"),
        "{e}"
    );

    std::fs::write(&index, r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors"}}"#).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("tensor 'b' is listed in shard 'model-00001-of-00002.safetensors'"),
        "{e}"
    );

    std::fs::write(
        &index,
        r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"../escape.safetensors"}}"#,
    )
    .unwrap();
    assert!(open_err(dir.path()).contains("must be a relative path inside"));

    std::fs::write(
        &index,
        r#"{"weight_map":{"a":"model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    // The second shard is no longer listed, so only shard 1 is opened and all is consistent.
    assert_eq!(Checkpoint::open(dir.path()).unwrap().len(), 1);

    // Duplicate tensor names across shards.
    write_tensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        vec![("a", Dtype::F32, vec![1], vec![9.0])],
    );
    std::fs::write(&index, r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","x":"model-00002-of-00002.safetensors"}}"#).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("duplicate names across shards") && e.contains("'a'"),
        "{e}"
    );

    std::fs::write(&index, "{not json").unwrap();
    assert!(open_err(&index).contains("invalid shard index JSON"));
}

/// Statistics from a plain f64 two-pass computation, as an independent reference.
fn naive(values: &[f32]) -> (f32, f32, f64, f64, u64, u64, u64) {
    let finite: Vec<f64> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| v as f64)
        .collect();
    let n = finite.len() as f64;
    let mean = finite.iter().sum::<f64>() / n;
    let std = (finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    let outliers = finite
        .iter()
        .filter(|v| (*v - mean).abs() > 6.0 * std)
        .count() as u64;
    let min = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::INFINITY, f32::min);
    let max = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let nan = values.iter().filter(|v| v.is_nan()).count() as u64;
    let inf = values.iter().filter(|v| v.is_infinite()).count() as u64;
    (min, max, mean, std, outliers, nan, inf)
}

fn planted() -> Vec<f32> {
    // 2.5M elements (spans three parallel chunks), N(0.01, 0.02) with outliers, NaN and Inf.
    let mut v: Vec<f32> = normal_values(2_500_000, 0.02, 11)
        .iter()
        .map(|x| x + 0.01)
        .collect();
    for (k, i) in (0..v.len()).step_by(10_007).enumerate() {
        v[i] = if k % 2 == 0 { 0.5 } else { -0.45 };
    }
    v[1_234_567] = f32::NAN;
    v[42] = f32::INFINITY;
    v[2_000_001] = f32::NEG_INFINITY;
    v
}

#[test]
fn stats_match_an_independent_reference() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let v = planted();
    let bf: Vec<f32> = v
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    write_tensors(
        &path,
        vec![
            ("planted_f32", Dtype::F32, vec![2500, 1000], v.clone()),
            ("planted_bf16", Dtype::BF16, vec![2_500_000], v.clone()),
            ("ones", Dtype::F16, vec![64], vec![1.0; 64]),
        ],
    );
    let c = Checkpoint::open(&path).unwrap();
    let all = stats::compute(&c).unwrap();
    for (name, values) in [("planted_f32", &v), ("planted_bf16", &bf)] {
        let s = all.iter().find(|s| s.name == name).unwrap();
        let (min, max, mean, std, outliers, nan, inf) = naive(values);
        assert_eq!(
            (s.min, s.max, s.absmax),
            (min, max, min.abs().max(max)),
            "{name}"
        );
        assert!(
            (s.mean - mean).abs() < 1e-9,
            "{name}: mean {} vs {mean}",
            s.mean
        );
        assert!(
            (s.std - std).abs() / std < 1e-7,
            "{name}: std {} vs {std}",
            s.std
        );
        assert_eq!((s.nan, s.inf), (nan, inf));
        assert_eq!(
            (s.outlier_share * (s.numel - nan - inf) as f64).round() as u64,
            outliers
        );
        assert!(outliers >= 200, "planted outliers are found ({outliers})");
    }
    let ones = all.iter().find(|s| s.name == "ones").unwrap();
    assert_eq!((ones.mean, ones.std, ones.outlier_share), (1.0, 0.0, 0.0));
}

#[test]
fn stats_do_not_depend_on_thread_count() {
    let _cpu = common::busy();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_tensors(&path, vec![("w", Dtype::F32, vec![2_500_000], planted())]);
    let c = Checkpoint::open(&path).unwrap();
    let run = |threads| common::on_threads(threads, || stats::compute(&c).unwrap());
    let (one, two) = (run(1), run(2));
    assert_eq!(format!("{one:?}"), format!("{two:?}"));
}

#[test]
fn architecture_from_config_then_tensor_names() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LlamaSpec {
        layers: 3,
        tied: false,
        ..LlamaSpec::tiny()
    };
    write_llama(dir.path(), &spec, 5);
    let c = Checkpoint::open(dir.path()).unwrap();
    let a = arch::detect(&c);
    assert_eq!(
        (a.family, a.detected_from),
        (Some(Family::Llama), DetectedFrom::ConfigArchitectures)
    );
    let w = arch::matmul_weights(&c, a.family);
    assert_eq!(w.len(), 3 * 7 + 1);
    assert_eq!(w[0].name, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(w[6].role, "mlp.down_proj");
    assert_eq!((w[21].name.as_str(), w[21].layer), ("lm_head.weight", None));

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let c = Checkpoint::open(dir.path()).unwrap();
    let a = arch::detect(&c);
    assert_eq!(
        (a.family, a.detected_from),
        (Some(Family::Llama), DetectedFrom::TensorNames)
    );

    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures":["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    let c = Checkpoint::open(dir.path()).unwrap();
    let a = arch::detect(&c);
    assert_eq!((a.family, a.name.as_str()), (None, "GPT2LMHeadModel"));
    // Unknown family: the heuristic still finds the 2-D per-layer weights but no norms.
    assert_eq!(arch::matmul_weights(&c, None).len(), 3 * 7);
}

#[test]
fn bert_names_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut tensors = vec![("embeddings.word_embeddings.weight".to_string(), vec![50, 8])];
    for l in 0..2 {
        for (role, shape) in [
            ("attention.self.query.weight", vec![8, 8]),
            ("attention.self.key.weight", vec![8, 8]),
            ("attention.self.value.weight", vec![8, 8]),
            ("attention.output.dense.weight", vec![8, 8]),
            ("attention.output.LayerNorm.weight", vec![8]),
            ("intermediate.dense.weight", vec![32, 8]),
            ("output.dense.weight", vec![8, 32]),
        ] {
            tensors.push((format!("encoder.layer.{l}.{role}"), shape));
        }
    }
    tensors.push(("pooler.dense.weight".into(), vec![8, 8]));
    let lazy: Vec<(String, LazyTensor)> = tensors
        .into_iter()
        .map(|(n, s)| {
            let k = s.iter().product();
            (n, LazyTensor::f32(s, move || vec![0.5; k]))
        })
        .collect();
    write_safetensors(&path, &lazy, None).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    let a = arch::detect(&c);
    assert_eq!(a.family, Some(Family::Bert));
    let w = arch::matmul_weights(&c, a.family);
    assert_eq!(
        w.len(),
        12,
        "6 per layer; the pooler is not on the embedding path"
    );
    assert_eq!(w[4].role, "intermediate.dense");
}
