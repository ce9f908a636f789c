//! `qpipe compress`: calibration -> sensitivity -> search -> export -> held-out evaluation ->
//! report, for one hardware target.

use crate::calib;
use crate::checkpoint::write::write_atomic;
use crate::checkpoint::Checkpoint;
use crate::cli::{default_seq_len, load_tokens, stdout_error};
use crate::error::{Error, Result};
use crate::eval::baseline::{batch, Baseline};
use crate::eval::{compare_all, Comparison, Variant};
use crate::export::gguf;
use crate::export::packed::{self, Choice, Packed, Provenance, Written};
use crate::hardware::{self, Cache, CostEstimate, CostModel, Rates, Target};
use crate::model::Model;
use crate::quant::{Activation, Calibrator, Format};
use crate::report::{human_bytes, Table};
use crate::search::fitness::Evaluator;
use crate::search::genome::{NamedGenome, Space};
use crate::search::target::TargetCosts;
use crate::search::{self, Constraints, Outcome, Point, Settings};
use crate::sensitivity::{self, Options, Sensitivity};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Bits per weight a compress aims under when no size, latency or energy limit is given: 4-bit
/// codes with a 16-bit scale per 32 weights.
const DEFAULT_MAX_BPW: f64 = 4.5;

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

/// Bytes of hidden states kept for children to start from: a few generations of parents.
const PREFIX_CACHE: usize = 1 << 30;

/// Genomes evaluated on the held-out tokens per run of the float reference.
const HELD_OUT_GROUP: usize = 4;

/// Feasible genomes whose search loss is within this factor of the lowest are compared on
/// further calibration tokens before one is chosen (at most [`HELD_OUT_GROUP`] of them).
const VALIDATION_SLACK: f64 = 1.1;

/// Arguments of `qpipe compress`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory (or .safetensors file) with config.json and tokenizer.json.
    pub model: PathBuf,
    /// Hardware target (see `qpipe targets`).
    #[arg(long)]
    pub target: String,
    /// Limit on bits per weight of the matmul weights (scales and zero-points included).
    #[arg(long)]
    pub max_bpw: Option<f64>,
    /// Limit on the matmul weights' size, in MB (10^6 bytes).
    #[arg(long)]
    pub max_size: Option<f64>,
    /// Limit on the estimated latency (decode step for LMs, one sequence for encoders), ms.
    #[arg(long)]
    pub max_latency_ms: Option<f64>,
    /// Limit on the estimated energy, mJ.
    #[arg(long)]
    pub max_energy_mj: Option<f64>,
    /// Limit on the measured loss on the calibration tokens (mean KL; 1 - cos for encoders).
    #[arg(long)]
    pub max_kld: Option<f64>,
    /// Genomes per generation.
    #[arg(long, default_value_t = 16)]
    pub population: usize,
    /// Generations after the seeds.
    #[arg(long, default_value_t = 8)]
    pub generations: usize,
    /// Seed of every random choice of the search.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory.
    #[arg(long, default_value = "qpipe-out")]
    pub out: PathBuf,
    /// Continue the search saved in the output directory (more --generations allowed).
    #[arg(long)]
    pub resume: bool,
    /// Calibration text.
    #[arg(long, default_value = "calibration-data/sotu-calibration.txt")]
    pub data: PathBuf,
    /// Held-out evaluation text (disjoint from the calibration text).
    #[arg(long, default_value = "calibration-data/sotu-eval.txt")]
    pub eval_data: PathBuf,
    /// Calibration tokens the search measures genomes on.
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    /// Held-out tokens the result is evaluated on.
    #[arg(long, default_value_t = 1024)]
    pub eval_tokens: usize,
    /// Tokens per sequence (default: 256 for causal LMs, 64 for encoders, whose loss is
    /// averaged over one embedding per sequence).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Calibration tokens of the per-tensor sensitivity pass that guides the search.
    #[arg(long, default_value_t = 256)]
    pub sensitivity_tokens: usize,
    /// Float log-probabilities kept per position for the search's KL.
    #[arg(long, default_value_t = 256)]
    pub top_k: usize,
    /// Candidate formats (default: per bit width the first legal one of a built-in menu).
    #[arg(long, value_delimiter = ',')]
    pub formats: Vec<Format>,
    /// Weight calibrators the search may choose from (weighted by input importance).
    #[arg(long, value_delimiter = ',', default_value = "mse")]
    pub calibrators: Vec<Calibrator>,
    /// Print the report as JSON on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// One genome evaluated on the held-out tokens.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    /// Where it came from.
    pub origin: String,
    /// Bits per weight of the matmul weights.
    pub bits_per_weight: f64,
    /// Bytes of the matmul weights.
    pub bytes: u64,
    /// Loss on the calibration tokens (what the search saw).
    pub calibration_loss: f64,
    /// Held-out metrics (fake-quantized forward passes).
    pub held_out: Comparison,
}

