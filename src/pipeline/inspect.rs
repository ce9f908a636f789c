//! `inspect`: what a checkpoint holds, from the header alone unless statistics are asked for.

use super::Observer;
use crate::checkpoint::stats::{self, TensorStats, OUTLIER_STD};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::model::arch::{self, Architecture, MatmulWeight};
use crate::packed::{Manifest, Provenance, METADATA_KEY};
use crate::report::{human_bytes, human_count, shape, Table};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Whether `inspect` reads the tensor data for per-tensor statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stats {
    /// Header only: instant whatever the file size.
    Skip,
    /// Stream every float tensor from the memory map (parallel over tensors and blocks).
    Compute,
}

/// config.json keys worth showing, when present.
const CONFIG_KEYS: [&str; 8] = [
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "tie_word_embeddings",
];

/// Everything `inspect` reports; serialised as-is for `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Weight files.
    pub files: Vec<PathBuf>,
    /// config.json beside the weights.
    pub config_json: Option<PathBuf>,
    /// tokenizer.json beside the weights.
    pub tokenizer_json: Option<PathBuf>,
    /// Detected architecture.
    pub architecture: Architecture,
    /// Selected config.json fields.
    pub config: BTreeMap<String, serde_json::Value>,
    /// Number of tensors.
    pub tensors: usize,
    /// Scalar parameter count.
    pub parameters: u64,
    /// Bytes of tensor data.
    pub bytes: u64,
    /// Bytes of tensor data per dtype.
    pub bytes_by_dtype: BTreeMap<String, u64>,
    /// The matmul weights quantization will act on, by layer.
    pub matmul_weights: Vec<MatmulWeight>,
    /// Parameters in those weights.
    pub matmul_parameters: u64,
    /// For a packed checkpoint: its formats, whole-model size and provenance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packed: Option<PackedReport>,
    /// Per-tensor statistics (with `--stats`), float tensors only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<Vec<TensorStats>>,
}

/// What a packed checkpoint (`model.qpipe.safetensors`) holds, from its manifest.
#[derive(Debug, Serialize)]
pub struct PackedReport {
    /// Parameters of the model (a quantized weight counts its original elements).
    pub parameters: u64,
    /// Bytes of every stored tensor (codes, scales, zero-points, float tensors).
    pub tensor_bytes: u64,
    /// `tensor_bytes` x 8 / `parameters`: the whole model's bits per weight.
    pub bits_per_weight: f64,
    /// Per format: how many tensors, parameters and bytes; the tensors stored as they are
    /// under their dtype (`F16`, `F32`, ...).
    pub formats: BTreeMap<String, Share>,
    /// Every quantized tensor.
    pub quantized: Vec<PackedTensor>,
    /// Where it came from.
    pub provenance: Provenance,
}

/// A part of a packed model.
#[derive(Debug, Default, Serialize)]
pub struct Share {
    /// Tensors.
    pub tensors: usize,
    /// Their parameters.
    pub parameters: u64,
    /// Their stored bytes.
    pub bytes: u64,
}

/// One quantized tensor of a packed checkpoint.
#[derive(Debug, Serialize)]
pub struct PackedTensor {
    /// Checkpoint name of the original weight.
    pub name: String,
    /// Its storage format.
    pub format: String,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    /// Stored bytes (codes, scales, zero-points).
    pub bytes: u64,
    /// Bits of input activations, when quantized.
    pub input_bits: Option<u32>,
}

/// The packed side of `checkpoint`, whose manifest is `manifest`.
fn packed_report(checkpoint: &Checkpoint, manifest: Manifest) -> PackedReport {
    let mut formats: BTreeMap<String, Share> = BTreeMap::new();
    let mut quantized = Vec::new();
    for (name, e) in &manifest.tensors {
        let [rows, cols] = e.shape;
        let bytes = e.format.storage_bytes(rows, cols) as u64;
        let share = formats.entry(e.format.to_string()).or_default();
        share.tensors += 1;
        share.parameters += (rows * cols) as u64;
        share.bytes += bytes;
        quantized.push(PackedTensor {
            name: name.clone(),
            format: e.format.to_string(),
            shape: e.shape,
            bytes,
            input_bits: e.input_quant.map(|q| q.bits),
        });
    }
    let parts: std::collections::HashSet<String> = manifest
        .tensors
        .iter()
        .flat_map(|(name, e)| crate::packed::parts(name, e).into_iter().map(|p| p.0))
        .collect();
    for view in checkpoint.tensors().filter(|v| !parts.contains(v.name)) {
        let share = formats.entry(format!("{:?}", view.dtype)).or_default();
        share.tensors += 1;
        share.parameters += view.numel() as u64;
        share.bytes += view.bytes.len() as u64;
    }
    let parameters = formats.values().map(|s| s.parameters).sum();
    let tensor_bytes = formats.values().map(|s| s.bytes).sum();
    PackedReport {
        parameters,
        tensor_bytes,
        bits_per_weight: tensor_bytes as f64 * 8.0 / (parameters as f64).max(1.0),
        formats,
        quantized,
        provenance: manifest.provenance,
    }
}

