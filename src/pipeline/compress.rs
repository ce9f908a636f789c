//! `compress`: calibration -> sensitivity -> search -> choice -> export -> held-out evaluation
//! -> report, for one hardware target. The decisions are [`super::policy`]'s, the files
//! [`super::output`]'s; this file runs the stages in order and hands progress to the observer.

use super::output::{CompressReport, HeldOut, OutDir, Size};
use super::policy::{self, Export, HELD_OUT_GROUP};
use super::{default_seq_len, load_tokens, Observer, Stage, Step};
use crate::calib;
use crate::checkpoint::Checkpoint;
use crate::data::{Builtin, Text};
use crate::error::{Error, Result};
use crate::eval::{compare_all, Variant};
use crate::export;
use crate::hardware::{self, Cache, CostEstimate, CostModel, Rates, Target};
use crate::model::Model;
use crate::packed::{sha256_files, Packed, Provenance};
use crate::quant::{Activation, Calibrator, Format, Rounding, Transform};
use crate::reference::{batch, Baseline};
use crate::search::fitness::Evaluator;
use crate::search::genome::Space;
use crate::search::target::TargetCosts;
use crate::search::{self, Constraints, Outcome, Point, Settings, StateFile};
use crate::sensitivity::{Options, Reuse};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bytes of hidden states kept for children to start from: a few generations of parents.
const PREFIX_CACHE: usize = 1 << 30;
/// Default tokens of the input Hessians: GPTQ fitted on the search's 1024 tokens alone
/// over-fits them (all-MiniLM-L6-v2 int3-g32-asym: 1 - cos 3.99e-2 on those tokens, 7.57e-2
/// held out).
const HESSIAN_TOKENS: usize = 8192;

/// What to compress, for which target, under which limits, and where to write it.
#[derive(Debug, Clone)]
pub struct CompressRequest {
    /// A model directory (or .safetensors file) with config.json and tokenizer.json.
    pub model: PathBuf,
    /// Hardware target name (see `hardware::targets`).
    pub target: String,
    /// Limits the selected genome must meet.
    pub limits: Limits,
    /// Calibration and evaluation text.
    pub text: TextPlan,
    /// The search's size and seed, and the candidates it may choose from.
    pub search: SearchPlan,
    /// Output directory.
    pub out: PathBuf,
    /// Start a new search, or continue the one saved in `out`.
    pub start: Start,
    /// The command line recorded in the provenance (empty for library callers that have none).
    pub command: Vec<String>,
    /// The files to ship (empty: the target's, [`policy::default_exports`]).
    pub exports: Vec<Export>,
}

/// Limits on the selected genome; `None` is no limit.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Bits per weight of the whole model: every stored tensor's bytes (codes, scales,
    /// zero-points, embeddings, norms) x 8 / all parameters.
    pub max_bpw: Option<f64>,
    /// Bytes of every stored tensor of the model, in MB (10^6 bytes).
    pub max_size_mb: Option<f64>,
    /// Estimated latency (decode step for LMs, one sequence for encoders), ms.
    pub max_latency_ms: Option<f64>,
    /// Estimated energy, mJ.
    pub max_energy_mj: Option<f64>,
    /// Measured loss on the calibration tokens (mean KL; 1 - cos for encoders).
    pub max_loss: Option<f64>,
}

/// The text a compress run measures on.
#[derive(Debug, Clone)]
pub struct TextPlan {
    /// Calibration text.
    pub calibration: Text,
    /// Held-out evaluation text (disjoint from the calibration text).
    pub evaluation: Text,
    /// Calibration tokens the search measures genomes on (as many again choose among the best).
    pub tokens: usize,
    /// Held-out tokens the result is evaluated on.
    pub eval_tokens: usize,
    /// Tokens per sequence (`None`: 256 for causal LMs, 64 for encoders).
    pub seq_len: Option<usize>,
    /// Calibration tokens of the per-tensor sensitivity pass that guides the search.
    pub sensitivity_tokens: usize,
    /// Calibration tokens the input Hessians for GPTQ are accumulated over: the search's,
    /// then text after the validation tokens (never those, which judge GPTQ's genomes).
    pub hessian_tokens: usize,
    /// Float log-probabilities kept per position for the search's KL.
    pub top_k: usize,
}

