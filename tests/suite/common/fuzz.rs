//! Fuzz targets for qpipe's readers, and a seeded mutation loop that drives them.
//!
//! Each target takes raw bytes, as a cargo-fuzz or AFL target does. The first byte picks how
//! they become a file: built from a structured description decoded with `arbitrary` (a header
//! whose dtypes, shapes, offsets and lengths are valid, at their edges, or lying), that same
//! file with byte-level damage, or the bytes as they are. The file goes through the reader and
//! everything downstream of it that a user's command runs on an accepted file; a target fails
//! only by panicking (an error is the right answer to a bad file).
//!
//! Used by `tests/suite/fuzz.rs` (a short seeded run in CI, and the replay of every input in
//! `tests/fixtures/fuzz/`) and by `examples/fuzz.rs` (long runs; it saves panicking inputs).

use arbitrary::{Arbitrary, Unstructured};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A reader under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `Checkpoint::open` of a safetensors file, then `inspect --stats` of it.
    Safetensors,
    /// `Packed::open` of a packed checkpoint (its manifest), then every weight read and
    /// dequantized, and `inspect` of it.
    Packed,
    /// The GGUF reader (`qpipe::gguf::reader`), then `qpipe import` of what it accepts.
    Gguf,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 3] = [Target::Safetensors, Target::Packed, Target::Gguf];

    /// Its name (`--target` of the example, the folder of its saved inputs).
    pub fn name(self) -> &'static str {
        match self {
            Target::Safetensors => "safetensors",
            Target::Packed => "packed",
            Target::Gguf => "gguf",
        }
    }
}

/// Where the targets write the files they read: a per-process folder in /dev/shm (memory)
/// when there is one.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// A fresh folder for this thread.
    pub fn new() -> Scratch {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let id = format!("{:?}", std::thread::current().id())
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>();
        let dir = base.join(format!("qpipe-fuzz-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `target` on `data`: whether the reader accepted the file, or `Err` with the panic's
/// message if anything panicked.
pub fn exec(target: Target, data: &[u8], scratch: &Scratch) -> Result<bool, String> {
    let bytes = file_bytes(target, data);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_target(target, &bytes, scratch)
    }))
    .map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// The file `data` stands for: by its first byte, built from a structured description, that
/// file damaged byte by byte, or `data` itself.
pub fn file_bytes(target: Target, data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut u = Unstructured::new(rest);
    let built = |u: &mut Unstructured| match target {
        Target::Safetensors => SafetensorsSpec::arbitrary(u).map(|s| s.build()),
        Target::Packed => PackedSpec::arbitrary(u).map(|s| s.build()),
        Target::Gguf => GgufSpec::arbitrary(u).map(|s| s.build()),
    };
    match mode % 4 {
        0 | 1 => built(&mut u).unwrap_or_default(),
        2 => {
            let mut file = built(&mut u).unwrap_or_default();
            damage(&mut file, &mut u);
            file
        }
        _ => rest.to_vec(),
    }
}

fn run_target(target: Target, bytes: &[u8], scratch: &Scratch) -> bool {
    use qpipe::pipeline::inspect::{render, report, Stats};
    use qpipe::pipeline::Silent;
    match target {
        Target::Safetensors => {
            let path = scratch.dir.join("model.safetensors");
            std::fs::write(&path, bytes).expect("scratch write");
            let Ok(c) = qpipe::checkpoint::Checkpoint::open(&path) else {
                return false;
            };
            if let Ok(r) = report(&c, Stats::Compute, &Silent) {
                render(&r);
            }
            for t in c.tensors() {
                let _ = t.check_finite();
            }
            true
        }
        Target::Packed => {
            let path = scratch.dir.join("model.qpipe.safetensors");
            std::fs::write(&path, bytes).expect("scratch write");
            let Ok(p) = qpipe::packed::Packed::open(&path) else {
                return false;
            };
            {
                for name in p.manifest.tensors.keys() {
                    match p.weight(name) {
                        Ok(qpipe::quant::QuantizedTensor::Int(q)) => {
                            let _ = q.dequantize();
                        }
                        Ok(qpipe::quant::QuantizedTensor::Gguf(q)) => {
                            let _ = q.dequantize(&candle_core::Device::Cpu);
                        }
                        _ => {}
                    }
                }
                if let Ok(r) = report(&p.checkpoint, Stats::Skip, &Silent) {
                    render(&r);
                }
            }
            true
        }
        Target::Gguf => {
            if qpipe::gguf::reader::read(bytes).is_err() {
                return false;
            }
            let path = scratch.dir.join("model.gguf");
            std::fs::write(&path, bytes).expect("scratch write");
            let out = scratch.dir.join("imported");
            let _ = qpipe::import::import_gguf(&path, &out);
            let _ = std::fs::remove_dir_all(&out);
            true
        }
    }
}

/// Byte-level damage driven by `u`: bit flips, interesting values, cuts, insertions.
fn damage(file: &mut Vec<u8>, u: &mut Unstructured) {
    const INTERESTING: [u8; 8] = [0x00, 0xff, 0x7f, 0x80, 0x01, b'"', b'{', b'9'];
    let n = u.int_in_range(1..=8u8).unwrap_or(1);
    for _ in 0..n {
        if file.is_empty() {
            return;
        }
        let at = u.choose_index(file.len()).unwrap_or(0);
        match u.int_in_range(0..=4u8).unwrap_or(0) {
            0 => file[at] ^= 1 << u.int_in_range(0..=7u8).unwrap_or(0),
            1 => file[at] = *u.choose(&INTERESTING).unwrap_or(&0),
            2 => file.truncate(at),
            3 => {
                let len = u.int_in_range(1..=16usize).unwrap_or(1);
                let junk: Vec<u8> = (0..len).map(|_| u.arbitrary().unwrap_or(0)).collect();
                file.splice(at..at, junk);
            }
            _ => {
                let end = (at + u.int_in_range(1..=64usize).unwrap_or(1)).min(file.len());
                file.drain(at..end);
            }
        }
    }
}

/// A field that is mostly valid (`None`: the builder's valid value) and sometimes `T`, one
/// of its odd or lying variants: inputs that get past the first check reach the later ones.
#[derive(Debug)]
struct Mostly<T>(Option<T>);

impl<'a, T: Arbitrary<'a>> Arbitrary<'a> for Mostly<T> {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Mostly(if u.arbitrary::<u8>()? < 232 {
            None
        } else {
            Some(T::arbitrary(u)?)
        }))
    }
}

