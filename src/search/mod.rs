//! Evolutionary multi-objective search over mixed-precision genomes: NSGA-II on the measured
//! loss (from real quantized forward passes), the exact size in bytes and the target's
//! estimated latency and energy, with constraints handled by constraint domination.
//!
//! Seeds are every uniform legal format and Lagrangian allocations from the sensitivity
//! results at several budgets; the archive of everything evaluated is kept, and the answer is
//! picked from it, so the result is never worse than the best seed. Every generation draws from
//! a random stream seeded by (seed, generation), so a resumed search continues exactly as an
//! uninterrupted one would, and the evaluations are deterministic whatever the thread count.

pub mod fitness;
pub mod genome;
pub mod nsga2;
pub mod origin;
pub mod target;

use crate::error::{Error, Result, Subject};
use crate::quant::Activation;
use crate::sensitivity::Sensitivity;
use fitness::Evaluator;
use genome::{Gene, Genome, NamedGenome, Space};
use nsga2::Score;
pub use origin::Origin;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A target's cost estimates for a genome (from a hardware model, not measured).
pub trait Costs: Sync {
    /// Estimated (latency in milliseconds, energy in millijoules).
    fn latency_energy(&self, space: &Space, g: &Genome) -> (f64, f64);
}

/// Limits a genome must meet (`None`: no limit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Constraints {
    /// Bits per weight of the quantizable tensors.
    pub max_bpw: Option<f64>,
    /// Bytes of the quantizable tensors.
    pub max_size: Option<u64>,
    /// Estimated latency.
    pub max_latency_ms: Option<f64>,
    /// Estimated energy.
    pub max_energy_mj: Option<f64>,
    /// Measured loss (mean KL or 1 - cos).
    pub max_loss: Option<f64>,
}

/// A genome's objectives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fitness {
    /// Measured loss on the calibration tokens.
    pub loss: f64,
    /// Exact bytes of the quantizable tensors.
    pub bytes: u64,
    /// Bits per weight of the quantizable tensors.
    pub bits_per_weight: f64,
    /// Estimated latency (ms).
    pub latency_ms: f64,
    /// Estimated energy (mJ).
    pub energy_mj: f64,
}

impl Constraints {
    /// Sum of the relative excesses over each limit (0 when all hold); infinite for a genome
    /// the target cannot run (its cost model prices it at infinity).
    pub fn violation(&self, f: &Fitness) -> f64 {
        if !(f.latency_ms.is_finite() && f.energy_mj.is_finite()) {
            return f64::INFINITY;
        }
        let over =
            |v: f64, limit: Option<f64>| limit.map_or(0.0, |l| (v / l.max(1e-300) - 1.0).max(0.0));
        over(f.bits_per_weight, self.max_bpw)
            + over(f.bytes as f64, self.max_size.map(|s| s as f64))
            + over(f.latency_ms, self.max_latency_ms)
            + over(f.energy_mj, self.max_energy_mj)
            + over(f.loss, self.max_loss)
    }
}

/// Search settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Population size.
    pub population: usize,
    /// Generations after the initial one.
    pub generations: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Limits.
    pub constraints: Constraints,
}

/// One evaluated genome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Where it came from.
    pub origin: Origin,
    /// The genome.
    pub genome: Genome,
    /// Its objectives.
    pub fitness: Fitness,
}

/// What a search found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The seeds, evaluated.
    pub seeds: Vec<Point>,
    /// Non-dominated points (constraint domination) of everything evaluated, by bytes.
    pub front: Vec<Point>,
    /// The lowest-loss point meeting every constraint, if any does.
    pub selected: Option<Point>,
    /// The point closest to meeting the constraints (least violation) when none meets them.
    pub closest: Option<Point>,
    /// Genome evaluations asked for, and of those answered from the cache.
    pub requests: u64,
    /// Cache hits among `requests`.
    pub cache_hits: u64,
}