impl Default for TextPlan {
    fn default() -> Self {
        TextPlan {
            calibration: Text::Builtin(Builtin::SotuCalibration),
            evaluation: Text::Builtin(Builtin::SotuEval),
            tokens: 1024,
            eval_tokens: 1024,
            seq_len: None,
            sensitivity_tokens: 256,
            hessian_tokens: HESSIAN_TOKENS,
            top_k: 256,
        }
    }
}

/// The search's size, seed and candidates.
#[derive(Debug, Clone)]
pub struct SearchPlan {
    /// Genomes per generation.
    pub population: usize,
    /// Generations after the seeds.
    pub generations: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Candidate formats (empty: per bit width the first legal one of the built-in menu).
    pub formats: Vec<Format>,
    /// Weight calibrators the search may choose from (weighted by input importance).
    pub calibrators: Vec<Calibrator>,
    /// Rounding methods the search may choose from (GPTQ where the format takes it).
    pub roundings: Vec<Rounding>,
    /// Input transforms the search may choose from where the model folds them (empty: the
    /// target's default, [`policy::transforms`]).
    pub transforms: Vec<Transform>,
}

impl Default for SearchPlan {
    fn default() -> Self {
        SearchPlan {
            population: 16,
            generations: 8,
            seed: 0,
            formats: Vec::new(),
            calibrators: vec![Calibrator::Mse],
            roundings: Rounding::ALL.to_vec(),
            transforms: Vec::new(),
        }
    }
}

/// How a compress run treats a search saved in its output directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Start from the seeds; a saved state is overwritten.
    Fresh,
    /// Continue the saved search (and reuse its sensitivity when it matches).
    Resume,
}