/// A genome compared on the validation tokens.
#[derive(Debug, Serialize)]
pub struct Validated {
    /// Where it came from.
    pub origin: String,
    /// Loss on the search's calibration tokens.
    pub calibration_loss: f64,
    /// Loss on the further calibration tokens.
    pub validation_loss: f64,
}

/// `qpipe.json`: what was chosen, why, and how good it measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Target name.
    pub target: String,
    /// Device the target describes.
    pub device: String,
    /// Metric of every loss (`mean KL` or `1 - cos`).
    pub metric: String,
    /// Constraints the selection met.
    pub constraints: Constraints,
    /// Search settings.
    pub settings: Settings,
    /// Candidate formats.
    pub formats: Vec<String>,
    /// The selected genome.
    pub genome: NamedGenome,
    /// Its objectives on the calibration tokens (latency and energy are estimates).
    pub selected: search::Fitness,
    /// Where the selected genome came from.
    pub origin: String,
    /// Cost-model estimates for the selected genome (decode step and prefill of `seq_len`).
    pub estimate: Option<CostEstimate>,
    /// Held-out metrics of the packed checkpoint, run on the packed weights.
    pub packed: Comparison,
    /// The genomes the choice was among, on further calibration tokens.
    pub validation: Vec<Validated>,
    /// Every seed and the selected genome on the held-out tokens (fake-quantized).
    pub held_out: Vec<HeldOut>,
    /// The Pareto front (calibration loss, bytes, estimated latency and energy).
    pub front: Vec<search::Point>,
    /// Genome evaluations asked for and answered from the cache.
    pub requests: u64,
    /// Cache hits among them.
    pub cache_hits: u64,
    /// The packed file.
    pub written: Written,
    /// The GGUF file (`--target llama-cpp`).
    pub gguf: Option<gguf::Written>,
    /// Where it all came from.
    pub provenance: Provenance,
}