/// A number at an edge, or an ordinary one.
#[derive(Arbitrary, Debug)]
enum Dim {
    Small(u8),
    Zero,
    Edge(u64),
}

impl Mostly<Dim> {
    fn value(&self) -> u64 {
        self.0.as_ref().map_or(8, Dim::value)
    }
}

impl Dim {
    fn value(&self) -> u64 {
        match self {
            Dim::Small(v) => u64::from(*v % 48) + 1,
            Dim::Zero => 0,
            Dim::Edge(v) => {
                [u64::MAX, u64::MAX / 2, 1 << 32, 1 << 31, 65_536, *v][(*v % 6) as usize]
            }
        }
    }
}

/// A tensor name: ordinary, repeated, long or odd.
#[derive(Arbitrary, Debug)]
enum Name {
    Index(u8),
    Long(u8),
    Text(String),
    Empty,
}

impl Mostly<Name> {
    fn text(&self, role: &str) -> String {
        self.0
            .as_ref()
            .map_or_else(|| role.to_string(), |n| n.text(role))
    }
}

impl Name {
    fn text(&self, role: &str) -> String {
        match self {
            Name::Index(i) => format!("model.layers.{}.{role}", i % 4),
            Name::Long(n) => "n".repeat(65_536 + usize::from(*n)),
            Name::Text(s) => s.clone(),
            Name::Empty => String::new(),
        }
    }
}

/// Element values of float tensors.
#[derive(Arbitrary, Debug)]
enum Values {
    Normal,
    Nan,
    Inf,
    Huge,
    Bits(u32),
}

impl Mostly<Values> {
    fn f32(&self, i: usize) -> f32 {
        self.0.as_ref().unwrap_or(&Values::Normal).f32(i)
    }
}