/// Runs the whole compress job of `request`, writing its files into `request.out`; returns
/// the report written to `qpipe.json`.
pub fn compress(request: &CompressRequest, observer: &dyn Observer) -> Result<CompressReport> {
    let start = Instant::now();
    let stage = |s: Stage| observer.stage(s, start.elapsed());
    let target = hardware::target(&request.target)?;
    let checkpoint = Checkpoint::open(&request.model)?;
    let model = Model::load(&checkpoint)?;
    let tokenizer = crate::data::tokenizer(&checkpoint)?;
    let text = &request.text;
    let seq_len = text.seq_len.unwrap_or_else(|| default_seq_len(&model));
    // The search's tokens, then as many again (where the text has them) for the choice among
    // its best genomes, then more for the input Hessians.
    let cal_ids = load_tokens(
        &tokenizer,
        &text.calibration,
        2 * text.tokens + text.hessian_tokens.saturating_sub(text.tokens),
        seq_len,
        model.vocab_size(),
        observer,
    )?;
    let eval_ids = load_tokens(
        &tokenizer,
        &text.evaluation,
        text.eval_tokens,
        seq_len,
        model.vocab_size(),
        observer,
    )?;
    let sequences = crate::data::sequences(&cal_ids, seq_len, text.tokens);
    let validation_sequences =
        crate::data::sequences(&cal_ids[sequences.len() * seq_len..], seq_len, text.tokens);
    let seen = (sequences.len() + validation_sequences.len()) * seq_len;
    let hessian_sequences: Vec<&[u32]> = sequences
        .iter()
        .copied()
        .chain(crate::data::sequences(
            &cal_ids[seen..],
            seq_len,
            text.hessian_tokens.saturating_sub(text.tokens),
        ))
        .collect();
    let eval_sequences = crate::data::sequences(&eval_ids, seq_len, text.eval_tokens);

    // Formats and activation options the target runs, and the files that can carry them.
    let plan = &request.search;
    let activations = policy::activations(&target, &plan.formats);
    let formats = policy::candidate_formats(&target, &plan.formats, &activations)?;
    let exports = policy::exports(&request.exports, &target, &model, &formats)?;
    let out = OutDir::staged(&request.out, request.start)?;
    let space = Space::new(
        &model,
        &formats,
        policy::usable_as,
        plan.calibrators.clone(),
        activations.clone(),
    )?
    .with_activation_rule(|f, b| target.legality(&f, b).is_ok())
    .with_roundings(plan.roundings.clone())
    .with_transforms(&model, policy::transforms(&plan.transforms, &activations));
    // Every genome also pays for the tensors outside it, as the export will write them.
    let others = policy::others(&target);
    let names: Vec<&str> = space.slots.iter().map(|s| s.name.as_str()).collect();
    let rest = export::packed::rest(&checkpoint, &names, others)?;
    let space = space.with_rest(rest);

    // What this run is made from: a resumed run refuses an output directory made from others.
    let input_sha256 = sha256_files(checkpoint.files())?;
    let resume = request.start == Start::Resume;
    let key = calib::key(&input_sha256, &sequences);
    let names = |v: Vec<String>| serde_json::json!(v);
    out.claim(
        &[
            ("input_sha256", input_sha256.clone().into()),
            ("calibration tokens", key.clone().into()),
            (
                "held-out tokens",
                calib::key(&input_sha256, &eval_sequences).into(),
            ),
            (
                "hessian tokens",
                calib::key(&input_sha256, &hessian_sequences).into(),
            ),
            ("target", target.name.clone().into()),
            (
                "formats",
                names(formats.iter().map(|f| f.to_string()).collect()),
            ),
            (
                "activations",
                names(activations.iter().map(|a| a.name().to_string()).collect()),
            ),
            (
                "calibrators",
                names(plan.calibrators.iter().map(|c| c.to_string()).collect()),
            ),
            (
                "rounding",
                names(space.roundings.iter().map(|r| r.to_string()).collect()),
            ),
            (
                "transforms",
                names(space.transforms.iter().map(|t| t.to_string()).collect()),
            ),
            ("top_k", text.top_k.into()),
            ("sensitivity tokens", text.sensitivity_tokens.into()),
        ],
        resume,
    )?;
    let constraints = constraints(&request.limits, observer);
    let tables = space.slots.iter().filter(|s| s.usage.gathers()).count();
    observer.note(&format!(
        "{} on {} ({}): {} matmul weights and {tables} embedding tables, formats {}, activations {}",
        request.model.display(),
        target.name,
        target.device,
        space.slots.len() - tables,
        join(&formats),
        activations
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    stage(Stage::Calibration);
    let stats = match resume.then(|| out.saved_stats(&key)).flatten() {
        Some(s) => {
            observer.note("calibration statistics reused from calibration/statistics.json");
            s
        }
        None => {
            let s = calib::collect(&model, &sequences, 1)?;
            out.write_stats(&s, &key)?;
            s
        }
    };
    // The input Hessians live only until the evaluator has their GPTQ factors.
    let hessians = if space.roundings.contains(&Rounding::Gptq) {
        let key = calib::key(&input_sha256, &hessian_sequences);
        Some(match resume.then(|| out.saved_hessians(&key)).flatten() {
            Some(h) => {
                observer.note("input Hessians reused from calibration/hessians.safetensors");
                h
            }
            None => {
                let h = calib::hessians::collect(&model, &hessian_sequences)?;
                out.write_hessians(&h, &key)?;
                h
            }
        })
    } else {
        None
    };

    let sens_sequences: Vec<&[u32]> = sequences
        .iter()
        .copied()
        .take((text.sensitivity_tokens / seq_len).max(1))
        .collect();
    let [rows, cols] = space
        .slots
        .iter()
        .find(|s| !s.usage.gathers())
        .unwrap_or(&space.slots[0])
        .shape;
    let (measured, estimated) = policy::sensitivity_split(&formats, rows, cols);
    let options = Options {
        formats: measured,
        estimated,
        calibrator: plan.calibrators[0],
        top_k: text.top_k,
        reuse: Reuse::Prefix,
        tensors: vec![],
    };
    let saved = match request.start {
        Start::Resume => out.saved_sensitivity(&options, &sens_sequences),
        Start::Fresh => None,
    };
    let sensitivity = match saved {
        Some(s) => {
            stage(Stage::SensitivityReused);
            // Its chart too, which an interrupted run may not have written.
            out.write_sensitivity(&s)?;
            s
        }
        None => {
            stage(Stage::Sensitivity);
            let s = super::sensitivity(&model, &sens_sequences, &stats, &options, observer)?;
            out.write_sensitivity(&s)?;
            s
        }
    };

    stage(Stage::Reference);
    let ids = batch(&sequences).map_err(Error::compute("calibration batch"))?;
    let baseline = Baseline::run(&model, &ids, text.top_k).map_err(Error::compute("float pass"))?;
    let rates = rates(&target, &formats, observer)?;
    let tokens = match model {
        Model::Llama(_) => 1,
        Model::Bert(_) => seq_len,
    };
    let costs = TargetCosts {
        rates: rates.as_ref(),
        tokens,
    };
    let settings = Settings {
        population: plan.population,
        generations: plan.generations,
        seed: plan.seed,
        constraints: constraints.clone(),
    };
    // Room for every tensor's fake-quantized weight in every format (re-quantizing an evicted
    // weight with the mse calibrator costs more than a forward pass), within 3 GiB.
    let cache =
        (space.quantizable_parameters() as usize * 4 * formats.len()).clamp(1 << 28, 3 << 30);
    let mut evaluator = Evaluator::new(&model, &space, &baseline, &stats, cache, PREFIX_CACHE)?;
    if let Some(h) = hessians {
        evaluator = evaluator.with_gptq(&h)?;
    }
    stage(Stage::Search);
    let search_start = Instant::now();
    let outcome = search::run(
        &evaluator,
        &costs,
        Some(&sensitivity),
        &settings,
        Some(StateFile {
            path: &out.search_state(),
            resume: request.start == Start::Resume,
        }),
        &|p| {
            let secs = search_start.elapsed().as_secs_f64().max(1e-9);
            let status = format!(
                "| {} evaluations, {:.2}/s | best feasible loss {} | front {}",
                p.requests,
                p.requests as f64 / secs,
                p.best_loss.map_or("-".into(), |l| format!("{l:.4e}")),
                p.front
            );
            observer.progress(
                Step::Search,
                p.generation as u64 + 1,
                plan.generations as u64 + 1,
                &status,
            );
        },
    )?;
    observer.finished(Step::Search);
    let counters = evaluator.counters();
    let secs = search_start.elapsed().as_secs_f64();
    observer.note(&format!(
        "search: {} evaluations in {secs:.1} s ({:.2}/s), {} answered by the genome cache ({:.0}%)",
        counters.requests,
        counters.requests as f64 / secs.max(1e-9),
        counters.hits,
        100.0 * counters.hits as f64 / counters.requests.max(1) as f64
    ));
    let Some(best) = outcome.selected.clone() else {
        return Err(unmet(&outcome, &constraints, &request.out));
    };
    stage(Stage::Validation);
    let (selected, validation) = policy::choose(
        &model,
        &evaluator,
        &outcome,
        &constraints,
        &validation_sequences,
        best,
    )?;
    let outcome = Outcome {
        selected: Some(selected.clone()),
        ..outcome
    };
    out.write_pareto(&crate::report::pareto::chart(
        &outcome,
        baseline.metric().label(),
    ))?;

    stage(Stage::Export);
    let provenance = Provenance {
        input_sha256,
        calibration_sha256: text.calibration.sha256()?,
        seed: plan.seed,
        qpipe_version: env!("CARGO_PKG_VERSION").to_string(),
        command: request.command.clone(),
    };
    let (choices, folded) = export::packed::choices(&evaluator, &selected.genome)?;
    let packed_path = out.packed();
    let written = export::packed::write(
        &packed_path,
        &checkpoint,
        &model,
        &choices,
        &provenance,
        others,
        &folded,
    )?;
    out.copy_side_files(&checkpoint)?;
    let gguf = if exports.contains(&Export::Gguf) {
        Some(export::gguf::write(
            &checkpoint,
            &choices,
            &folded,
            &out.gguf(),
        )?)
    } else {
        None
    };

    let packed_file = Packed::open(&packed_path)?;
    let onnx = if exports.contains(&Export::Onnx) {
        Some(export::onnx::write(
            &packed_file,
            &out.onnx(),
            export::onnx::Data::Auto,
            target.deploys.as_ref().and_then(|d| d.encodings),
        )?)
    } else {
        None
    };

    stage(Stage::HeldOut);
    let points: Vec<&Point> = outcome.seeds.iter().chain([&selected]).collect();
    let packed_model = Model::load_packed(&packed_file)?;
    let (held_out, packed) = held_out(&model, &evaluator, &points, &packed_model, &eval_sequences)?;
    if !exports.contains(&Export::Qpipe) {
        // Written for the other exports and the held-out run on the packed weights only.
        drop((packed_file, packed_model));
        std::fs::remove_file(&packed_path).map_err(Error::io(&packed_path))?;
    }
    let estimate = estimate(rates.as_ref(), &space, &selected, seq_len);
    let report = CompressReport {
        target: target.name.clone(),
        device: target.device.clone(),
        metric: baseline.metric().label().to_string(),
        calibration_text: text.calibration.to_string(),
        evaluation_text: text.evaluation.to_string(),
        constraints,
        settings,
        formats: formats.iter().map(|f| f.to_string()).collect(),
        genome: space.named(&selected.genome),
        selected: selected.fitness,
        origin: selected.origin,
        estimate,
        packed,
        validation,
        held_out,
        front: outcome.front.clone(),
        requests: outcome.requests,
        cache_hits: outcome.cache_hits,
        size: Size::new(&written, space.parameters(), input_bytes(&checkpoint)?),
        written,
        exports,
        gguf,
        onnx,
        provenance,
    };
    let mut report = report;
    if let Some(o) = report.onnx.as_mut() {
        o.path = out.final_path(&o.path);
        o.data_path = o.data_path.as_deref().map(|p| out.final_path(p));
        if let Some(e) = o.encodings.as_mut() {
            e.path = out.final_path(&e.path);
        }
    }
    out.write_report(&report)?;
    out.finish()?;
    observer.note(&format!(
        "done in {:.1} s; wrote {}",
        start.elapsed().as_secs_f64(),
        request.out.display()
    ));
    Ok(report)
}

/// Every seed and the selected genome (fake-quantized, the selected last) and the packed model
/// on the held-out sequences, a few at a time against one run of the float reference (the
/// overrides of a group are alive together; their weights mostly come from the evaluator's
/// cache). Returns the genomes' results and the packed model's.
fn held_out(
    model: &Model,
    evaluator: &Evaluator<'_>,
    points: &[&Point],
    packed_model: &Model,
    sequences: &[&[u32]],
) -> Result<(Vec<HeldOut>, crate::eval::Comparison)> {
    let mut results = Vec::with_capacity(points.len() + 1);
    for (k, group) in points.chunks(HELD_OUT_GROUP).enumerate() {
        let overrides = group
            .iter()
            .map(|p| evaluator.overrides(&p.genome))
            .collect::<Result<Vec<_>>>()?;
        let mut variants: Vec<Variant<'_>> = overrides
            .iter()
            .map(|o| Variant {
                model,
                overrides: Some(o),
            })
            .collect();
        if (k + 1) * HELD_OUT_GROUP >= points.len() {
            variants.push(Variant::from(packed_model));
        }
        results.extend(compare_all(Variant::from(model), &variants, sequences)?);
    }
    let packed = results.pop().ok_or_else(|| {
        Error::invalid(crate::Subject::other("<evaluation>"), "no held-out result")
    })?;
    let held_out = points
        .iter()
        .zip(results)
        .enumerate()
        .map(|(k, (p, result))| HeldOut {
            origin: if k + 1 == points.len() {
                format!("selected ({})", p.origin)
            } else {
                p.origin.to_string()
            },
            bits_per_weight: p.fitness.bits_per_weight,
            bytes: p.fitness.bytes,
            calibration_loss: p.fitness.loss,
            held_out: result,
        })
        .collect();
    Ok((held_out, packed))
}

/// The constraints asked for; `max_bpw` [`policy::DEFAULT_MAX_BPW`] when no size, latency or
/// energy limit is given (and a note saying so).
fn constraints(limits: &Limits, observer: &dyn Observer) -> Constraints {
    let none = limits.max_bpw.is_none()
        && limits.max_size_mb.is_none()
        && limits.max_latency_ms.is_none()
        && limits.max_energy_mj.is_none();
    if none {
        observer.note(&format!(
            "no size, latency or energy limit given: aiming at --max-bpw {} \
             (4-bit codes with a 16-bit scale per 32 weights)",
            policy::DEFAULT_MAX_BPW
        ));
    }
    Constraints {
        max_bpw: if none {
            Some(policy::DEFAULT_MAX_BPW)
        } else {
            limits.max_bpw
        },
        max_size: limits.max_size_mb.map(|mb| (mb * 1e6) as u64),
        max_latency_ms: limits.max_latency_ms,
        max_energy_mj: limits.max_energy_mj,
        max_loss: limits.max_loss,
    }
}

/// The target's rates: its published profile, or for a measured target (`host`, `llama-cpp`)
/// a calibration on this machine (cached, so reruns reuse the same numbers).
fn rates(
    target: &Target,
    formats: &[Format],
    observer: &dyn Observer,
) -> Result<Box<dyn Rates + Sync>> {
    if target.measured.is_none() {
        return Ok(Box::new(target.clone()));
    }
    let mut cache = Cache::open(&Cache::default_path())?;
    let legal: Vec<Format> = formats
        .iter()
        .copied()
        .filter(|f| target.legality(f, Activation::Float).is_ok())
        .collect();
    observer.note(&format!(
        "measuring {} kernels on this machine (cached in {})",
        target.name,
        cache.path().display()
    ));
    Ok(Box::new(hardware::calibrate(target, &legal, &mut cache)?))
}

/// The cost model's estimate for the selected genome (decode step and a prefill of `tokens`).
fn estimate(
    rates: &(dyn Rates + Sync),
    space: &Space,
    p: &Point,
    tokens: usize,
) -> Option<CostEstimate> {
    let assignment = space.assignment(&p.genome);
    CostModel::new(rates).estimate(&assignment, tokens).ok()
}

/// No genome met the constraints: the error names the closest point.
fn unmet(outcome: &Outcome, c: &Constraints, out: &Path) -> Error {
    let closest = outcome.closest.as_ref().map_or(String::new(), |p| {
        format!(
            "; the closest genome found ({}) has {:.3} bpw, {:.1} MB, loss {:.3e}, {:.3} ms, {:.3} mJ (estimates)",
            p.origin,
            p.fitness.bits_per_weight,
            p.fitness.bytes as f64 / 1e6,
            p.fitness.loss,
            p.fitness.latency_ms,
            p.fitness.energy_mj
        )
    });
    Error::invalid(
        out,
        format!(
            "no genome meets the constraints ({}){closest}",
            super::summary::describe(c)
        ),
    )
}

/// Bytes of the checkpoint's files.
fn input_bytes(checkpoint: &Checkpoint) -> Result<u64> {
    checkpoint
        .files()
        .map(|f| Ok(std::fs::metadata(f).map_err(Error::io(f))?.len()))
        .sum()
}

fn join(formats: &[Format]) -> String {
    formats
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
