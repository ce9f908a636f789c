//! `qpipe sensitivity`: the measured accuracy loss of quantizing each tensor alone, per format.

use crate::checkpoint::write::write_atomic;
use crate::checkpoint::Checkpoint;
use crate::cli::{load_tokens, stdout_error};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::quant::{Calibrator, Format};
use crate::report::svg::BarChart;
use crate::report::{shape, Table};
use crate::sensitivity::{self, Options, Sensitivity};
use crate::{calib, data};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `qpipe sensitivity`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory (or .safetensors file) with config.json and tokenizer.json.
    pub model: PathBuf,
    /// Calibration text file.
    #[arg(long, default_value = "calibration-data/sotu-calibration.txt")]
    pub data: PathBuf,
    /// Candidate formats, comma-separated (e.g. int8-channel-sym,int4-g32-asym,q4_k).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "int8-channel-sym,int4-g32-asym,int3-g32-asym,int2-g32-asym"
    )]
    pub formats: Vec<Format>,
    /// Weight calibrator (minmax, percentile[:P], mse, entropy); weighted by input importance.
    #[arg(long, default_value = "mse")]
    pub calibrator: Calibrator,
    /// Calibration tokens to measure on (whole sequences of --seq-len).
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Float log-probabilities kept per position for KL (causal LMs).
    #[arg(long, default_value_t = 256)]
    pub top_k: usize,
    /// Only tensors whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tensors: Vec<String>,
    /// Formats whose loss is estimated (proxy x the tensor's measured loss per proxy in the
    /// measured format nearest in size) instead of measured, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub estimate: Vec<Format>,
    /// Recompute every layer for every candidate (no prefix reuse); only to measure the saving.
    #[arg(long)]
    pub full_recompute: bool,
    /// Print machine-readable JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write sensitivity.json and sensitivity.svg into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `qpipe sensitivity`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let start = Instant::now();
    let checkpoint = Checkpoint::open(&args.model)?;
    let model = Model::load(&checkpoint)?;
    let tokenizer = data::tokenizer(&checkpoint)?;
    let ids = load_tokens(&tokenizer, &args.data, args.tokens, args.seq_len)?;
    let sequences = data::sequences(&ids, args.seq_len, args.tokens);
    let used = sequences.len() * args.seq_len;
    let stats = calib::collect(&model, &sequences, 1)?;
    let options = Options {
        formats: args.formats.clone(),
        calibrator: args.calibrator,
        top_k: args.top_k,
        prefix_reuse: !args.full_recompute,
        tensors: args.tensors.clone(),
        estimated: args.estimate.clone(),
    };
    let candidates = model
        .linears()
        .iter()
        .filter(|l| options.selects(l.name()))
        .count()
        * options.formats.len();
    let bar = indicatif::ProgressBar::new(candidates as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} candidates ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result = sensitivity::analyse(&model, &sequences, &stats, &options, &|total| {
        bar.set_length(total as u64);
        bar.inc(1)
    })?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "qpipe: {} candidates on {used} tokens in {seconds:.1} s ({})",
        result.entries.len(),
        if options.prefix_reuse {
            "prefix reuse"
        } else {
            "full recompute"
        }
    );

    let json = serde_json::to_string_pretty(&result)
        .map_err(|e| Error::invalid(Path::new("<sensitivity>"), e.to_string()))?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        write_atomic(
            &dir.join("sensitivity.json"),
            format!("{json}\n").as_bytes(),
        )?;
        write_atomic(&dir.join("sensitivity.svg"), chart(&result).as_bytes())?;
    }
    let text = if args.json {
        format!("{json}\n")
    } else {
        table(&result)
    };
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(0)
}

/// Tensors as rows (most sensitive first: by the largest loss over formats), formats as columns.
fn table(result: &Sensitivity) -> String {
    let formats = formats_of(result);
    let mut rows = by_tensor(result);
    let worst = |v: &BTreeMap<Format, f64>| v.values().copied().fold(0.0, f64::max);
    rows.sort_by(|a, b| worst(&b.2).total_cmp(&worst(&a.2)));
    let mut header = vec!["tensor".to_string(), "shape".to_string()];
    header.extend(formats.iter().map(|(f, est)| label(*f, *est)));
    let mut t = Table::new(header);
    for (name, dims, losses) in rows {
        let mut cells = vec![name.to_string(), shape(&dims)];
        cells.extend(formats.iter().map(|(f, _)| {
            losses
                .get(f)
                .map_or("-".to_string(), |v| format!("{v:.3e}"))
        }));
        t.row(cells);
    }
    let spearman = result
        .spearman
        .map_or("n/a".to_string(), |r| format!("{r:.3}"));
    format!(
        "{} per tensor quantized alone ({} sequences x {} tokens, weights calibrated by {}), \
         most sensitive first; Spearman(proxy, {}) = {spearman}\n{}",
        result.metric.label(),
        result.sequences,
        result.seq_len,
        result.calibrator,
        result.metric.label(),
        t.render(2)
    )
}

/// The formats of the entries in order of appearance, with whether their losses are estimated.
fn formats_of(result: &Sensitivity) -> Vec<(Format, bool)> {
    let mut out: Vec<(Format, bool)> = Vec::new();
    for e in &result.entries {
        if !out.iter().any(|(f, _)| *f == e.format) {
            out.push((e.format, e.estimated));
        }
    }
    out
}

/// A format's column or legend name.
fn label(format: Format, estimated: bool) -> String {
    if estimated {
        format!("{format} (estimated)")
    } else {
        format.to_string()
    }
}

/// Per tensor in forward order: name, shape and loss per format.
fn by_tensor(result: &Sensitivity) -> Vec<(&str, Vec<usize>, BTreeMap<Format, f64>)> {
    let mut rows: Vec<(&str, Vec<usize>, BTreeMap<Format, f64>)> = Vec::new();
    for e in &result.entries {
        match rows.last_mut() {
            Some(row) if row.0 == e.tensor => {
                row.2.insert(e.format, e.loss);
            }
            _ => rows.push((&e.tensor, e.shape.to_vec(), [(e.format, e.loss)].into())),
        }
    }
    rows
}

/// One bar group per tensor in forward order, one bar per format.
pub(crate) fn chart(result: &Sensitivity) -> String {
    let rows = by_tensor(result);
    let categories: Vec<String> = rows.iter().map(|r| short_name(r.0)).collect();
    let series: Vec<(String, Vec<Option<f64>>)> = formats_of(result)
        .into_iter()
        .map(|(f, est)| {
            let values = rows.iter().map(|r| r.2.get(&f).copied()).collect();
            (label(f, est), values)
        })
        .collect();
    BarChart {
        title: &format!(
            "{} when one tensor is quantized ({} x {} tokens)",
            result.metric.label(),
            result.sequences,
            result.seq_len
        ),
        y_label: result.metric.label(),
        categories: &categories,
        series: &series,
    }
    .render()
}

/// `model.layers.3.self_attn.q_proj.weight` -> `3.q_proj`.
fn short_name(name: &str) -> String {
    let parts: Vec<&str> = name.trim_end_matches(".weight").split('.').collect();
    let layer = parts.iter().find(|p| p.parse::<usize>().is_ok());
    let last = parts.last().copied().unwrap_or(name);
    match layer {
        Some(l) => format!("{l}.{last}"),
        None => last.to_string(),
    }
}