/// Runs `qpipe compress`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let start = Instant::now();
    let target = hardware::target(&args.target)?;
    let checkpoint = Checkpoint::open(&args.model)?;
    let model = Model::load(&checkpoint)?;
    let tokenizer = crate::data::tokenizer(&checkpoint)?;
    let seq_len = args.seq_len.unwrap_or_else(|| default_seq_len(&model));
    // The search's tokens, then as many again (where the text has them) for the choice among
    // its best genomes.
    let cal_ids = load_tokens(&tokenizer, &args.data, 2 * args.tokens, seq_len)?;
    let eval_ids = load_tokens(&tokenizer, &args.eval_data, args.eval_tokens, seq_len)?;
    let sequences = crate::data::sequences(&cal_ids, seq_len, args.tokens);
    let validation_sequences =
        crate::data::sequences(&cal_ids[sequences.len() * seq_len..], seq_len, args.tokens);
    let eval_sequences = crate::data::sequences(&eval_ids, seq_len, args.eval_tokens);
    std::fs::create_dir_all(&args.out).map_err(Error::io(&args.out))?;
    let constraints = constraints(args);

    // Formats and activation options the target runs.
    let activations: Vec<Activation> = [Activation::Float, Activation::A16, Activation::A8]
        .into_iter()
        .filter(|b| {
            menu()
                .iter()
                .chain(&args.formats)
                .any(|f| target.legality(f, *b).is_ok())
        })
        .collect();
    let formats = candidate_formats(&target, &args.formats, &activations)?;
    let space = Space::new(
        &model,
        &formats,
        |_, _, _| true,
        args.calibrators.clone(),
        activations.clone(),
    )?
    .with_activation_rule(|f, b| target.legality(&f, b).is_ok());
    eprintln!(
        "qpipe: {} on {} ({}): {} matmul weights, formats {}, activations {}",
        args.model.display(),
        target.name,
        target.device,
        space.slots.len(),
        join(&formats),
        activations
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let stage = |what: &str| eprintln!("qpipe: [{:>6.1} s] {what}", start.elapsed().as_secs_f64());
    stage("calibration statistics");
    let stats = calib::collect(&model, &sequences, 1)?;

    let sens_path = args.out.join("sensitivity.json");
    let sens_sequences: Vec<&[u32]> = sequences
        .iter()
        .copied()
        .take((args.sensitivity_tokens / seq_len).max(1))
        .collect();
    let [rows, cols] = space.slots[0].shape;
    let (measured, estimated) = sensitivity_split(&formats, rows, cols);
    let options = Options {
        formats: measured,
        estimated,
        calibrator: args.calibrators[0],
        top_k: args.top_k,
        prefix_reuse: true,
        tensors: vec![],
    };
    let sensitivity = match reuse_sensitivity(args.resume, &sens_path, &options, &sens_sequences) {
        Some(s) => {
            stage("sensitivity: reusing sensitivity.json");
            s
        }
        None => {
            stage("per-tensor sensitivity");
            let bar = bar(
                (space.slots.len() * options.formats.len()) as u64,
                "{elapsed_precise} [{bar:40}] {pos}/{len} sensitivity candidates ({per_sec}, eta {eta})",
            );
            let s = sensitivity::analyse(&model, &sens_sequences, &stats, &options, &|total| {
                bar.set_length(total as u64);
                bar.inc(1)
            })?;
            bar.finish_and_clear();
            let json = serde_json::to_string_pretty(&s)
                .map_err(|e| Error::invalid(&sens_path, e.to_string()))?;
            write_atomic(&sens_path, format!("{json}\n").as_bytes())?;
            write_atomic(
                &args.out.join("sensitivity.svg"),
                crate::cli::sensitivity::chart(&s).as_bytes(),
            )?;
            s
        }
    };

    stage("float reference on the calibration tokens");
    let ids = batch(&sequences).map_err(Error::compute("calibration batch"))?;
    let baseline = Baseline::run(&model, &ids, args.top_k).map_err(Error::compute("float pass"))?;
    let rates = rates(&target, &formats)?;
    let tokens = match model {
        Model::Llama(_) => 1,
        Model::Bert(_) => seq_len,
    };
    let costs = TargetCosts {
        rates: rates.as_ref(),
        tokens,
    };
    let settings = Settings {
        population: args.population,
        generations: args.generations,
        seed: args.seed,
        constraints: constraints.clone(),
    };
    // Room for every tensor's fake-quantized weight in every format (re-quantizing an evicted
    // weight with the mse calibrator costs more than a forward pass), within 3 GiB.
    let cache = (space.parameters() as usize * 4 * formats.len()).clamp(1 << 28, 3 << 30);
    let evaluator = Evaluator::new(&model, &space, &baseline, &stats, cache, PREFIX_CACHE)?;
    stage("search");
    let bar = bar(
        args.generations as u64 + 1,
        "{elapsed_precise} [{bar:30}] generation {pos}/{len} {msg}",
    );
    let search_start = Instant::now();
    let outcome = search::run(
        &evaluator,
        &costs,
        Some(&sensitivity),
        &settings,
        Some(search::StateFile {
            path: &search::state_path(&args.out),
            resume: args.resume,
        }),
        &|p| {
            let secs = search_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_position(p.generation as u64 + 1);
            bar.set_message(format!(
                "| {} evaluations, {:.2}/s | best feasible loss {} | front {}",
                p.requests,
                p.requests as f64 / secs,
                p.best_loss.map_or("-".into(), |l| format!("{l:.4e}")),
                p.front
            ));
        },
    )?;
    bar.finish_and_clear();
    let counters = evaluator.counters();
    eprintln!(
        "qpipe: search: {} evaluations in {:.1} s ({:.2}/s), {} answered by the genome cache ({:.0}%)",
        counters.requests,
        search_start.elapsed().as_secs_f64(),
        counters.requests as f64 / search_start.elapsed().as_secs_f64().max(1e-9),
        counters.hits,
        100.0 * counters.hits as f64 / counters.requests.max(1) as f64
    );
    let Some(best) = outcome.selected.clone() else {
        return Err(unmet(&outcome, &constraints, &args.out));
    };
    stage("validation");
    let (selected, validation) = validate(
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
    write_atomic(
        &args.out.join("pareto.svg"),
        crate::report::pareto::svg(&outcome, baseline.metric().label()).as_bytes(),
    )?;

    stage("export");
    let provenance = Provenance {
        input_sha256: packed::sha256_files(checkpoint.files())?,
        calibration_sha256: packed::sha256_files([args.data.as_path()])?,
        seed: args.seed,
        qpipe_version: env!("CARGO_PKG_VERSION").to_string(),
        command: std::env::args().collect(),
    };
    let choices: BTreeMap<String, Choice<'_>> = space
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let gene = selected.genome.genes[i];
            (
                s.name.clone(),
                Choice {
                    format: gene.format,
                    calibrator: gene.calibrator,
                    importance: Some(evaluator.importance(i)),
                    input_quant: evaluator.input_quant(&selected.genome, i),
                },
            )
        })
        .collect();
    let packed_path = args.out.join("model.qpipe.safetensors");
    let written = packed::write(&packed_path, &checkpoint, &model, &choices, &provenance)?;
    copy_side_files(&checkpoint, &args.out)?;
    let gguf = if target.name == "llama-cpp" {
        Some(write_gguf(
            &checkpoint,
            &choices,
            &args.out.join("model.gguf"),
        )?)
    } else {
        None
    };

    stage("held-out evaluation");
    // Every seed and the selected genome (fake-quantized), and the packed file reloaded, a few
    // at a time against one run of the float reference (the overrides of a group are alive
    // together; their weights mostly come from the evaluator's cache).
    let points: Vec<&Point> = outcome.seeds.iter().chain([&selected]).collect();
    let packed_model = Model::load_packed(&Packed::open(&packed_path)?)?;
    let mut results = Vec::with_capacity(points.len() + 1);
    for (k, group) in points.chunks(HELD_OUT_GROUP).enumerate() {
        let overrides = group
            .iter()
            .map(|p| evaluator.overrides(&p.genome))
            .collect::<Result<Vec<_>>>()?;
        let mut variants: Vec<Variant<'_>> = overrides
            .iter()
            .map(|o| Variant {
                model: &model,
                overrides: Some(o),
            })
            .collect();
        let last = (k + 1) * HELD_OUT_GROUP >= points.len();
        if last {
            variants.push(Variant::from(&packed_model));
        }
        results.extend(compare_all(
            Variant::from(&model),
            &variants,
            &eval_sequences,
        )?);
    }
    let packed = results
        .pop()
        .ok_or_else(|| Error::invalid(&packed_path, "no held-out result"))?;
    let held_out: Vec<HeldOut> = points
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
    let estimate = estimate(rates.as_ref(), &space, &selected, seq_len);
    let report = Report {
        target: target.name.clone(),
        device: target.device.clone(),
        metric: baseline.metric().label().to_string(),
        constraints,
        settings,
        formats: formats.iter().map(|f| f.to_string()).collect(),
        genome: space.named(&selected.genome),
        selected: selected.fitness,
        origin: selected.origin.to_string(),
        estimate,
        packed,
        validation,
        held_out,
        front: outcome.front.clone(),
        requests: outcome.requests,
        cache_hits: outcome.cache_hits,
        written,
        gguf,
        provenance,
    };
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::invalid(&args.out, e.to_string()))?;
    write_atomic(&args.out.join("qpipe.json"), format!("{json}\n").as_bytes())?;
    eprintln!(
        "qpipe: done in {:.1} s; wrote {}",
        start.elapsed().as_secs_f64(),
        args.out.display()
    );
    let text = if args.json {
        format!("{json}\n")
    } else {
        summary(&report, &space)
    };
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    Ok(0)
}

