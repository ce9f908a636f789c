use super::*;
use crate::gguf::encode::{ggml_type_id, Place, Sink};
use crate::Result;
use proptest::prelude::*;
use std::path::Path;

/// Bytes written with the writer's encoding primitives.
fn encode(write: impl FnOnce(&mut Sink<'_>) -> Result<()>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut sink = Sink {
        out: &mut bytes,
        tmp: Path::new("test.gguf"),
        pos: 0,
    };
    write(&mut sink).unwrap();
    bytes
}

/// A tensor info as written: name, dimensions innermost first, ggml type id, data offset.
type Info<'a> = (&'a str, &'a [u64], u32, u64);

/// A GGUF v3 file: the metadata, the tensor infos, padding to 32, then `data` bytes of data.
fn gguf(meta: &[(&str, Value)], infos: &[Info<'_>], data: usize) -> Vec<u8> {
    encode(|w| {
        w.u32(MAGIC)?;
        w.u32(3)?;
        w.u64(infos.len() as u64)?;
        w.u64(meta.len() as u64)?;
        for (key, value) in meta {
            w.string(key)?;
            w.value(key, value, Place::KeyValue)?;
        }
        for (name, dims, ty, offset) in infos {
            w.string(name)?;
            w.u32(dims.len() as u32)?;
            for d in *dims {
                w.u64(*d)?;
            }
            w.u32(*ty)?;
            w.u64(*offset)?;
        }
        w.pad()?;
        w.bytes(&vec![0x3c; data])
    })
}

/// Metadata of every value type, nested arrays included.
fn every_value() -> Vec<(&'static str, Value)> {
    let s = |v: &str| Value::String(v.into());
    vec![
        ("general.architecture", s("llama")),
        ("general.alignment", Value::U32(32)),
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-3)),
        ("t.u16", Value::U16(60_000)),
        ("t.i16", Value::I16(-30_000)),
        ("t.i32", Value::I32(-7)),
        ("t.f32", Value::F32(1e-5)),
        ("t.bool", Value::Bool(true)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(-0.25)),
        ("t.empty", Value::Array(vec![])),
        ("t.strings", Value::Array(vec![s("a"), s(""), s("ünï")])),
        (
            "t.nested",
            Value::Array(vec![
                Value::Array(vec![Value::U8(1), Value::U8(2)]),
                Value::Array(vec![]),
            ]),
        ),
    ]
}

/// Three tensors: F32 [2, 3] at 0, Q4_0 [2, 32] (two 18-byte blocks) at 32 and F16 [4] at 96;
/// the file ends where the last one does.
const SAMPLE_TENSORS: [Info<'static>; 3] = [
    ("a", &[3, 2], 0, 0),
    ("b.weight", &[32, 2], 2, 32),
    ("c", &[4], 1, 96),
];

fn sample() -> Vec<u8> {
    gguf(&every_value(), &SAMPLE_TENSORS, 104)
}

fn error(bytes: &[u8]) -> String {
    match read(bytes) {
        Ok(h) => panic!("accepted: {h:?}"),
        Err(e) => e,
    }
}

/// `bytes` with `with` written over it at `at`.
fn patched(mut bytes: Vec<u8>, at: usize, with: &[u8]) -> Vec<u8> {
    bytes[at..at + with.len()].copy_from_slice(with);
    bytes
}

#[test]
fn reads_what_the_encoder_wrote() {
    let bytes = sample();
    let h = read(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 32);
    assert_eq!(h.data_start % 32, 0);
    assert_eq!(h.data_start + 104, bytes.len() as u64);
    let want = every_value();
    assert_eq!(h.metadata.len(), want.len());
    for ((key, value), (want_key, want_value)) in h.metadata.iter().zip(&want) {
        assert_eq!(key, want_key);
        assert_eq!(format!("{value:?}"), format!("{want_value:?}"), "{key}");
    }
    assert!(matches!(h.get("t.u8"), Some(Value::U8(200))));
    let got: Vec<_> = h
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                t.shape.clone(),
                t.ggml_type,
                t.offset,
                t.bytes,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a", vec![2, 3], GgmlDType::F32, 0, 24),
            ("b.weight", vec![2, 32], GgmlDType::Q4_0, 32, 36),
            ("c", vec![4], GgmlDType::F16, 96, 8),
        ]
    );
    assert_eq!(h.tensor("c").map(|t| t.bytes), Some(8));
}

