//! The run loop: seeds, then generations of NSGA-II selection over crossover and mutation,
//! the state saved after each; the answer is picked from everything evaluated.

use super::fitness::Evaluator;
use super::genome::{Genome, NamedGenome};
use super::guide::{crossover, genome_over_size, Direction, Guide};
use super::nsga2::{self, Score};
use super::seeds::seed_genomes;
use super::state::{load_state, save_state, StateFile};
use super::{Costs, Fitness, Origin, Outcome, Point, Progress, Settings};
use crate::error::{Error, Result, Subject};
use crate::sensitivity::Sensitivity;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Runs the search. `state` (if given) is written after every generation and, when it says to
/// resume, read first to continue a previous run with the same settings.
pub fn run(
    evaluator: &Evaluator,
    costs: &dyn Costs,
    sensitivity: Option<&Sensitivity>,
    settings: &Settings,
    state: Option<StateFile<'_>>,
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
        match state.filter(|s| s.resume).map(|s| s.path) {
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
                    extra.push((
                        Origin::Evolved,
                        guide.mutate(parent, space, Direction::Either, &mut rng),
                    ));
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
            Some(s) => save_state(
                s.path, settings, generation, space, population, archive, evaluator,
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
            let direction = if over_size(a) {
                Direction::Down
            } else {
                Direction::Either
            };
            let child = guide.mutate(&child, space, direction, &mut rng);
            let child = guide.repair(child, space, &settings.constraints, &mut rng);
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
