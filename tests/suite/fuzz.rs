//! The readers under fuzzing (issue 23): every input that ever made one panic, kept in
//! `tests/fixtures/fuzz/<target>/`, runs without panicking, and a short seeded run of the
//! mutation loop (`common::fuzz`) finds no panic. Long runs: `examples/fuzz.rs` (README).

use crate::common::fuzz::{self, Scratch, Target};
use crate::common::root;

/// Executions per target in the default suite: about 20 s in all on one core of this machine
/// (the readers run at 20-150 thousand inputs/s); `examples/fuzz.rs` runs millions.
fn execs(target: Target) -> u64 {
    match target {
        Target::Gguf => 600_000,
        Target::Safetensors | Target::Packed => 150_000,
    }
}

#[test]
fn saved_inputs_that_once_panicked_run_without_panicking() {
    let scratch = Scratch::new();
    let mut replayed = 0;
    for target in Target::ALL {
        let dir = root().join("tests/fixtures/fuzz").join(target.name());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if let Err(m) = fuzz::exec(target, &data, &scratch) {
                panic!("{} still panics: {m}", path.display());
            }
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} saved inputs");
}

fn seeded_run(target: Target) {
    let _cpu = crate::common::busy();
    let s = fuzz::run(target, 0x5eed, execs(target), None);
    eprintln!(
        "{}: {} executions ({} accepted) in {:.1} s, slowest {:.1} ms, {} panics",
        target.name(),
        s.execs,
        s.accepted,
        s.elapsed.as_secs_f64(),
        s.slowest.as_secs_f64() * 1e3,
        s.panics.len()
    );
    if let Some((data, message)) = s.panics.first() {
        panic!(
            "{} panicked on {} of {} inputs; the first ({} bytes, save it with examples/fuzz.rs): {message}",
            target.name(),
            s.panics.len(),
            s.execs,
            data.len()
        );
    }
}

#[test]
fn the_safetensors_reader_survives_a_seeded_run() {
    seeded_run(Target::Safetensors);
}

#[test]
fn the_packed_manifest_reader_survives_a_seeded_run() {
    seeded_run(Target::Packed);
}

#[test]
fn the_gguf_reader_survives_a_seeded_run() {
    seeded_run(Target::Gguf);
}
