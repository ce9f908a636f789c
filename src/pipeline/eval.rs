//! `eval` and `check`: a packed checkpoint's real accuracy against the float model it was made
//! from, measured by running the packed weights (qpipe-kernels / candle's quantized matmul,
//! never an f32 expansion of the model), and the CI gate on that accuracy.

use super::{default_seq_len, load_tokens, Observer};
use crate::checkpoint::Checkpoint;
use crate::data::Text;
use crate::error::{Error, Result, Subject};
use crate::eval::{compare, Comparison, Variant};
use crate::model::Model;
use crate::packed::{sha256_files, Packed};
use crate::report::Table;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A packed checkpoint, the float model it was made from, and the text to compare them on.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The packed checkpoint (`model.qpipe.safetensors` or the directory holding it).
    pub packed: PathBuf,
    /// The float model it was made from.
    pub reference: PathBuf,
    /// Evaluation text (keep it disjoint from the calibration text).
    pub data: Text,
    /// Evaluation tokens (whole sequences of `seq_len`).
    pub tokens: usize,
    /// Tokens per sequence (`None`: 256 for causal LMs, 64 for encoders).
    pub seq_len: Option<usize>,
}

/// Loads the packed checkpoint and its reference, checks the packed file was made from that
/// reference, and compares them on the evaluation tokens.
pub fn evaluate(request: &EvalRequest, observer: &dyn Observer) -> Result<Comparison> {
    let packed_ckpt = Packed::open(&request.packed)?;
    let reference_ckpt = Checkpoint::open(&request.reference)?;
    let sha = sha256_files(reference_ckpt.files())?;
    if sha != packed_ckpt.manifest.provenance.input_sha256 {
        return Err(Error::invalid(
            packed_ckpt.checkpoint.first_file(),
            format!(
                "was made from another model (input sha256 {}), not from {} (sha256 {sha})",
                packed_ckpt.manifest.provenance.input_sha256,
                request.reference.display()
            ),
        ));
    }
    let tokenizer = crate::data::tokenizer(&reference_ckpt)?;
    let reference_model = Model::load(&reference_ckpt)?;
    let seq_len = request
        .seq_len
        .unwrap_or_else(|| default_seq_len(&reference_model));
    let ids = load_tokens(
        &tokenizer,
        &request.data,
        request.tokens,
        seq_len,
        reference_model.vocab_size(),
        observer,
    )?;
    let sequences = crate::data::sequences(&ids, seq_len, request.tokens);
    let packed_model = Model::load_packed(&packed_ckpt)?;
    compare(
        Variant::from(&reference_model),
        Variant::from(&packed_model),
        &sequences,
    )
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

/// The CI gate's limits on a packed checkpoint's measured loss.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Largest loss (mean KL; 1 - cos for encoders) that passes.
    pub max_loss: f64,
    /// A qpipe.json whose packed held-out loss the measured one must not exceed by more than
    /// `tolerance`.
    pub baseline: Option<PathBuf>,
    /// Allowed relative increase over the baseline's loss (0.05 = 5%).
    pub tolerance: f64,
}

/// One named check.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it held.
    pub pass: bool,
    /// Measured value.
    pub value: f64,
    /// Limit it was held to.
    pub limit: f64,
}

/// The gate's verdict (what `check` prints as JSON).
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// All checks passed.
    pub pass: bool,
    /// Every check.
    pub checks: Vec<Check>,
    /// The measured metrics.
    pub metrics: Comparison,
}

/// Evaluates `request` and holds the loss to `gate`; limits are validated before anything is
/// loaded.
pub fn check(request: &EvalRequest, gate: &Gate, observer: &dyn Observer) -> Result<Verdict> {
    if !(gate.max_loss.is_finite() && gate.max_loss >= 0.0) {
        return Err(Error::invalid(
            Subject::option("--max-kld"),
            format!("{} is not a loss limit (>= 0)", gate.max_loss),
        ));
    }
    if !(gate.tolerance.is_finite() && gate.tolerance >= 0.0) {
        return Err(Error::invalid(
            Subject::option("--tolerance"),
            format!("{} is not a relative tolerance (>= 0)", gate.tolerance),
        ));
    }
    let baseline = gate.baseline.as_deref().map(baseline_loss).transpose()?;
    let metrics = evaluate(request, observer)?;
    let loss = metrics.loss();
    let mut checks = vec![Check {
        name: "max-kld".into(),
        pass: loss <= gate.max_loss,
        value: loss,
        limit: gate.max_loss,
    }];
    if let Some(b) = baseline {
        let limit = b * (1.0 + gate.tolerance);
        checks.push(Check {
            name: "baseline".into(),
            pass: loss <= limit,
            value: loss,
            limit,
        });
    }
    Ok(Verdict {
        pass: checks.iter().all(|c| c.pass),
        checks,
        metrics,
    })
}

/// The packed held-out loss recorded in a qpipe.json.
fn baseline_loss(path: &Path) -> Result<f64> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(path, format!("not JSON: {e}")))?;
    let packed = &v["packed"];
    let (field, loss) = match (
        packed["lm"]["mean_kld"].as_f64(),
        packed["embedding"]["mean_cosine"].as_f64(),
    ) {
        (Some(kld), _) => ("packed.lm.mean_kld", kld),
        (None, Some(cos)) if (-1.0..=1.0).contains(&cos) => ("packed.embedding.mean_cosine", 1.0 - cos),
        (None, Some(cos)) => {
            return Err(Error::invalid(
                path,
                format!("packed.embedding.mean_cosine is {cos}, not a cosine in [-1, 1]"),
            ))
        }
        (None, None) => {
            return Err(Error::invalid(
                path,
                "not a qpipe.json from `qpipe compress` (no packed.lm.mean_kld or packed.embedding.mean_cosine)",
            ))
        }
    };
    if !(loss.is_finite() && loss >= 0.0) {
        return Err(Error::invalid(
            path,
            format!("{field} is {loss}, not a loss (>= 0)"),
        ));
    }
    Ok(loss)
}

/// The verdict as a JUnit XML test suite named after the `packed` checkpoint.
pub fn junit(v: &Verdict, packed: &Path) -> String {
    let esc = crate::report::svg::escape;
    let failures = v.checks.iter().filter(|c| !c.pass).count();
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"qpipe check {}\" tests=\"{}\" failures=\"{failures}\">\n",
        esc(&packed.display().to_string()),
        v.checks.len()
    );
    for c in &v.checks {
        s += &format!(
            "  <testcase classname=\"qpipe.check\" name=\"{}\">",
            esc(&c.name)
        );
        if !c.pass {
            s += &format!(
                "<failure message=\"{} = {:.6e} exceeds {:.6e}\"/>",
                esc(&c.name),
                c.value,
                c.limit
            );
        }
        s += "</testcase>\n";
    }
    s += "</testsuite>\n";
    s
}