impl Values {
    fn f32(&self, i: usize) -> f32 {
        match self {
            Values::Normal => (i as f32 * 0.37).sin(),
            Values::Nan => f32::NAN,
            Values::Inf => f32::NEG_INFINITY,
            Values::Huge => 3.0e38,
            Values::Bits(b) => f32::from_bits(b.wrapping_mul(i as u32 + 1)),
        }
    }
}

const DTYPES: [&str; 12] = [
    "F32", "F16", "BF16", "U8", "I8", "I16", "I32", "I64", "F64", "BOOL", "U64", "F8_E4M3",
];

fn dtype_size(d: &str) -> u64 {
    match d {
        "F32" | "I32" => 4,
        "F16" | "BF16" | "I16" => 2,
        "F64" | "I64" | "U64" => 8,
        _ => 1,
    }
}

/// A safetensors file as a list of tensors whose header may lie in any field.
#[derive(Arbitrary, Debug)]
struct SafetensorsSpec {
    tensors: Vec<TensorSpec>,
    metadata: Vec<(String, Meta)>,
    length: Mostly<Length>,
    tail: Mostly<Tail>,
    values: Values,
}

#[derive(Arbitrary, Debug)]
struct TensorSpec {
    name: Mostly<Name>,
    dtype: Mostly<DtypeSpec>,
    shape: Vec<Mostly<Dim>>,
    offsets: Mostly<Offsets>,
}

#[derive(Arbitrary, Debug)]
enum DtypeSpec {
    Known(u8),
    Other(String),
}

