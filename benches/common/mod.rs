//! Helpers for the `--bench` binaries: medians of repeated timings and memory readings.
#![allow(dead_code)]

use std::time::Instant;

/// Runs `f` `runs` times (after one warm-up) and returns the median wall time in seconds.
pub fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// A field of /proc/self/status in kB (e.g. "VmHWM", "RssAnon"), 0 where unavailable.
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// models/smollm2-135m, or exit 2 saying how to fetch it.
pub fn smollm2_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/smollm2-135m");
    if !dir.is_dir() {
        eprintln!(
            "{} missing: run scripts/fetch-models.sh first",
            dir.display()
        );
        std::process::exit(2);
    }
    dir
}
