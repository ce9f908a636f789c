//! The jobs qpipe runs, as library calls: [`compress()`] (calibration, sensitivity, search,
//! export, held-out evaluation and the report, for one hardware target), [`eval::evaluate`] and
//! the CI gate [`eval::check`], and [`inspect::report`]. Each takes a request and an
//! [`Observer`] that hears about progress; none prints. The binary maps its arguments onto these
//! requests, and a test, a server or a binding can call them the same way.

pub mod compress;
pub mod eval;
pub mod inspect;
pub mod output;
pub mod policy;
pub mod summary;
pub mod targets;

pub use compress::{compress, CompressRequest, Limits, SearchPlan, Start, TextPlan};
pub use output::CompressReport;

use crate::data::Text;
use crate::error::{Error, Result, Subject};
use crate::model::Model;
use crate::{calib, sensitivity};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where a job reports what it is doing: stages, one-line notes and the progress of its long
/// steps. The CLI draws progress bars on stderr; a test records the calls.
pub trait Observer: Sync {
    /// `stage` starts, `elapsed` after the job began.
    fn stage(&self, stage: Stage, elapsed: Duration);
    /// A one-line note for the user: a default chosen, text running short, a step's summary.
    fn note(&self, text: &str);
    /// `done` of `total` units of `step` are finished; `status` describes the latest state.
    fn progress(&self, step: Step, done: u64, total: u64, status: &str);
    /// `step` is over (a progress display can go).
    fn finished(&self, step: Step);
}

/// An observer that ignores everything (for callers that want only the result).
pub struct Silent;

impl Observer for Silent {
    fn stage(&self, _: Stage, _: Duration) {}
    fn note(&self, _: &str) {}
    fn progress(&self, _: Step, _: u64, _: u64, _: &str) {}
    fn finished(&self, _: Step) {}
}

/// The stages of a compress run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The float pass recording every matmul input's statistics.
    Calibration,
    /// Per-tensor sensitivity, measured.
    Sensitivity,
    /// Per-tensor sensitivity, reused from the output directory (`--resume`).
    SensitivityReused,
    /// The float model's run on the search's tokens.
    Reference,
    /// The evolutionary search.
    Search,
    /// The choice among the best genomes on further calibration tokens.
    Validation,
    /// Writing the packed checkpoint (and GGUF).
    Export,
    /// Every seed, the selection and the packed file on the held-out tokens.
    HeldOut,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Calibration => "calibration statistics",
            Stage::Sensitivity => "per-tensor sensitivity",
            Stage::SensitivityReused => "sensitivity: reusing sensitivity.json",
            Stage::Reference => "float reference on the calibration tokens",
            Stage::Search => "search",
            Stage::Validation => "validation",
            Stage::Export => "export",
            Stage::HeldOut => "held-out evaluation",
        })
    }
}

/// The long steps whose progress is reported unit by unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sensitivity candidates (tensor x format) measured.
    Sensitivity,
    /// Search generations finished (the seeds are generation 0).
    Search,
}

/// [`sensitivity::analyse`] with its progress, candidate by candidate, told to `observer`.
pub fn sensitivity(
    model: &Model,
    sequences: &[&[u32]],
    stats: &calib::Stats,
    options: &sensitivity::Options,
    observer: &dyn Observer,
) -> Result<sensitivity::Sensitivity> {
    let done = AtomicU64::new(0);
    let result = sensitivity::analyse(model, sequences, stats, options, &|total| {
        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
        observer.progress(Step::Sensitivity, d, total as u64, "");
    })?;
    observer.finished(Step::Sensitivity);
    Ok(result)
}

/// Tokens per evaluation sequence when none is given: 256 for causal LMs (every position is
/// scored), 64 for encoders (one embedding per sequence, so shorter sequences give more of them).
pub fn default_seq_len(model: &Model) -> usize {
    match model {
        Model::Llama(_) => 256,
        Model::Bert(_) => 64,
    }
}

/// The tokens of `text`, cut to whole sequences of `seq_len` within `tokens`; an error when
/// not even one sequence fits or a token id is not below `vocab` (the model's embedding rows),
/// a note when fewer than `tokens` do.
pub fn load_tokens(
    tokenizer: &tokenizers::Tokenizer,
    text: &Text,
    tokens: usize,
    seq_len: usize,
    vocab: usize,
    observer: &dyn Observer,
) -> Result<Vec<u32>> {
    if seq_len < 2 || tokens < seq_len {
        return Err(Error::invalid(
            Subject::option("--tokens"),
            format!(
                "{tokens} tokens must cover at least one sequence of --seq-len {seq_len} (>= 2)"
            ),
        ));
    }
    let mut ids = crate::data::encode(tokenizer, text)?;
    let used = (ids.len().min(tokens) / seq_len) * seq_len;
    if used == 0 {
        return Err(Error::invalid(
            text.subject(),
            format!("{} tokens, fewer than one sequence of {seq_len}", ids.len()),
        ));
    }
    if used < tokens {
        observer.note(&format!(
            "note: using {used} tokens of {text} ({} in all, in whole sequences of {seq_len})",
            ids.len()
        ));
    }
    ids.truncate(used);
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::invalid(
            text.subject(),
            format!(
                "the tokenizer gives token id {id}, past the model's {vocab}-row embedding \
                 (tokenizer.json and config.json's vocab_size disagree)"
            ),
        ));
    }
    Ok(ids)
}
