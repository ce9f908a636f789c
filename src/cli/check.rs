//! `qpipe check`: a CI gate on a packed checkpoint's measured accuracy. Exit 0 when every
//! check passes, 1 on a regression, 2 on bad input; JSON on stdout, JUnit XML on request.

use crate::checkpoint::write::write_atomic;
use crate::cli::eval::{evaluate, Data};
use crate::cli::stdout_error;
use crate::error::{Error, Result};
use crate::eval::Comparison;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Arguments of `qpipe check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The packed checkpoint (`model.qpipe.safetensors` or the directory holding it).
    pub packed: PathBuf,
    /// The float model it was made from.
    #[arg(long)]
    pub reference: PathBuf,
    /// Fail when the measured loss (mean KL; 1 - cos for encoders) exceeds this.
    #[arg(long)]
    pub max_kld: f64,
    /// A qpipe.json whose packed held-out loss the measured one must not exceed by more
    /// than --tolerance.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Allowed relative increase over the baseline's loss (0.05 = 5%).
    #[arg(long, default_value_t = 0.05, requires = "baseline")]
    pub tolerance: f64,
    /// Also write the checks as a JUnit XML file (for CI test reports).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Evaluation data (the baseline's must match for the comparison to mean anything).
    #[command(flatten)]
    pub data: Data,
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

/// The JSON `check` prints.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// All checks passed.
    pub pass: bool,
    /// Every check.
    pub checks: Vec<Check>,
    /// The measured metrics.
    pub metrics: Comparison,
}

/// Runs `qpipe check`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    if !(args.max_kld.is_finite() && args.max_kld >= 0.0) {
        return Err(Error::invalid(
            Path::new("--max-kld"),
            format!("{} is not a loss limit (>= 0)", args.max_kld),
        ));
    }
    if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
        return Err(Error::invalid(
            Path::new("--tolerance"),
            format!("{} is not a relative tolerance (>= 0)", args.tolerance),
        ));
    }
    let baseline = args.baseline.as_deref().map(baseline_loss).transpose()?;
    let metrics = evaluate(&args.packed, &args.reference, &args.data)?;
    let loss = metrics.loss();
    let mut checks = vec![Check {
        name: "max-kld".into(),
        pass: loss <= args.max_kld,
        value: loss,
        limit: args.max_kld,
    }];
    if let Some(b) = baseline {
        let limit = b * (1.0 + args.tolerance);
        checks.push(Check {
            name: "baseline".into(),
            pass: loss <= limit,
            value: loss,
            limit,
        });
    }
    let verdict = Verdict {
        pass: checks.iter().all(|c| c.pass),
        checks,
        metrics,
    };
    if let Some(path) = &args.junit {
        write_atomic(path, junit(&verdict, &args.packed).as_bytes())?;
    }
    let json = serde_json::to_string_pretty(&verdict)
        .map_err(|e| Error::invalid(&args.packed, e.to_string()))?;
    out.write_all(format!("{json}\n").as_bytes())
        .map_err(stdout_error)?;
    Ok(if verdict.pass { 0 } else { 1 })
}

/// The packed held-out loss recorded in a qpipe.json.
fn baseline_loss(path: &Path) -> Result<f64> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(path, format!("not JSON: {e}")))?;
    let packed = &v["packed"];
    packed["lm"]["mean_kld"]
        .as_f64()
        .or_else(|| packed["embedding"]["mean_cosine"].as_f64().map(|c| 1.0 - c))
        .ok_or_else(|| {
            Error::invalid(
                path,
                "not a qpipe.json from `qpipe compress` (no packed.lm.mean_kld or packed.embedding.mean_cosine)",
            )
        })
}

/// The checks as a JUnit XML test suite.
fn junit(v: &Verdict, packed: &Path) -> String {
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