impl DtypeSpec {
    fn text(&self) -> String {
        match self {
            DtypeSpec::Known(i) => DTYPES[usize::from(*i) % 3 + usize::from(*i > 200) * 3].into(),
            DtypeSpec::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Offsets {
    Exact,
    Shift(i16),
    Swap,
    Edge(u64),
    NotPair,
}

#[derive(Arbitrary, Debug)]
enum Meta {
    Text(String),
    Number(i64),
    Nested,
}

#[derive(Arbitrary, Debug)]
enum Length {
    Exact,
    Lie(u64),
}

#[derive(Arbitrary, Debug)]
enum Tail {
    Exact,
    Cut(u16),
    Extra(u16),
}

/// Assembles a safetensors file: an 8-byte length, the header JSON (written by hand, so names
/// can repeat), and the data.
fn safetensors(header: &str, data: &[u8], length: &Mostly<Length>, tail: &Mostly<Tail>) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let n = match length.0 {
        None | Some(Length::Exact) => h.len() as u64,
        Some(Length::Lie(v)) => v,
    };
    let mut out = n.to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    tail.apply(&mut out);
    out
}

impl Mostly<Tail> {
    /// The file's end cut or extended.
    fn apply(&self, out: &mut Vec<u8>) {
        match self.0 {
            None | Some(Tail::Exact) => {}
            Some(Tail::Cut(k)) => out.truncate(out.len().saturating_sub(usize::from(k))),
            Some(Tail::Extra(k)) => out.extend(std::iter::repeat_n(0u8, usize::from(k % 512))),
        }
    }
}

/// The data a tensor of `dtype` and `shape` takes, if it is small enough to build.
fn byte_size(dtype: &str, shape: &[u64]) -> Option<u64> {
    shape
        .iter()
        .try_fold(dtype_size(dtype), |a, &d| a.checked_mul(d))
        .filter(|&n| n <= 1 << 20)
}

impl SafetensorsSpec {
    fn build(&self) -> Vec<u8> {
        let mut entries = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        for (k, t) in self.tensors.iter().take(16).enumerate() {
            let dtype = t
                .dtype
                .0
                .as_ref()
                .map_or_else(|| "F32".to_string(), DtypeSpec::text);
            let shape: Vec<u64> = t.shape.iter().take(5).map(Mostly::value).collect();
            let size = byte_size(&dtype, &shape).unwrap_or(0);
            let start = data.len() as u64;
            if dtype == "F32" {
                data.extend((0..size / 4).flat_map(|i| self.values.f32(i as usize).to_le_bytes()));
            } else {
                data.extend((0..size).map(|i| (i * 31 + k as u64) as u8));
            }
            let end = data.len() as u64;
            let offsets = match t.offsets.0 {
                None | Some(Offsets::Exact) => format!("[{start},{end}]"),
                Some(Offsets::Shift(s)) => format!("[{},{}]", start as i64 + i64::from(s), end),
                Some(Offsets::Swap) => format!("[{end},{start}]"),
                Some(Offsets::Edge(e)) => format!("[{start},{e}]"),
                Some(Offsets::NotPair) => format!("[{start}]"),
            };
            entries.push(format!(
                "{}:{{\"dtype\":{},\"shape\":{:?},\"data_offsets\":{offsets}}}",
                json_str(&t.name.text(&format!("w{k}.weight"))),
                json_str(&dtype),
                shape
            ));
        }
        if !self.metadata.is_empty() {
            let fields: Vec<String> = self
                .metadata
                .iter()
                .take(8)
                .map(|(k, v)| {
                    let v = match v {
                        Meta::Text(s) => json_str(s),
                        Meta::Number(n) => n.to_string(),
                        Meta::Nested => "{\"a\":[1]}".into(),
                    };
                    format!("{}:{v}", json_str(k))
                })
                .collect();
            entries.push(format!("\"__metadata__\":{{{}}}", fields.join(",")));
        }
        safetensors(
            &format!("{{{}}}", entries.join(",")),
            &data,
            &self.length,
            &self.tail,
        )
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Format names a packed manifest may hold: every family and granularity, and nonsense.
const FORMATS: [&str; 16] = [
    "int4-g32-asym",
    "int4-g32-sym",
    "int8-channel-sym",
    "int3-g64-asym",
    "int2-tensor-sym",
    "int5-g128-pow2",
    "int6-g256-asym",
    "q4_0",
    "q8_0",
    "q4_k",
    "q6_k",
    "f16",
    "bf16",
    "f32",
    "int9-g32-sym",
    "banana",
];

/// A packed checkpoint: manifest entries whose fields may lie, and the parts they describe.
#[derive(Arbitrary, Debug)]
struct PackedSpec {
    entries: Vec<EntrySpec>,
    version: Mostly<u32>,
    raw_manifest: Mostly<String>,
    length: Mostly<Length>,
    tail: Mostly<Tail>,
}

#[derive(Arbitrary, Debug)]
struct EntrySpec {
    name: Mostly<Name>,
    format: u8,
    format_text: Mostly<String>,
    rows: Mostly<Dim>,
    cols: Mostly<Dim>,
    dtype: Mostly<DtypeSpec>,
    calibrator: u8,
    rounding: Mostly<String>,
    transform: Mostly<String>,
    input_quant: Option<QuantSpec>,
    parts: Mostly<Parts>,
    fill: u8,
    scale: Mostly<Values>,
}

#[derive(Arbitrary, Debug)]
struct QuantSpec {
    bits: u8,
    symmetric: bool,
    scale: Values,
    zero: i16,
}

impl QuantSpec {
    fn json(&self) -> serde_json::Value {
        let bits = [8, 16, 0, 3, 64][usize::from(self.bits) % 5];
        serde_json::json!({
            "bits": bits,
            "symmetric": self.symmetric,
            "scale": self.scale.f32(7),
            "zero": f32::from(self.zero),
        })
    }
}

#[derive(Arbitrary, Debug)]
enum Parts {
    Exact,
    Missing(u8),
    WrongDtype(u8),
    WrongShape(u8),
}

impl PackedSpec {
    fn build(&self) -> Vec<u8> {
        use qpipe::quant::{Format, Scheme};
        let mut tensors = serde_json::Map::new();
        let mut entries: Vec<String> = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        for (k, e) in self.entries.iter().take(6).enumerate() {
            let name = e.name.text(&format!("w{k}.weight"));
            let format = e
                .format_text
                .0
                .clone()
                .unwrap_or_else(|| FORMATS[usize::from(e.format) % FORMATS.len()].to_string());
            let (rows, cols) = (e.rows.value(), e.cols.value());
            let calibrator = ["mse", "minmax", "percentile:99.9", "entropy", "nope"]
                [usize::from(e.calibrator) % 5];
            let mut entry = serde_json::json!({
                "format": format,
                "calibrator": calibrator,
                "shape": [rows, cols],
                "dtype": e.dtype.0.as_ref().map_or_else(|| "F32".to_string(), DtypeSpec::text),
                "input_quant": e.input_quant.as_ref().map(QuantSpec::json),
            });
            if let Some(r) = &e.rounding.0 {
                entry["rounding"] = r.clone().into();
            }
            if let Some(t) = &e.transform.0 {
                entry["transform"] = t.clone().into();
            }
            tensors.insert(name.clone(), entry);
            // The parts the format stores, when the shape is small enough to build them.
            let (r, c) = (rows.min(64) as usize, cols.min(64) as usize);
            let parts: Vec<(String, &str, Vec<usize>, u64)> = match format.parse::<Format>() {
                Ok(Format::Int(f)) => {
                    let groups = f.groups(r, c);
                    let mut p = vec![
                        (
                            format!("{name}.qweight"),
                            "U8",
                            vec![r, qpipe_kernels::packed_len(c, f.bits)],
                            0,
                        ),
                        (format!("{name}.scales"), "F16", vec![groups], 1),
                    ];
                    if f.scheme == Scheme::Asymmetric {
                        p.push((format!("{name}.zeros"), "U8", vec![groups], 2));
                    }
                    p
                }
                Ok(f @ Format::Gguf(_)) => {
                    vec![(
                        format!("{name}.qweight"),
                        "U8",
                        vec![f.storage_bytes(r, c)],
                        0,
                    )]
                }
                Ok(Format::Float(t)) => {
                    vec![(
                        name.clone(),
                        ["F32", "F16", "BF16"][t as usize % 3],
                        vec![r, c],
                        3,
                    )]
                }
                Err(_) => vec![(name.clone(), "F32", vec![r, c], 3)],
            };
            for (i, (part, dtype, mut shape, kind)) in parts.into_iter().enumerate() {
                let mut dtype = dtype.to_string();
                match e.parts.0 {
                    Some(Parts::Missing(m)) if usize::from(m) % 3 == i => continue,
                    Some(Parts::WrongDtype(m)) if usize::from(m) % 3 == i => dtype = "I32".into(),
                    Some(Parts::WrongShape(m)) if usize::from(m) % 3 == i => shape.push(2),
                    _ => {}
                }
                let count: usize = shape.iter().product();
                let start = data.len();
                let size = count * dtype_size(&dtype) as usize;
                for j in 0..size {
                    data.push(match kind {
                        // Scales: f16 bits of the spec's values.
                        1 => half::f16::from_f32(e.scale.f32(j / 2).abs()).to_le_bytes()[j % 2],
                        // Zero-points.
                        2 => e.fill.wrapping_mul(j as u8 + 1),
                        3 => e.scale.f32(j / 4).to_le_bytes()[j % 4],
                        _ => (j as u8).wrapping_mul(e.fill | 1),
                    });
                }
                entries.push(format!(
                    "{}:{{\"dtype\":{},\"shape\":{:?},\"data_offsets\":[{start},{}]}}",
                    json_str(&part),
                    json_str(&dtype),
                    shape,
                    data.len()
                ));
            }
        }
        let manifest = self.raw_manifest.0.clone().unwrap_or_else(|| {
            serde_json::json!({
                "format_version": self.version.0.unwrap_or(qpipe::packed::FORMAT_VERSION),
                "tensors": tensors,
                "provenance": {
                    "input_sha256": "", "calibration_sha256": "", "seed": 0,
                    "qpipe_version": "fuzz", "command": []
                },
            })
            .to_string()
        });
        if entries.is_empty() {
            entries.push("\"pad\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}".into());
            data.push(0);
        }
        entries.push(format!(
            "\"__metadata__\":{{\"qpipe\":{}}}",
            json_str(&manifest)
        ));
        safetensors(
            &format!("{{{}}}", entries.join(",")),
            &data,
            &self.length,
            &self.tail,
        )
    }
}

/// A GGUF file: header counts, metadata and tensor infos that may lie.
#[derive(Arbitrary, Debug)]
struct GgufSpec {
    version: Mostly<u32>,
    tensor_count: Mostly<u64>,
    metadata: Vec<(u8, MetaValue)>,
    tensors: Vec<GgufTensor>,
    alignment: Option<u32>,
    declare_alignment: bool,
    tail: Mostly<Tail>,
}

#[derive(Arbitrary, Debug)]
enum MetaValue {
    U32(u32),
    F32(u32),
    U64(u64),
    Text(String),
    Array(u8, u16),
    Bool(u8),
}

#[derive(Arbitrary, Debug)]
struct GgufTensor {
    name: Mostly<Name>,
    dims: Vec<Mostly<Dim>>,
    ggml_type: Mostly<GgmlType>,
    offset: Mostly<Offsets>,
}

#[derive(Arbitrary, Debug)]
enum GgmlType {
    /// One of the types candle reads (rows made whole blocks of it).
    Known(u8),
    Raw(u32),
}

/// ggml type ids (the GGUF spec's) of the types candle reads.
const GGML_TYPES: [(u32, candle_core::quantized::GgmlDType); 12] = {
    use candle_core::quantized::GgmlDType as T;
    [
        (0, T::F32),
        (1, T::F16),
        (2, T::Q4_0),
        (3, T::Q4_1),
        (6, T::Q5_0),
        (7, T::Q5_1),
        (8, T::Q8_0),
        (10, T::Q2K),
        (11, T::Q3K),
        (12, T::Q4K),
        (13, T::Q5K),
        (14, T::Q6K),
    ]
};

impl GgmlType {
    /// The type id, and its (block size, bytes per block) when candle knows it.
    fn id(&self) -> (u32, Option<(u64, u64)>) {
        let id = match self {
            GgmlType::Known(i) => GGML_TYPES[usize::from(*i) % GGML_TYPES.len()].0,
            GgmlType::Raw(v) => *v,
        };
        let layout = GGML_TYPES
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, t)| (t.block_size() as u64, t.type_size() as u64));
        (id, layout)
    }
}

/// Metadata keys the importer reads.
const GGUF_KEYS: [&str; 10] = [
    "general.architecture",
    "general.alignment",
    "llama.block_count",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "tokenizer.ggml.tokens",
];

impl GgufSpec {
    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        };
        out.extend(
            self.version
                .0
                .map_or(3, |v| [2, v][(v % 2) as usize])
                .to_le_bytes(),
        );
        let tensors: Vec<&GgufTensor> = self.tensors.iter().take(8).collect();
        out.extend(
            self.tensor_count
                .0
                .unwrap_or(tensors.len() as u64)
                .to_le_bytes(),
        );
        let metadata: Vec<&(u8, MetaValue)> = self.metadata.iter().take(12).collect();
        // Where the tensors' data is laid out (at most 1 KB apart, so files stay small; the
        // metadata may still claim any alignment).
        let align = u64::from(self.alignment.unwrap_or(32) % 1024).max(1);
        let declared = self.declare_alignment.then_some(align as u32);
        out.extend((metadata.len() as u64 + u64::from(declared.is_some())).to_le_bytes());
        if let Some(a) = declared {
            string(&mut out, "general.alignment");
            out.extend(4u32.to_le_bytes());
            out.extend(a.to_le_bytes());
        }
        for (key, value) in metadata {
            string(&mut out, GGUF_KEYS[usize::from(*key) % GGUF_KEYS.len()]);
            match value {
                MetaValue::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                MetaValue::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                MetaValue::U64(v) => {
                    out.extend(10u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                MetaValue::Text(s) => {
                    out.extend(8u32.to_le_bytes());
                    string(&mut out, s);
                }
                MetaValue::Array(t, n) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(u32::from(*t % 13).to_le_bytes());
                    out.extend(u64::from(*n).to_le_bytes());
                    for i in 0..(*n).min(64) {
                        if *t % 13 == 8 {
                            string(&mut out, &format!("t{i}"));
                        } else {
                            out.extend(u32::from(i).to_le_bytes());
                        }
                    }
                }
                MetaValue::Bool(b) => {
                    out.extend(7u32.to_le_bytes());
                    out.push(*b);
                }
            }
        }
        let mut offset = 0u64;
        for (k, t) in tensors.iter().enumerate() {
            string(
                &mut out,
                &t.name.text(
                    [
                        "token_embd.weight",
                        "output_norm.weight",
                        "blk.0.attn_q.weight",
                    ][k % 3],
                ),
            );
            let (id, layout) = t.ggml_type.0.as_ref().unwrap_or(&GgmlType::Known(0)).id();
            let mut dims: Vec<u64> = t.dims.iter().take(4).map(Mostly::value).collect();
            if let (Some(first), Some((block, _))) = (dims.first_mut(), layout) {
                // A row of whole blocks, as ggml requires (unless the dimension is at an edge).
                if *first < 1 << 16 {
                    *first = first.next_multiple_of(block);
                }
            }
            out.extend((dims.len() as u32).to_le_bytes());
            for d in &dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(id.to_le_bytes());
            let at = match t.offset.0 {
                None | Some(Offsets::Exact | Offsets::NotPair) => offset,
                Some(Offsets::Shift(s)) => offset.wrapping_add(s as u64),
                Some(Offsets::Swap) => offset + 1,
                Some(Offsets::Edge(e)) => e,
            };
            out.extend(at.to_le_bytes());
            let (block, bytes) = layout.unwrap_or((1, 4));
            let size = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .map_or(0, |n| n / block * bytes)
                .min(1 << 16);
            offset = (offset + size).next_multiple_of(align);
        }
        let start = (out.len() as u64).next_multiple_of(align);
        out.resize(start as usize, 0);
        out.extend((0..offset.min(1 << 20)).map(|i| (i % 251) as u8));
        self.tail.apply(&mut out);
        out
    }
}

/// What a run of the loop found.
#[derive(Debug, Default)]
pub struct Summary {
    /// Inputs executed.
    pub execs: u64,
    /// Inputs the reader accepted (the rest of the target ran on them).
    pub accepted: u64,
    /// Inputs that panicked, with the message.
    pub panics: Vec<(Vec<u8>, String)>,
    /// The slowest execution.
    pub slowest: Duration,
    /// Executions that took over 5 s (hangs).
    pub hangs: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Runs `target` on `execs` inputs from a loop seeded with `seed`: fresh random bytes, and
/// mutations of earlier inputs (kept in a small corpus), each built into a file as
/// [`file_bytes`] says. Stops early after `budget` if given.
pub fn run(target: Target, seed: u64, execs: u64, budget: Option<Duration>) -> Summary {
    let scratch = Scratch::new();
    let mut rng = StdRng::seed_from_u64(seed ^ (target as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut summary = Summary::default();
    let start = Instant::now();
    while summary.execs < execs && budget.is_none_or(|b| start.elapsed() < b) {
        let data = if corpus.is_empty() || rng.random_bool(0.3) {
            let len = rng.random_range(1..2048);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut d = corpus[rng.random_range(0..corpus.len())].clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..d.len().max(1));
                match rng.random_range(0..4) {
                    0 if !d.is_empty() => d[at] ^= 1 << rng.random_range(0..8),
                    1 if !d.is_empty() => d[at] = rng.random(),
                    2 => d.insert(at.min(d.len()), rng.random()),
                    _ if d.len() > 1 => {
                        d.remove(at.min(d.len() - 1));
                    }
                    _ => d.push(rng.random()),
                }
            }
            d
        };
        let t = Instant::now();
        match exec(target, &data, &scratch) {
            Ok(accepted) => summary.accepted += u64::from(accepted),
            Err(message) => summary.panics.push((data.clone(), message)),
        }
        let took = t.elapsed();
        summary.slowest = summary.slowest.max(took);
        summary.hangs += u64::from(took > Duration::from_secs(5));
        summary.execs += 1;
        if corpus.len() < 256 {
            corpus.push(data);
        } else if rng.random_bool(0.1) {
            let i = rng.random_range(0..corpus.len());
            corpus[i] = data;
        }
    }
    summary.elapsed = start.elapsed();
    summary
}