/// Every format of the menu (the menu is fixed, so a bad entry is a bug caught by tests).
fn menu() -> Vec<Format> {
    MENU.iter()
        .flat_map(|g| g.iter())
        .filter_map(|f| f.parse().ok())
        .collect()
}

/// The candidate formats: the user's (each must be legal with some activation option), or the
/// first legal format of each menu group.
fn candidate_formats(
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
fn sensitivity_split(formats: &[Format], rows: usize, cols: usize) -> (Vec<Format>, Vec<Format>) {
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

/// The constraints asked for; `--max-bpw 4.5` when no size, latency or energy limit is given.
fn constraints(args: &Args) -> Constraints {
    let none = args.max_bpw.is_none()
        && args.max_size.is_none()
        && args.max_latency_ms.is_none()
        && args.max_energy_mj.is_none();
    if none {
        eprintln!(
            "qpipe: no size, latency or energy limit given: aiming at --max-bpw {DEFAULT_MAX_BPW} \
             (4-bit codes with a 16-bit scale per 32 weights)"
        );
    }
    Constraints {
        max_bpw: if none {
            Some(DEFAULT_MAX_BPW)
        } else {
            args.max_bpw
        },
        max_size: args.max_size.map(|mb| (mb * 1e6) as u64),
        max_latency_ms: args.max_latency_ms,
        max_energy_mj: args.max_energy_mj,
        max_loss: args.max_kld,
    }
}

/// The target's rates: its published profile, or for a measured target (`host`, `llama-cpp`)
/// a calibration on this machine (cached, so reruns reuse the same numbers).
fn rates(target: &Target, formats: &[Format]) -> Result<Box<dyn Rates + Sync>> {
    if target.measured.is_none() {
        return Ok(Box::new(target.clone()));
    }
    let mut cache = Cache::open(&Cache::default_path())?;
    let legal: Vec<Format> = formats
        .iter()
        .copied()
        .filter(|f| target.legality(f, Activation::Float).is_ok())
        .collect();
    eprintln!(
        "qpipe: measuring {} kernels on this machine (cached in {})",
        target.name,
        cache.path().display()
    );
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

/// The feasible genomes nearly as good as `chosen` (the search's pick) on the search's tokens,
/// measured on calibration tokens the search never saw, and the best of them there. The
/// search's loss flatters genomes fitted to its own tokens: on MiniLM the evolved genome beat
/// the best seed by 4% on them and lost to it by 2% on held-out text.
fn validate(
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
            origin: p.origin.to_string(),
            calibration_loss: p.fitness.loss,
            validation_loss: l,
        })
        .collect();
    Ok((candidates[best].clone(), validated))
}

/// The saved sensitivity of an earlier run into the same directory, when resuming with the
/// same formats, calibrator and tokens.
fn reuse_sensitivity(
    resume: bool,
    path: &Path,
    options: &Options,
    sequences: &[&[u32]],
) -> Option<Sensitivity> {
    if !resume {
        return None;
    }
    let s: Sensitivity = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let formats: Vec<Format> = {
        let mut f: Vec<Format> = s.entries.iter().map(|e| e.format).collect();
        f.sort();
        f.dedup();
        f
    };
    let mut want: Vec<Format> = options
        .formats
        .iter()
        .chain(&options.estimated)
        .copied()
        .collect();
    want.sort();
    (s.sequences == sequences.len()
        && s.seq_len == sequences.first().map_or(0, |q| q.len())
        && s.calibrator == options.calibrator
        && formats == want)
        .then_some(s)
}

/// `model.gguf` for llama.cpp with the chosen block types (float tensors stay F32).
fn write_gguf(
    checkpoint: &Checkpoint,
    choices: &BTreeMap<String, Choice<'_>>,
    path: &Path,
) -> Result<gguf::Written> {
    let mut types = std::collections::HashMap::new();
    let mut importance = std::collections::HashMap::new();
    for (name, c) in choices {
        match c.format {
            Format::Gguf(t) => {
                types.insert(name.clone(), t);
            }
            Format::Float(crate::quant::FloatType::F32) => {}
            other => {
                return Err(Error::unsupported(
                    Path::new(name),
                    format!("GGUF export stores GGUF block types and f32, not {other}"),
                ))
            }
        }
        if let Some(imp) = c.importance {
            importance.insert(name.clone(), imp.to_vec());
        }
    }
    gguf::write(checkpoint, &types, &importance, path)
}

/// config.json and tokenizer.json beside the packed file, so it loads on its own.
fn copy_side_files(checkpoint: &Checkpoint, out: &Path) -> Result<()> {
    for name in ["config.json", "tokenizer.json"] {
        let src = checkpoint.dir().join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(Error::io(&src))?;
            write_atomic(&out.join(name), &bytes)?;
        }
    }
    Ok(())
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
        format!("no genome meets the constraints ({}){closest}", describe(c)),
    )
}

