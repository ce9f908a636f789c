//! The search state file: saved after every generation, read back to resume.

use super::fitness::Evaluator;
use super::genome::{NamedGenome, Space};
use super::{Origin, Point, Settings};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a search saves its state, and whether it continues from it.
#[derive(Debug, Clone, Copy)]
pub struct StateFile<'a> {
    /// The file (in an output directory: [`state_path`]).
    pub path: &'a Path,
    /// Continue the search saved there, if the file exists, instead of starting over.
    pub resume: bool,
}

/// Saved after every generation, so an interrupted search resumes where it stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    /// The settings it ran with.
    pub(super) settings: Settings,
    /// Generations done.
    pub(super) generation: usize,
    /// The current population.
    pub(super) population: Vec<NamedGenome>,
    /// Everything evaluated, with its origin.
    pub(super) archive: Vec<(Origin, NamedGenome)>,
    /// Known losses by genome key.
    pub(super) losses: Vec<(u64, f64)>,
}

/// The state saved at `path`, checked to come from a search with `settings` (more generations
/// allowed).
pub(super) fn load_state(path: &Path, settings: &Settings) -> Result<State> {
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

/// Writes the state after `generation` to `path`, atomically.
pub(super) fn save_state(
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