/// Builds the report from the header; reads tensor data only for [`Stats::Compute`].
pub fn report(
    checkpoint: &Checkpoint,
    statistics: Stats,
    observer: &dyn Observer,
) -> Result<Report> {
    let packed = match checkpoint.metadata(METADATA_KEY) {
        Some(_) => Some(packed_report(checkpoint, Manifest::read(checkpoint)?)),
        None => None,
    };
    let architecture = arch::detect(checkpoint);
    let matmul_weights = arch::matmul_weights(checkpoint, architecture.family);
    let matmul_parameters = matmul_weights
        .iter()
        .map(|w| w.shape.iter().product::<usize>() as u64)
        .sum();
    let config = checkpoint
        .config()
        .map(|c| {
            CONFIG_KEYS
                .iter()
                .filter_map(|k| c.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect()
        })
        .unwrap_or_default();
    let bytes_by_dtype = checkpoint.bytes_by_dtype();
    let stats = if statistics == Stats::Compute {
        let start = Instant::now();
        let s = stats::compute(checkpoint)?;
        let secs = start.elapsed().as_secs_f64();
        let read: u64 = checkpoint
            .tensors()
            .filter(|t| t.is_float())
            .map(|t| t.bytes.len() as u64)
            .sum();
        observer.note(&format!(
            "stats: {} read in {secs:.3} s ({:.2} GB/s, {} threads)",
            human_bytes(read),
            read as f64 / secs.max(1e-9) / 1e9,
            rayon::current_num_threads()
        ));
        Some(s)
    } else {
        None
    };
    Ok(Report {
        files: checkpoint.files().map(PathBuf::from).collect(),
        config_json: checkpoint
            .config()
            .map(|_| checkpoint.dir().join("config.json")),
        tokenizer_json: checkpoint.tokenizer_path().map(PathBuf::from),
        architecture,
        config,
        tensors: checkpoint.len(),
        parameters: checkpoint.parameter_count(),
        bytes: bytes_by_dtype.values().sum(),
        bytes_by_dtype,
        matmul_weights,
        matmul_parameters,
        packed,
        stats,
    })
}

fn num(v: f64) -> String {
    if v == 0.0 || (1e-3..1e4).contains(&v.abs()) {
        format!("{v:.4}")
    } else if v.is_nan() {
        "nan".into()
    } else {
        format!("{v:.3e}")
    }
}

fn display_path(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map_or("not found".into(), |p| p.display().to_string())
}

/// The text rendering of a report.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let files: Vec<String> = r.files.iter().map(|f| f.display().to_string()).collect();
    s += &format!("weights         {}\n", files.join(", "));
    s += &format!("config.json     {}\n", display_path(&r.config_json));
    s += &format!("tokenizer.json  {}\n", display_path(&r.tokenizer_json));
    let a = &r.architecture;
    let family = a.family.map_or(
        "not supported (qpipe runs the llama and bert families)".to_string(),
        |f| format!("{f:?} family").to_lowercase(),
    );
    s += &format!(
        "architecture    {} -> {family} [{:?}]\n",
        a.name, a.detected_from
    );
    if !r.config.is_empty() {
        let kv: Vec<String> = r.config.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s += &format!("config          {}\n", kv.join(" "));
    }
    s += &format!(
        "parameters      {} ({}) in {} tensors\n",
        human_count(r.parameters),
        r.parameters,
        r.tensors
    );
    let by_dtype: Vec<String> = r
        .bytes_by_dtype
        .iter()
        .map(|(d, b)| format!("{d} {}", human_bytes(*b)))
        .collect();
    s += &format!(
        "bytes           {} ({})\n",
        human_bytes(r.bytes),
        by_dtype.join(", ")
    );

    match &r.packed {
        Some(p) => s += &render_packed(p),
        None => s += &render_matmuls(r),
    }

    if let Some(stats) = &r.stats {
        s += &format!(
            "\nper-tensor statistics (finite values; outliers: |w - mean| > {OUTLIER_STD} std)\n"
        );
        let mut t = Table::new([
            "tensor",
            "dtype",
            "numel",
            "min",
            "max",
            "absmax",
            "mean",
            "std",
            "outliers%",
            "nan",
            "inf",
        ]);
        for st in stats {
            t.row([
                st.name.clone(),
                st.dtype.clone(),
                st.numel.to_string(),
                num(st.min as f64),
                num(st.max as f64),
                num(st.absmax as f64),
                num(st.mean),
                num(st.std),
                format!("{:.4}", 100.0 * st.outlier_share),
                st.nan.to_string(),
                st.inf.to_string(),
            ]);
        }
        s += &t.render(2);
        let bad: Vec<&str> = stats
            .iter()
            .filter(|t| t.nan + t.inf > 0)
            .map(|t| t.name.as_str())
            .collect();
        if !bad.is_empty() {
            s += &format!(
                "\nwarning: {} tensor(s) hold NaN/Inf values: {}\n",
                bad.len(),
                bad.join(", ")
            );
        }
    }
    s
}

