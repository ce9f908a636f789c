//! `qpipe eval`: a packed checkpoint's real accuracy against its float reference, measured by
//! running the packed weights (qpipe-kernels / candle's quantized matmul), never by expanding
//! the whole model to f32 first.

use crate::checkpoint::Checkpoint;
use crate::cli::{default_seq_len, load_tokens, stdout_error};
use crate::error::{Error, Result};
use crate::eval::{compare, Comparison, Variant};
use crate::model::Model;
use crate::packed::{sha256_files, Packed};
use crate::report::Table;
use std::io::Write;
use std::path::PathBuf;

/// Where the evaluation tokens come from (shared by `eval` and `check`).
#[derive(Debug, clap::Args)]
pub struct Data {
    /// Evaluation text (keep it disjoint from the calibration text).
    #[arg(long, default_value = "calibration-data/sotu-eval.txt")]
    pub data: PathBuf,
    /// Evaluation tokens (whole sequences of --seq-len).
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    /// Tokens per sequence (default as in compress: 256 for causal LMs, 64 for encoders).
    #[arg(long)]
    pub seq_len: Option<usize>,
}

/// Arguments of `qpipe eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The packed checkpoint (`model.qpipe.safetensors` or the directory holding it).
    pub packed: PathBuf,
    /// The float model it was made from.
    #[arg(long)]
    pub reference: PathBuf,
    /// Evaluation data.
    #[command(flatten)]
    pub data: Data,
    /// Print machine-readable JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Loads `packed` and `reference`, checks the packed file was made from that reference, and
/// compares them on the evaluation tokens.
pub fn evaluate(
    packed: &std::path::Path,
    reference: &std::path::Path,
    d: &Data,
) -> Result<Comparison> {
    let packed_ckpt = Packed::open(packed)?;
    let reference_ckpt = Checkpoint::open(reference)?;
    let sha = sha256_files(reference_ckpt.files())?;
    if sha != packed_ckpt.manifest.provenance.input_sha256 {
        return Err(Error::invalid(
            packed_ckpt.checkpoint.first_file(),
            format!(
                "was made from another model (input sha256 {}), not from {} (sha256 {sha})",
                packed_ckpt.manifest.provenance.input_sha256,
                reference.display()
            ),
        ));
    }
    let tokenizer = crate::data::tokenizer(&reference_ckpt)?;
    let reference_model = Model::load(&reference_ckpt)?;
    let seq_len = d
        .seq_len
        .unwrap_or_else(|| default_seq_len(&reference_model));
    let ids = load_tokens(&tokenizer, &d.data, d.tokens, seq_len)?;
    let sequences = crate::data::sequences(&ids, seq_len, d.tokens);
    let packed_model = Model::load_packed(&packed_ckpt)?;
    compare(
        Variant::from(&reference_model),
        Variant::from(&packed_model),
        &sequences,
    )
}

/// Runs `qpipe eval`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let result = evaluate(&args.packed, &args.reference, &args.data)?;
    let text = if args.json {
        let json = serde_json::to_string_pretty(&result)
            .map_err(|e| Error::invalid(&args.packed, e.to_string()))?;
        format!("{json}\n")
    } else {
        render(&result)
    };
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(0)
}

/// The metrics as a two-column table.
pub fn render(c: &Comparison) -> String {
    let mut t = Table::new(["metric", "value"]);
    match c {
        Comparison::Lm(l) => {
            t.row(vec!["positions".into(), l.tokens.to_string()]);
            t.row(vec![
                "mean KL divergence".into(),
                format!("{:.6e}", l.mean_kld),
            ]);
            t.row(vec![
                "99th percentile KL".into(),
                format!("{:.6e}", l.p99_kld),
            ]);
            t.row(vec![
                "perplexity (reference)".into(),
                format!("{:.4}", l.ppl_reference),
            ]);
            t.row(vec!["perplexity".into(), format!("{:.4}", l.ppl)]);
            t.row(vec![
                "top-1 agreement".into(),
                format!("{:.4}", l.top1_agreement),
            ]);
            t.row(vec!["RMS delta p".into(), format!("{:.6}", l.rms_delta_p)]);
        }
        Comparison::Embedding(e) => {
            t.row(vec!["embeddings".into(), e.count.to_string()]);
            t.row(vec!["mean cosine".into(), format!("{:.6}", e.mean_cosine)]);
            t.row(vec!["min cosine".into(), format!("{:.6}", e.min_cosine)]);
            t.row(vec![
                "1 - mean cosine".into(),
                format!("{:.6e}", 1.0 - e.mean_cosine),
            ]);
        }
    }
    t.render(2)
}