/// Progress after each generation.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Generations done (0 = the seeds).
    pub generation: usize,
    /// Of how many.
    pub generations: usize,
    /// Genome evaluations asked for so far.
    pub requests: u64,
    /// Lowest loss among the feasible points so far.
    pub best_loss: Option<f64>,
    /// Size of the current first front.
    pub front: usize,
}

/// Saved after every generation, so an interrupted search resumes where it stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    settings: Settings,
    generation: usize,
    population: Vec<NamedGenome>,
    archive: Vec<(Origin, NamedGenome)>,
    losses: Vec<(u64, f64)>,
}

/// Runs the search. `state` (if given) is written after every generation and, with `resume`,
/// read first to continue a previous run with the same settings.
pub fn run(
    evaluator: &Evaluator,
    costs: &dyn Costs,
    sensitivity: Option<&Sensitivity>,
    settings: &Settings,
    state: Option<(&Path, bool)>,
    progress: &dyn Fn(&Progress),
) -> Result<Outcome> {
    let space = evaluator.space();
    if settings.population < 2 {
        return Err(Error::invalid(
            Subject::option("--population"),
            "must be at least 2",
        ));
    }
    let score = |points: &[Point]| -> Vec<Score> {
        points
            .iter()
            .map(|p| Score {
                objectives: vec![
                    p.fitness.loss,
                    p.fitness.bytes as f64,
                    p.fitness.latency_ms,
                    p.fitness.energy_mj,
                ],
                violation: settings.constraints.violation(&p.fitness),
            })
            .collect()
    };
    let evaluate = |origins: Vec<(Origin, Genome)>| -> Result<Vec<Point>> {
        let genomes: Vec<Genome> = origins.iter().map(|(_, g)| g.clone()).collect();
        let losses = evaluator.losses(&genomes)?;
        Ok(origins
            .into_iter()
            .zip(losses)
            .map(|((origin, genome), loss)| {
                let (latency_ms, energy_mj) = costs.latency_energy(space, &genome);
                let fitness = Fitness {
                    loss,
                    bytes: space.bytes(&genome),
                    bits_per_weight: space.bits_per_weight(&genome),
                    latency_ms,
                    energy_mj,
                };
                Point {
                    origin,
                    genome,
                    fitness,
                }
            })
            .collect())
    };
    let guide = Guide::new(space, sensitivity);

    let (mut generation, mut population, mut archive, seeds) =
        match state.filter(|(_, resume)| *resume).map(|(p, _)| p) {
            Some(path) if path.exists() => {
                let saved = load_state(path, settings)?;
                evaluator.remember(&saved.losses);
                let unname = |n: &NamedGenome| {
                    space
                        .unnamed(n)
                        .map_err(|m| Error::invalid(path, format!("saved genome: {m}")))
                };
                let archive = evaluate(
                    saved
                        .archive
                        .iter()
                        .map(|(o, n)| Ok((*o, unname(n)?)))
                        .collect::<Result<_>>()?,
                )?;
                let population = evaluate(
                    saved
                        .population
                        .iter()
                        .map(|n| Ok((Origin::Evolved, unname(n)?)))
                        .collect::<Result<_>>()?,
                )?;
                let seeds = archive
                    .iter()
                    .filter(|p| p.origin.is_seed())
                    .cloned()
                    .collect();
                (saved.generation, population, archive, seeds)
            }
            _ => {
                let seeds = evaluate(seed_genomes(space, &guide, settings))?;
                let mut population = seeds.clone();
                let mut rng = StdRng::seed_from_u64(settings.seed);
                // Fill the first population with mutants of the seeds.
                let mut extra = Vec::new();
                while population.len() + extra.len() < settings.population {
                    let parent = &seeds[rng.random_range(0..seeds.len())].genome;
                    extra.push((Origin::Evolved, guide.mutate(parent, space, None, &mut rng)));
                }
                population.extend(evaluate(extra)?);
                let archive = population.clone();
                let keep = nsga2::select(&score(&population), settings.population);
                let population = keep.iter().map(|&i| population[i].clone()).collect();
                (0, population, archive, seeds)
            }
        };
    // After each generation: progress, then the state file.
    let checkpoint = |generation: usize, population: &[Point], archive: &[Point]| -> Result<()> {
        let counters = evaluator.counters();
        progress(&Progress {
            generation,
            generations: settings.generations,
            requests: counters.requests,
            best_loss: archive
                .iter()
                .filter(|p| settings.constraints.violation(&p.fitness) == 0.0)
                .map(|p| p.fitness.loss)
                .min_by(f64::total_cmp),
            front: nsga2::fronts(&score(population))
                .first()
                .map_or(0, Vec::len),
        });
        match state {
            Some((path, _)) => save_state(
                path, settings, generation, space, population, archive, evaluator,
            ),
            None => Ok(()),
        }
    };
    checkpoint(generation, &population, &archive)?;

    while generation < settings.generations {
        generation += 1;
        let mut rng = StdRng::seed_from_u64(
            settings.seed ^ (generation as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let scores = score(&population);
        let (rank, crowd) = nsga2::rank_and_crowding(&scores);
        let over_size = |p: &Point| genome_over_size(space, &settings.constraints, &p.genome);
        let mut children = Vec::with_capacity(settings.population);
        while children.len() < settings.population {
            let a = &population[nsga2::tournament(&rank, &crowd, &mut rng)];
            let b = &population[nsga2::tournament(&rank, &crowd, &mut rng)];
            let child = crossover(&a.genome, &b.genome, space, &mut rng);
            let shrink = over_size(a).then_some(true);
            let mut child = guide.mutate(&child, space, shrink, &mut rng);
            // Repair: a child over the size limit gives bytes back where they cost least, so
            // an up-move at a tight budget becomes a trade between two tensors.
            for _ in 0..REPAIR_STEPS {
                if !genome_over_size(space, &settings.constraints, &child) {
                    break;
                }
                child = guide.step(&child, space, Some(true), &mut rng);
            }
            children.push((Origin::Evolved, child));
        }
        let children = evaluate(children)?;
        archive.extend(children.iter().cloned());
        population.extend(children);
        let keep = nsga2::select(&score(&population), settings.population);
        population = keep.iter().map(|&i| population[i].clone()).collect();
        checkpoint(generation, &population, &archive)?;
    }

    // Distinct genomes of the archive, first occurrence kept (so seeds keep their origin).
    let mut seen = HashMap::new();
    let distinct: Vec<Point> = archive
        .into_iter()
        .filter(|p| seen.insert(p.genome.key(), ()).is_none())
        .collect();
    let scores = score(&distinct);
    let mut front: Vec<Point> = nsga2::fronts(&scores)
        .first()
        .map(|f| f.iter().map(|&i| distinct[i].clone()).collect())
        .unwrap_or_default();
    front.sort_by(|a, b| {
        a.fitness
            .bytes
            .cmp(&b.fitness.bytes)
            .then(a.fitness.loss.total_cmp(&b.fitness.loss))
    });
    let feasible = |p: &&Point| settings.constraints.violation(&p.fitness) == 0.0;
    let selected = distinct
        .iter()
        .filter(feasible)
        .min_by(|a, b| {
            a.fitness
                .loss
                .total_cmp(&b.fitness.loss)
                .then(a.fitness.bytes.cmp(&b.fitness.bytes))
        })
        .cloned();
    let closest = if selected.is_none() {
        distinct
            .iter()
            .min_by(|a, b| {
                settings
                    .constraints
                    .violation(&a.fitness)
                    .total_cmp(&settings.constraints.violation(&b.fitness))
            })
            .cloned()
    } else {
        None
    };
    let counters = evaluator.counters();
    Ok(Outcome {
        seeds,
        front,
        selected,
        closest,
        requests: counters.requests,
        cache_hits: counters.hits,
    })
}

/// Down-moves a child over the size limit may make to get back under it.
const REPAIR_STEPS: usize = 8;

/// Whether `g` exceeds the bits-per-weight or size limit.
fn genome_over_size(space: &Space, c: &Constraints, g: &Genome) -> bool {
    c.max_bpw.is_some_and(|b| space.bits_per_weight(g) > b)
        || c.max_size.is_some_and(|s| space.bytes(g) > s)
}

/// Every uniform legal format (with the first calibrator and the first activation option it
/// may run with), then, per activation option, Lagrangian allocations from the sensitivity at
/// budgets spread between the smallest and the largest uniform size, plus the `max_bpw` limit.
fn seed_genomes(space: &Space, guide: &Guide, settings: &Settings) -> Vec<(Origin, Genome)> {
    let calibrator = space.calibrators[0];
    let mut formats: Vec<_> = space.slots[0].formats.clone();
    formats.retain(|f| space.slots.iter().all(|s| s.formats.contains(f)));
    let mut seeds: Vec<(Origin, Genome)> = formats
        .iter()
        .filter_map(|&f| {
            let activation = *space
                .activations
                .iter()
                .find(|a| space.pair_legal(f, **a))?;
            let origin = Origin::Uniform {
                format: f,
                activation,
            };
            space
                .uniform(f, calibrator, activation)
                .map(|g| (origin, g))
        })
        .collect();
    if guide.has_sensitivity() {
        let sizes: Vec<f64> = seeds
            .iter()
            .map(|(_, g)| space.bits_per_weight(g))
            .collect();
        let (lo, hi) = sizes.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &b| {
            (lo.min(b), hi.max(b))
        });
        let mut budgets: Vec<f64> = (1..=5).map(|k| lo + (hi - lo) * k as f64 / 6.0).collect();
        budgets.extend(settings.constraints.max_bpw);
        // The spread of budgets with the first activation option that every tensor can run
        // with, and the limit itself with each other option.
        for (k, &activation) in space.activations.iter().enumerate() {
            let lagrangian = |(o, _): &(Origin, Genome)| matches!(o, Origin::Lagrangian { .. });
            let budgets = if k == 0 || !seeds.iter().any(lagrangian) {
                budgets.clone()
            } else {
                settings.constraints.max_bpw.into_iter().collect()
            };
            for &bpw in &budgets {
                let Some(g) = guide.lagrangian(space, bpw, calibrator, activation) else {
                    continue;
                };
                if space.bits_per_weight(&g) <= bpw + 1e-9 && !seeds.iter().any(|(_, s)| *s == g) {
                    seeds.push((Origin::lagrangian(bpw, activation), g));
                }
            }
        }
    }
    seeds
}

/// Layer-wise one-point crossover: layers before a random cut from `a`, the rest from `b`.
/// The child shares `a`'s hidden states up to the cut, so the evaluator's prefix cache starts
/// it there (uniform layer-wise crossover mixed early layers and left nothing to reuse).
fn crossover(a: &Genome, b: &Genome, space: &Space, rng: &mut impl Rng) -> Genome {
    let cut = rng.random_range(0..=space.layers);
    let pick = |layer: usize| if layer < cut { a } else { b };
    Genome {
        genes: space
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| pick(s.layer).genes[i])
            .collect(),
        activations: (0..space.layers).map(|l| pick(l).activations[l]).collect(),
    }
}