/// The matmul weights quantization will act on, as a layer x role table.
fn render_matmuls(r: &Report) -> String {
    let mut s = String::new();
    let a = &r.architecture;
    // Groups in the order `matmul_weights` sorted them: layers, then weights outside the stack.
    let mut layers: Vec<Option<usize>> = r.matmul_weights.iter().map(|w| w.layer).collect();
    layers.dedup();
    s += &format!(
        "\nmatmul weights quantization acts on: {} tensors in {} groups, {} parameters ({:.1}% of the model){}\n",
        r.matmul_weights.len(),
        layers.len(),
        human_count(r.matmul_parameters),
        100.0 * r.matmul_parameters as f64 / r.parameters.max(1) as f64,
        if a.family.is_none() { " [heuristic: unknown architecture]" } else { "" }
    );
    let mut roles: Vec<&str> = Vec::new();
    for w in &r.matmul_weights {
        if !roles.contains(&w.role.as_str()) {
            roles.push(&w.role);
        }
    }
    let mut table = Table::new(std::iter::once("layer").chain(roles.iter().copied()));
    for layer in &layers {
        let label = layer.map_or("head".to_string(), |l| l.to_string());
        let cells = roles.iter().map(|role| {
            r.matmul_weights
                .iter()
                .find(|w| w.layer == *layer && w.role == *role)
                .map_or("-".to_string(), |w| shape(&w.shape))
        });
        table.row(std::iter::once(label).chain(cells));
    }
    s += &table.render(2);
    s
}

/// A packed checkpoint's size, format mix, quantized tensors and provenance.
fn render_packed(p: &PackedReport) -> String {
    let mut s = format!(
        "\npacked model: {} parameters in {} of tensors, {:.3} bits per weight (whole model)\n",
        human_count(p.parameters),
        human_bytes(p.tensor_bytes),
        p.bits_per_weight
    );
    let mut mix = Table::new(["format", "tensors", "parameters", "bytes", "share of bytes"]);
    for (format, share) in &p.formats {
        mix.row([
            format.clone(),
            share.tensors.to_string(),
            human_count(share.parameters),
            human_bytes(share.bytes),
            format!(
                "{:.1}%",
                100.0 * share.bytes as f64 / p.tensor_bytes.max(1) as f64
            ),
        ]);
    }
    s += &mix.render(2);
    let mut t = Table::new([
        "quantized tensor",
        "format",
        "shape",
        "bytes",
        "bpw",
        "input",
    ]);
    for q in &p.quantized {
        let [rows, cols] = q.shape;
        t.row([
            q.name.clone(),
            q.format.clone(),
            shape(&q.shape),
            human_bytes(q.bytes),
            format!("{:.3}", q.bytes as f64 * 8.0 / (rows * cols).max(1) as f64),
            q.input_bits.map_or("float".into(), |b| format!("a{b}")),
        ]);
    }
    s += "\n";
    s += &t.render(2);
    let v = &p.provenance;
    s += &format!(
        "\nprovenance: qpipe {}, seed {}, input sha256 {}, calibration text sha256 {}\n  command: {}\n",
        v.qpipe_version,
        v.seed,
        v.input_sha256,
        v.calibration_sha256,
        v.command.join(" ")
    );
    s
}