#[test]
fn agrees_with_candle_and_candle_reads_the_data() {
    let bytes = sample();
    let ours = read(&bytes).unwrap().to_content();
    let candle = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    assert_eq!(ours.tensor_data_offset, candle.tensor_data_offset);
    assert_eq!(ours.metadata.len(), candle.metadata.len());
    for (key, value) in &candle.metadata {
        assert_eq!(
            format!("{:?}", ours.metadata[key]),
            format!("{value:?}"),
            "{key}"
        );
    }
    assert_eq!(ours.tensor_infos.len(), candle.tensor_infos.len());
    for (name, info) in &candle.tensor_infos {
        let mine = &ours.tensor_infos[name];
        assert_eq!(mine.shape.dims(), info.shape.dims(), "{name}");
        assert_eq!(mine.ggml_dtype, info.ggml_dtype, "{name}");
        assert_eq!(mine.offset, info.offset, "{name}");
    }
    let device = candle_core::Device::Cpu;
    let b = ours
        .tensor(&mut std::io::Cursor::new(&bytes), "b.weight", &device)
        .unwrap();
    assert_eq!(b.dequantize(&device).unwrap().dims(), [2, 32]);
}

#[test]
fn the_writers_own_file_reads_back() {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    let ckpt = crate::checkpoint::Checkpoint::open(&tiny).unwrap();
    let types = std::collections::HashMap::from([
        (
            "model.layers.0.self_attn.q_proj.weight".to_string(),
            crate::quant::GgufType::Q4K,
        ),
        (
            "model.layers.1.mlp.down_proj.weight".to_string(),
            crate::quant::GgufType::Q5_1,
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let written = crate::gguf::writer::write(
        &ckpt,
        &types,
        &Default::default(),
        &Default::default(),
        &path,
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let h = read(&bytes).unwrap();
    assert_eq!(h.tensors.len(), written.tensors);
    let candle = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
    assert_eq!(h.data_start, candle.tensor_data_offset);
    assert_eq!(h.metadata.len(), candle.metadata.len());
    for t in &h.tensors {
        let info = &candle.tensor_infos[&t.name];
        assert_eq!(
            (t.shape.as_slice(), t.ggml_type, t.offset),
            (info.shape.dims(), info.ggml_dtype, info.offset),
            "{}",
            t.name
        );
    }
    let q = h.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.ggml_type, GgmlDType::Q4K);
    let last = h.tensors.iter().map(|t| t.offset + t.bytes).max().unwrap();
    assert!(h.data_start + last <= bytes.len() as u64);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    for n in 0..bytes.len() {
        let e = error(&bytes[..n]);
        assert!(
            e.contains("truncated") || e.contains("not a GGUF file") || e.contains("more than"),
            "cut at {n}: {e}"
        );
    }
}

#[test]
fn lying_counts_and_lengths_are_errors_before_any_allocation() {
    let bytes = sample();
    let huge = u64::MAX.to_le_bytes();
    // Tensor count, then metadata count.
    for at in [8, 16] {
        let e = error(&patched(bytes.clone(), at, &huge));
        assert!(e.contains("more than the"), "{e}");
    }
    // The first key's length.
    let e = error(&patched(bytes.clone(), 24, &huge));
    assert!(
        e.contains("metadata entry 0") && e.contains("truncated"),
        "{e}"
    );
    // An array's element count (t.strings: key length, key, type, element type, count).
    let strings = |meta: &[(&str, Value)]| gguf(meta, &[], 0);
    let one = strings(&[("k", Value::Array(vec![Value::U8(1)]))]);
    let count_at = 24 + 8 + 1 + 4 + 4;
    for count in [u64::MAX, 1 << 40, 100] {
        let e = error(&patched(one.clone(), count_at, &count.to_le_bytes()));
        assert!(
            e.contains("metadata 'k'") && e.contains("needs more than"),
            "{e}"
        );
    }
    // Dimension count, a dimension, an offset.
    let one = gguf(&[], &[("t", &[4], 0, 0)], 16);
    let n_dims_at = 24 + 8 + 1;
    let e = error(&patched(one.clone(), n_dims_at, &u32::MAX.to_le_bytes()));
    assert!(e.contains("tensor 't'") && e.contains("at most 4"), "{e}");
    let e = error(&patched(one.clone(), n_dims_at + 4, &huge));
    assert!(e.contains("overflow"), "{e}");
    let e = error(&patched(
        one.clone(),
        n_dims_at + 16,
        &(u64::MAX - 31).to_le_bytes(),
    ));
    assert!(e.contains("past the end"), "{e}");
    // Dimensions whose element count fits but whose size in bytes does not.
    let e = error(&gguf(&[], &[("t", &[1 << 31, 1 << 31], 0, 0)], 0));
    assert!(e.contains("overflow the data size"), "{e}");
    let e = error(&gguf(&[], &[("t", &[1 << 32, 1 << 32], 0, 0)], 0));
    assert!(e.contains("overflow the element count"), "{e}");
}

#[test]
fn duplicates_are_errors() {
    let e = error(&gguf(&[("k", Value::U8(1)), ("k", Value::U8(2))], &[], 0));
    assert!(e.contains("metadata key 'k' appears twice"), "{e}");
    let e = error(&gguf(&[], &[("t", &[4], 0, 0), ("t", &[4], 0, 32)], 48));
    assert!(e.contains("tensor 't' is listed twice"), "{e}");
}

#[test]
fn bad_tensor_infos_are_errors_naming_the_tensor() {
    let cases: [(Info<'_>, usize, &str); 7] = [
        (("t", &[4], 16, 0), 64, "unknown ggml type 16"),
        (("t", &[], 0, 0), 64, "no dimensions"),
        (("t", &[1, 1, 1, 1, 1], 0, 0), 64, "at most 4"),
        (("t", &[4, 0], 0, 0), 64, "dimension 0 of [0, 4] is 0"),
        (
            ("t", &[16, 2], 2, 0),
            64,
            "not a whole number of Q4_0 blocks",
        ),
        (
            ("t", &[4], 0, 8),
            64,
            "offset 8 is not a multiple of the alignment 32",
        ),
        (("t", &[4], 0, 0), 15, "past the end of the file"),
    ];
    for (info, data, want) in cases {
        let e = error(&gguf(&[], &[info], data));
        assert!(e.contains("tensor 't'") && e.contains(want), "{want}: {e}");
    }
    let e = error(&gguf(&[], &[("a", &[16], 0, 0), ("b", &[4], 0, 32)], 64));
    assert!(
        e.contains("'a'") && e.contains("'b'") && e.contains("overlap"),
        "{e}"
    );
}

#[test]
fn bad_headers_and_values_are_errors() {
    let bytes = sample();
    assert!(error(b"").contains("not a GGUF file"));
    assert!(error(b"GGML\x03\0\0\0").contains("not a GGUF file"));
    for version in [1u32, 4, 3 << 24] {
        let e = error(&patched(bytes.clone(), 4, &version.to_le_bytes()));
        assert!(e.contains(&format!("version {version}")), "{e}");
    }
    let value = |v: Value| error(&gguf(&[("k", v)], &[], 0));
    let e = error(&gguf(&[("general.alignment", Value::U32(48))], &[], 0));
    assert!(e.contains("general.alignment"), "{e}");
    let e = error(&gguf(&[("general.alignment", Value::U64(32))], &[], 0));
    assert!(e.contains("general.alignment"), "{e}");
    let mut deep = Value::U8(0);
    for _ in 0..MAX_DEPTH + 1 {
        deep = Value::Array(vec![deep]);
    }
    assert!(value(deep).contains("nested deeper"));
    // A value's type id (after the key "k"), an array's element type, a boolean byte, UTF-8.
    let one = gguf(&[("k", Value::Bool(true))], &[], 0);
    let type_at = 24 + 8 + 1;
    let e = error(&patched(one.clone(), type_at, &13u32.to_le_bytes()));
    assert!(
        e.contains("metadata 'k'") && e.contains("unknown value type 13"),
        "{e}"
    );
    let e = error(&patched(one.clone(), type_at + 4, &[2]));
    assert!(e.contains("boolean byte 2"), "{e}");
    let e = error(&patched(one.clone(), type_at - 1, &[0xff]));
    assert!(e.contains("not UTF-8"), "{e}");
    let list = gguf(&[("k", Value::Array(vec![Value::U8(1)]))], &[], 0);
    let e = error(&patched(list, type_at + 4, &99u32.to_le_bytes()));
    assert!(e.contains("unknown array element type 99"), "{e}");
}

#[test]
fn the_alignment_in_the_metadata_places_the_data() {
    let bytes = encode(|w| {
        w.u32(MAGIC)?;
        w.u32(2)?;
        w.u64(1)?;
        w.u64(1)?;
        w.string("general.alignment")?;
        w.value("", &Value::U32(64), Place::KeyValue)?;
        w.string("t")?;
        w.u32(1)?;
        w.u64(4)?;
        w.u32(0)?;
        w.u64(0)?;
        let pad = w.pos.next_multiple_of(64) - w.pos;
        w.bytes(&vec![0; pad as usize + 16])
    });
    let h = read(&bytes).unwrap();
    assert_eq!((h.version, h.alignment, h.data_start % 64), (2, 64, 0));
    assert_eq!(h.data_start + 16, bytes.len() as u64);
}

#[test]
fn every_known_type_id_round_trips() {
    for id in 0..64 {
        if let Some(t) = crate::gguf::encode::ggml_type(id) {
            assert_eq!(ggml_type_id(t), id);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Corrupting a valid file anywhere gives an answer, never a panic.
    #[test]
    fn corrupted_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = sample();
        for (at, b) in edits {
            let at = at.index(bytes.len());
            bytes[at] = b;
        }
        let _ = read(&bytes);
        let _ = read(&bytes[..cut.index(bytes.len() + 1)]);
    }

    /// Arbitrary bytes behind a valid start give an answer, never a panic.
    #[test]
    fn arbitrary_headers_never_panic(rest in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = b"GGUF\x03\0\0\0".to_vec();
        bytes.extend(rest);
        let _ = read(&bytes);
    }
}
