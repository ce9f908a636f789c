//! Long fuzz runs of qpipe's readers (the safetensors header, the packed manifest, GGUF): the
//! seeded mutation loop of `tests/suite/common/fuzz.rs`, for as many executions or minutes as
//! asked. Every input that panics is saved to `tests/fixtures/fuzz/<target>/<sha256>.bin`, where
//! the suite replays it (commit it with the fix).
//!
//! cargo run --release --example fuzz -- [--target safetensors|packed|gguf|all] [--execs N]
//!     [--minutes M] [--seed S]

#[path = "../tests/suite/common/fuzz.rs"]
mod fuzz;

use fuzz::Target;
use sha2::Digest;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let targets: Vec<Target> = match value("--target").as_deref() {
        None | Some("all") => Target::ALL.to_vec(),
        Some(name) => match Target::ALL.into_iter().find(|t| t.name() == name) {
            Some(t) => vec![t],
            None => {
                eprintln!("error: --target {name}: not safetensors, packed, gguf or all");
                std::process::exit(2);
            }
        },
    };
    let number = |flag: &str, default: u64| match value(flag) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("error: {flag} {v}: not a whole number");
            std::process::exit(2);
        }),
    };
    let execs = number("--execs", 1_000_000);
    let seed = number("--seed", 1);
    let budget = value("--minutes").map(|_| Duration::from_secs(60 * number("--minutes", 0)));
    // Panics are caught and reported per input; the hook's message for each would drown them.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for target in targets {
        let s = fuzz::run(target, seed, execs, budget);
        println!(
            "{}: {} executions ({} accepted by the reader) in {:.1} s ({:.0}/s), slowest {:.1} ms, \
             {} over 5 s, {} panics",
            target.name(),
            s.execs,
            s.accepted,
            s.elapsed.as_secs_f64(),
            s.execs as f64 / s.elapsed.as_secs_f64().max(1e-9),
            s.slowest.as_secs_f64() * 1e3,
            s.hangs,
            s.panics.len()
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz")
            .join(target.name());
        for (data, message) in &s.panics {
            let hash = format!("{:x}", sha2::Sha256::digest(data));
            let path = dir.join(format!("{}.bin", &hash[..16]));
            std::fs::create_dir_all(&dir).expect("the fixtures folder");
            std::fs::write(&path, data).expect("the saved input");
            println!("  panic saved as {}: {message}", path.display());
        }
        failed |= !s.panics.is_empty() || s.hangs > 0;
    }
    std::process::exit(i32::from(failed));
}