/// Sensitivity-guided moves: per tensor, the measured loss of each format (when known).
struct Guide {
    /// `loss[i][format]` for slot i.
    loss: Vec<HashMap<crate::quant::Format, f64>>,
}

impl Guide {
    fn new(space: &Space, sensitivity: Option<&Sensitivity>) -> Guide {
        let mut loss = vec![HashMap::new(); space.slots.len()];
        if let Some(s) = sensitivity {
            let index: HashMap<&str, usize> = space
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.as_str(), i))
                .collect();
            for e in &s.entries {
                if let Some(&i) = index.get(e.tensor.as_str()) {
                    loss[i].insert(e.format, e.loss);
                }
            }
        }
        Guide { loss }
    }

    fn has_sensitivity(&self) -> bool {
        self.loss.iter().any(|l| !l.is_empty())
    }

    /// Loss of slot `i` in `f`: measured, else interpolated log-linearly in bytes between the
    /// measured formats around it (beyond them: the nearest measured loss; none measured: 0).
    fn slot_loss(&self, space: &Space, i: usize, f: crate::quant::Format) -> f64 {
        if let Some(&l) = self.loss[i].get(&f) {
            return l;
        }
        let slot = &space.slots[i];
        let bytes = slot.bytes(f) as f64;
        let mut known: Vec<(f64, f64)> = self.loss[i]
            .iter()
            .map(|(g, l)| (slot.bytes(*g) as f64, l.max(1e-12)))
            .collect();
        known.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let below = known.iter().rev().find(|k| k.0 <= bytes);
        let above = known.iter().find(|k| k.0 >= bytes);
        match (below, above) {
            (Some(&(b0, l0)), Some(&(b1, l1))) if b1 > b0 => {
                let t = (bytes - b0) / (b1 - b0);
                (l0.ln() + t * (l1.ln() - l0.ln())).exp()
            }
            (Some(&(_, l)), _) | (None, Some(&(_, l))) => l,
            (None, None) => 0.0,
        }
    }

    /// Per tensor, the format (among those that run with `activation` inputs) minimising
    /// loss + lambda * bytes, with lambda bisected so the total stays within `bpw` (the largest
    /// lambda-feasible allocation); `None` if some tensor has no format for `activation`.
    fn lagrangian(
        &self,
        space: &Space,
        bpw: f64,
        calibrator: crate::quant::Calibrator,
        activation: Activation,
    ) -> Option<Genome> {
        let legal: Vec<Vec<crate::quant::Format>> = space
            .slots
            .iter()
            .map(|s| {
                s.formats
                    .iter()
                    .copied()
                    .filter(|f| space.pair_legal(*f, activation))
                    .collect()
            })
            .collect();
        if legal.iter().any(Vec::is_empty) {
            return None;
        }
        let alloc = |lambda: f64| Genome {
            genes: space
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let format = *legal[i]
                        .iter()
                        .min_by(|a, b| {
                            let cost = |f: crate::quant::Format| {
                                self.slot_loss(space, i, f) + lambda * s.bytes(f) as f64
                            };
                            cost(**a).total_cmp(&cost(**b)).then(a.cmp(b))
                        })
                        .unwrap_or(&legal[i][0]);
                    Gene { format, calibrator }
                })
                .collect(),
            activations: vec![activation; space.layers],
        };
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        while space.bits_per_weight(&alloc(hi)) > bpw && hi < 1e30 {
            hi *= 10.0;
        }
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if space.bits_per_weight(&alloc(mid)) > bpw {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(alloc(hi))
    }

    /// A child of `g`: mostly a [`Self::step`] (`shrink` as there); now and then the
    /// calibrator of a tensor or a layer's activations change instead.
    fn mutate(
        &self,
        g: &Genome,
        space: &Space,
        shrink: Option<bool>,
        rng: &mut impl Rng,
    ) -> Genome {
        let mut child = g.clone();
        let roll: f64 = rng.random();
        if roll < 0.1 && space.calibrators.len() > 1 {
            let i = rng.random_range(0..space.slots.len());
            child.genes[i].calibrator =
                space.calibrators[rng.random_range(0..space.calibrators.len())];
            return child;
        }
        if roll < 0.2 && space.activations.len() > 1 {
            let l = rng.random_range(0..space.layers);
            // Only options every tensor of the layer may run with.
            let options: Vec<Activation> = space
                .activations
                .iter()
                .copied()
                .filter(|a| {
                    space
                        .slots
                        .iter()
                        .zip(&child.genes)
                        .filter(|(s, _)| s.layer == l)
                        .all(|(_, g)| space.pair_legal(g.format, *a))
                })
                .collect();
            if !options.is_empty() {
                child.activations[l] = options[rng.random_range(0..options.len())];
            }
            return child;
        }
        self.step(&child, space, shrink, rng)
    }

    /// A child of `g` with one tensor moved one format step (down with `Some(true)`, else up
    /// or down at random), drawn with probability proportional to the sensitivity trade of the
    /// move (loss change per byte), or uniformly without sensitivity.
    fn step(&self, g: &Genome, space: &Space, shrink: Option<bool>, rng: &mut impl Rng) -> Genome {
        let mut child = g.clone();
        let down = shrink.unwrap_or_else(|| rng.random_bool(0.5));
        // (slot, new format, weight of the move)
        let moves: Vec<(usize, crate::quant::Format, f64)> = space
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let at = s.formats.iter().position(|f| *f == child.genes[i].format)?;
                let to = if down { at.checked_sub(1)? } else { at + 1 };
                let f = *s.formats.get(to)?;
                if !space.pair_legal(f, child.activations[s.layer]) {
                    return None;
                }
                let dl = (self.slot_loss(space, i, f)
                    - self.slot_loss(space, i, child.genes[i].format))
                .abs();
                let db = (s.bytes(f) as f64 - s.bytes(child.genes[i].format) as f64)
                    .abs()
                    .max(1.0);
                // Down: cheap losses per byte saved are attractive; up: big gains per byte.
                let trade = if down { db / (dl + 1e-12) } else { dl / db };
                Some((i, f, trade))
            })
            .collect();
        if moves.is_empty() {
            return child;
        }
        let weights: Vec<f64> = if self.has_sensitivity() {
            let max = moves
                .iter()
                .map(|m| m.2)
                .fold(0.0, f64::max)
                .max(f64::MIN_POSITIVE);
            moves.iter().map(|m| (m.2 / max).max(1e-3)).collect()
        } else {
            vec![1.0; moves.len()]
        };
        let total: f64 = weights.iter().sum();
        let mut pick = rng.random::<f64>() * total;
        let mut chosen = moves.len() - 1;
        for (k, w) in weights.iter().enumerate() {
            if pick < *w {
                chosen = k;
                break;
            }
            pick -= w;
        }
        let (i, f, _) = moves[chosen];
        child.genes[i].format = f;
        child
    }
}

