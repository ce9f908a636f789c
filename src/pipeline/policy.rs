//! The decisions a compress run makes before and after the search, kept apart from the
//! plumbing so they can be read and changed in one place: which formats and activation options
//! a target gets, which formats the sensitivity measures rather than estimates, the default size
//! limit, and how the final genome is chosen among the search's best.

use crate::error::{Error, Result, Subject};
use crate::eval::{compare_all, Comparison, Variant};
use crate::export::packed::Others;
use crate::hardware::profile::Backend;
use crate::hardware::Target;
use crate::model::{Model, Usage};
use crate::quant::{Activation, FloatType, Format, Transform};
use crate::search::fitness::Evaluator;
use crate::search::{Constraints, Origin, Outcome, Point};
use serde::Serialize;

/// Bits per weight a compress aims under when no size, latency or energy limit is given: 4-bit
/// codes with a 16-bit scale per 32 weights.
pub const DEFAULT_MAX_BPW: f64 = 4.5;

/// Candidate weight formats in groups of alternatives, most preferred first: a target keeps
/// the first legal format of each group.
const MENU: &[&[&str]] = &[
    &["int8-channel-sym", "int8-channel-pow2"],
    &["int6-g32-asym"],
    &["int5-g32-asym"],
    &["int4-g32-asym"],
    &["int4-g32-sym", "int4-g64-sym"],
    &["int4-channel-sym"],
    &["int3-g32-asym"],
    &["int2-g32-asym"],
    &["q8_0"],
    &["q6_k"],
    &["q5_k"],
    &["q5_1"],
    &["q5_0"],
    &["q4_k"],
    &["q4_1"],
    &["q4_0"],
    &["q3_k"],
    &["q2_k"],
];

/// Bits per weight near which the per-tensor sensitivity measures a format (besides the
/// smallest); the losses of the other formats are estimated from their proxies.
const SENSITIVITY_ANCHOR_BPW: f64 = 4.5;

/// Genomes evaluated on held-out tokens per run of the float reference.
pub const HELD_OUT_GROUP: usize = 4;

/// Feasible genomes whose search loss is within this factor of the lowest are compared on
/// further calibration tokens before one is chosen (at most [`HELD_OUT_GROUP`] of them).
pub const VALIDATION_SLACK: f64 = 1.1;

/// Every format of the menu (the menu is fixed, so a bad entry is a bug caught by tests).
fn menu() -> Vec<Format> {
    MENU.iter()
        .flat_map(|g| g.iter())
        .filter_map(|f| f.parse().ok())
        .collect()
}

/// The activation options `target` runs with some candidate (the menu's or the user's).
pub fn activations(target: &Target, asked: &[Format]) -> Vec<Activation> {
    [Activation::Float, Activation::A16, Activation::A8]
        .into_iter()
        .filter(|b| {
            menu()
                .iter()
                .chain(asked)
                .any(|f| target.legality(f, *b).is_ok())
        })
        .collect()
}

/// The input transforms the search offers unless the user names them: SmoothQuant at alpha
/// 0.5 and 0.8 where layers may quantize their inputs to 8 bits, none elsewhere. On SmolLM2's
/// six heaviest-tailed down_proj inputs alone at A8, smooth0.8 cut the held-out KL 2-100x and
/// smooth0.5 1.6-7x (tests/suite/transform.rs, ignored test). With A16 or float activations,
/// neither AWQ nor SmoothQuant at alpha 0.5 beat plain rounding after the importance-weighted
/// mse clip search in models/tiny's Lagrangian seeds, so there they are offered on request
/// (`--transform`).
pub fn transforms(asked: &[Transform], activations: &[Activation]) -> Vec<Transform> {
    if !asked.is_empty() {
        return asked.to_vec();
    }
    if activations.contains(&Activation::A8) {
        vec![
            Transform::None,
            Transform::Smooth(50),
            Transform::Smooth(80),
        ]
    } else {
        vec![Transform::None]
    }
}

/// The candidate formats: the user's (each must be legal with some activation option), or the
/// first legal format of each menu group.
pub fn candidate_formats(
    target: &Target,
    asked: &[Format],
    activations: &[Activation],
) -> Result<Vec<Format>> {
    let legal = |f: &Format| activations.iter().any(|b| target.legality(f, *b).is_ok());
    if !asked.is_empty() {
        for f in asked {
            if !legal(f) {
                // The target's own error names the format and what it supports.
                target.legality(f, Activation::Float)?;
            }
        }
        return Ok(asked.to_vec());
    }
    let chosen: Vec<Format> = MENU
        .iter()
        .filter_map(|group| {
            group
                .iter()
                .filter_map(|f| f.parse::<Format>().ok())
                .find(legal)
        })
        .collect();
    if chosen.is_empty() {
        return Err(target.illegal("none of qpipe's formats run here".into()));
    }
    Ok(chosen)
}