fn describe(c: &Constraints) -> String {
    let mut parts = Vec::new();
    if let Some(v) = c.max_bpw {
        parts.push(format!("--max-bpw {v}"));
    }
    if let Some(v) = c.max_size {
        parts.push(format!("--max-size {} MB", v as f64 / 1e6));
    }
    if let Some(v) = c.max_latency_ms {
        parts.push(format!("--max-latency-ms {v}"));
    }
    if let Some(v) = c.max_energy_mj {
        parts.push(format!("--max-energy-mj {v}"));
    }
    if let Some(v) = c.max_loss {
        parts.push(format!("--max-kld {v}"));
    }
    parts.join(", ")
}

fn bar(len: u64, template: &str) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    )
}

fn join(formats: &[Format]) -> String {
    formats
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The terminal summary: what was chosen and why, seeds side by side on held-out tokens.
fn summary(r: &Report, space: &Space) -> String {
    let metric_of = |c: &Comparison| match c {
        Comparison::Lm(l) => format!("{:.4e} (ppl {:.3})", l.mean_kld, l.ppl),
        Comparison::Embedding(e) => {
            format!("{:.4e} (min cos {:.5})", 1.0 - e.mean_cosine, e.min_cosine)
        }
    };
    let mut s = format!(
        "target {} ({}); limits: {}\n\n",
        r.target,
        r.device,
        describe(&r.constraints)
    );
    let mut t = Table::new(vec![
        "genome".into(),
        "bpw".into(),
        "size".into(),
        format!("calibration {}", r.metric),
        format!("held-out {}", r.metric),
    ]);
    for h in &r.held_out {
        t.row(vec![
            h.origin.clone(),
            format!("{:.3}", h.bits_per_weight),
            human_bytes(h.bytes),
            format!("{:.4e}", h.calibration_loss),
            metric_of(&h.held_out),
        ]);
    }
    s += &t.render(2);
    if !r.validation.is_empty() {
        s += &format!(
            "\nchosen by {} on further calibration tokens among the genomes within {:.0}% of the \
             lowest search loss: {}\n",
            r.metric,
            (VALIDATION_SLACK - 1.0) * 100.0,
            r.validation
                .iter()
                .map(|v| format!("{} {:.4e}", v.origin, v.validation_loss))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // When the limits cost much accuracy, say what the accuracy would cost in size.
    let chosen = r
        .held_out
        .last()
        .map_or(f64::INFINITY, |h| h.held_out.loss());
    if let Some(best) = r
        .held_out
        .iter()
        .filter(|h| h.bytes > r.selected.bytes)
        .min_by(|a, b| a.held_out.loss().total_cmp(&b.held_out.loss()))
        .filter(|b| b.held_out.loss() * 4.0 < chosen)
    {
        s += &format!(
            "\nthe limits cost accuracy: {} at {:.2} bpw measured a held-out {} of {:.3e}, {:.0}x \
             lower than the selection's; raise --max-bpw or --max-size to trade size for it\n",
            best.origin,
            best.bits_per_weight,
            r.metric,
            best.held_out.loss(),
            chosen / best.held_out.loss()
        );
    }
    // Formats chosen, counted.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for g in &r.genome.tensors {
        *counts.entry(g.gene.format.to_string()).or_default() += 1;
    }
    let acts: BTreeMap<String, usize> =
        r.genome
            .activations
            .iter()
            .fold(BTreeMap::new(), |mut m, a| {
                *m.entry(a.to_string()).or_default() += 1;
                m
            });
    s += &format!(
        "\nselected: {} — {:.3} bpw, {} of matmul weights ({} tensors: {}; layer activations: {})\n",
        r.origin,
        r.selected.bits_per_weight,
        human_bytes(r.selected.bytes),
        space.slots.len(),
        counts
            .iter()
            .map(|(f, n)| format!("{n} x {f}"))
            .collect::<Vec<_>>()
            .join(", "),
        acts.iter()
            .map(|(a, n)| format!("{n} x {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s += &format!(
        "packed checkpoint: {} ({}); held-out {} on the packed weights: {}\n",
        "model.qpipe.safetensors",
        human_bytes(r.written.file_bytes),
        r.metric,
        metric_of(&r.packed)
    );
    if let Some(g) = &r.gguf {
        s += &format!(
            "model.gguf for llama.cpp: {} ({} tensors)\n",
            human_bytes(g.bytes),
            g.tensors
        );
    }
    s += &format!(
        "estimated on {}: {:.3} ms, {:.3} mJ per {} (cost model, not measured)\n",
        r.target,
        r.selected.latency_ms,
        r.selected.energy_mj,
        if matches!(r.packed, Comparison::Lm(_)) {
            "decode step"
        } else {
            "sequence"
        }
    );
    s
}