fn load_state(path: &Path, settings: &Settings) -> Result<State> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    let state: State = serde_json::from_slice(&bytes)
        .map_err(|e| Error::invalid(path, format!("not a qpipe search state: {e}")))?;
    // More generations may be asked for; everything else must match.
    let same = Settings {
        generations: settings.generations,
        ..state.settings.clone()
    };
    if same != *settings {
        return Err(Error::invalid(
            path,
            "the saved search used other settings (population, seed or constraints); \
             rerun without --resume or with the same settings",
        ));
    }
    Ok(state)
}

fn save_state(
    path: &Path,
    settings: &Settings,
    generation: usize,
    space: &Space,
    population: &[Point],
    archive: &[Point],
    evaluator: &Evaluator,
) -> Result<()> {
    let state = State {
        settings: settings.clone(),
        generation,
        population: population.iter().map(|p| space.named(&p.genome)).collect(),
        archive: archive
            .iter()
            .map(|p| (p.origin, space.named(&p.genome)))
            .collect(),
        losses: evaluator.known(),
    };
    let text = serde_json::to_vec(&state)
        .map_err(|e| Error::invalid(path, format!("cannot serialise the search state: {e}")))?;
    crate::checkpoint::write::write_atomic(path, &text)
}

/// Where the search state of an output directory lives.
pub fn state_path(out: &Path) -> PathBuf {
    out.join("search-state.json")
}