/// The formats the sensitivity measures (the smallest, and the one nearest
/// [`SENSITIVITY_ANCHOR_BPW`]) and those it estimates, by bits per weight of a `rows x cols`
/// weight (the shape of the model's first matmul).
pub fn sensitivity_split(
    formats: &[Format],
    rows: usize,
    cols: usize,
) -> (Vec<Format>, Vec<Format>) {
    let mut sorted: Vec<Format> = formats
        .iter()
        .copied()
        .filter(|f| f.check(rows, cols).is_ok())
        .collect();
    sorted.sort_by_key(|f| (f.storage_bytes(rows, cols), *f));
    let anchor = sorted.iter().copied().min_by(|a, b| {
        let d = |f: &Format| (f.bits_per_weight(rows, cols) - SENSITIVITY_ANCHOR_BPW).abs();
        d(a).total_cmp(&d(b))
    });
    let mut measured: Vec<Format> = sorted.first().copied().into_iter().chain(anchor).collect();
    measured.dedup();
    let estimated = formats
        .iter()
        .copied()
        .filter(|f| !measured.contains(f))
        .collect();
    (measured, estimated)
}

/// Whether a weight used as `usage` may take `format`: an embedding table (tied or not) is
/// stored in 4 to 8 bit integers, a GGUF type (llama.cpp looks rows up in any) or a float; its
/// rows are the model's only view of a token, so 2 and 3 bits are not offered.
pub fn usable_as(format: Format, usage: Usage) -> bool {
    match format {
        Format::Int(f) if usage.gathers() => f.bits >= 4,
        _ => true,
    }
}

/// How a run for `target` writes the tensors no format is chosen for: F16 where the target
/// computes them in F16 (its profile says so, with a source), else as stored.
pub fn others(target: &Target) -> Others {
    match &target.other_tensors {
        Some(o) => Others::Narrowed(o.dtype),
        None => Others::AsStored,
    }
}

/// A file a compress run ships (`--export`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    /// `model.qpipe.safetensors`, which `qpipe eval`, `check` and `export` read.
    Qpipe,
    /// `model.gguf` for llama.cpp.
    Gguf,
    /// `model.onnx` with QDQ (and the target's encodings file, if its toolchain reads one).
    Onnx,
}

impl Export {
    /// Every export.
    pub const ALL: [Export; 3] = [Export::Qpipe, Export::Gguf, Export::Onnx];

    /// The name `--export` takes.
    pub fn name(self) -> &'static str {
        match self {
            Export::Qpipe => "qpipe",
            Export::Gguf => "gguf",
            Export::Onnx => "onnx",
        }
    }
}

impl std::str::FromStr for Export {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Export::ALL
            .into_iter()
            .find(|e| e.name() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown export '{s}' (known: qpipe, gguf, onnx)"))
    }
}

impl std::fmt::Display for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a run for `target` ships when `--export` is not given: the packed checkpoint, and the
/// file the target's runtime loads: GGUF for the llama.cpp target (whose matmuls are
/// llama.cpp's kernels, run through candle's port of them), ONNX for the targets whose
/// toolchains load ONNX with QuantizeLinear/DequantizeLinear (QNN, TensorRT, OpenVINO,
/// onnxruntime).
pub fn default_exports(target: &Target) -> Vec<Export> {
    let onnx = target
        .deploys
        .as_ref()
        .is_some_and(|d| d.format == crate::hardware::DeployFormat::Onnx);
    let gguf = target.measured == Some(Backend::Candle);
    let mut exports = vec![Export::Qpipe];
    exports.extend(gguf.then_some(Export::Gguf));
    exports.extend(onnx.then_some(Export::Onnx));
    exports
}

/// The exports asked for (`asked`, or the target's defaults when empty), sorted and deduplicated,
/// once it is known that each can be written for `model` with every one of `formats`: before
/// any long work, so an impossible `--export` fails at once.
pub fn exports(
    asked: &[Export],
    target: &Target,
    model: &Model,
    formats: &[Format],
) -> Result<Vec<Export>> {
    let mut exports = if asked.is_empty() {
        default_exports(target)
    } else {
        asked.to_vec()
    };
    exports.sort();
    exports.dedup();
    let bad = |why: String| Err(Error::invalid(Subject::option("--export"), why));
    for e in &exports {
        let (fits, family): (fn(&Format) -> bool, bool) = match e {
            Export::Qpipe => continue,
            Export::Gguf => (
                |f| matches!(f, Format::Gguf(_) | Format::Float(FloatType::F32)),
                matches!(model, Model::Llama(_)),
            ),
            Export::Onnx => (|f| !matches!(f, Format::Gguf(_)), true),
        };
        if !family {
            return bad(format!(
                "{e} export has no writer for this model's architecture"
            ));
        }
        if let Some(f) = formats.iter().find(|f| !fits(f)) {
            return bad(format!(
                "{e} cannot store the candidate format {f} (target {}); choose --formats it stores{}",
                target.name,
                if *e == Export::Gguf {
                    " (GGUF block types and f32), or --target llama-cpp"
                } else {
                    " (integer and float formats)"
                }
            ));
        }
    }
    Ok(exports)
}

/// A genome compared on the validation tokens.
#[derive(Debug, Serialize)]
pub struct Validated {
    /// Where it came from.
    pub origin: Origin,
    /// Loss on the search's calibration tokens.
    pub calibration_loss: f64,
    /// Loss on the further calibration tokens.
    pub validation_loss: f64,
}

/// The feasible genomes nearly as good as `chosen` (the search's pick) on the search's tokens,
/// measured on calibration tokens the search never saw, and the best of them there. The
/// search's loss flatters genomes fitted to its own tokens: on MiniLM the evolved genome beat
/// the best seed by 4% on them and lost to it by 2% on held-out text.
pub fn choose(
    model: &Model,
    evaluator: &Evaluator<'_>,
    outcome: &Outcome,
    constraints: &Constraints,
    sequences: &[&[u32]],
    chosen: Point,
) -> Result<(Point, Vec<Validated>)> {
    let mut candidates: Vec<&Point> = vec![&chosen];
    for p in outcome.front.iter().chain(&outcome.seeds) {
        if constraints.violation(&p.fitness) == 0.0
            && p.fitness.loss <= chosen.fitness.loss * VALIDATION_SLACK
            && !candidates.iter().any(|c| c.genome.key() == p.genome.key())
        {
            candidates.push(p);
        }
    }
    candidates.sort_by(|a, b| a.fitness.loss.total_cmp(&b.fitness.loss));
    candidates.truncate(HELD_OUT_GROUP);
    if candidates.len() < 2 || sequences.is_empty() {
        return Ok((chosen, Vec::new()));
    }
    let overrides = candidates
        .iter()
        .map(|p| evaluator.overrides(&p.genome))
        .collect::<Result<Vec<_>>>()?;
    let variants: Vec<Variant<'_>> = overrides
        .iter()
        .map(|o| Variant {
            model,
            overrides: Some(o),
        })
        .collect();
    let losses: Vec<f64> = compare_all(Variant::from(model), &variants, sequences)?
        .iter()
        .map(Comparison::loss)
        .collect();
    let best = (0..candidates.len())
        .min_by(|&a, &b| losses[a].total_cmp(&losses[b]).then(a.cmp(&b)))
        .unwrap_or(0);
    let validated = candidates
        .iter()
        .zip(&losses)
        .map(|(p, &l)| Validated {
            origin: p.origin,
            calibration_loss: p.fitness.loss,
            validation_loss: l,
        })
        .collect();
    Ok((candidates[best].clone(), validated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_menu_entry_parses() {
        let n: usize = MENU.iter().map(|g| g.len()).sum();
        assert_eq!(menu().len(), n);
    }

    #[test]
    fn sensitivity_measures_the_smallest_and_the_one_nearest_the_anchor() {
        let f = |s: &str| s.parse::<Format>().unwrap();
        let formats = [
            f("int8-channel-sym"),
            f("int4-g32-asym"),
            f("int2-g32-asym"),
        ];
        let (measured, estimated) = sensitivity_split(&formats, 256, 256);
        assert_eq!(measured, vec![f("int2-g32-asym"), f("int4-g32-asym")]);
        assert_eq!(estimated, vec![f("int8-channel-sym")]);
    }
}
