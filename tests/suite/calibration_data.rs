//! The committed calibration and evaluation text: present, real, and disjoint.

use crate::common;
use std::collections::HashSet;

/// Sentences long enough (>= 100 bytes) that a repeat means shared text, not a stock phrase.
/// (The State of the Union files hold one address per line, so lines are not paragraphs.)
fn sentences(text: &str) -> HashSet<&str> {
    text.split_inclusive(['.', '!', '?'])
        .map(str::trim)
        .filter(|s| s.len() >= 100)
        .collect()
}

#[test]
fn calibration_and_evaluation_text_are_disjoint() {
    for source in ["moby-dick", "sotu"] {
        let calib = common::read_text(&format!("calibration-data/{source}-calibration.txt"));
        let eval = common::read_text(&format!("calibration-data/{source}-eval.txt"));
        let (c, e) = (sentences(&calib), sentences(&eval));
        assert!(
            c.len() > 500 && e.len() > 500,
            "{source}: {} / {} sentences",
            c.len(),
            e.len()
        );
        let shared: Vec<&&str> = c.intersection(&e).take(3).collect();
        assert!(
            shared.is_empty(),
            "{source}: sentences in both files: {shared:?}"
        );
    }
    // The perplexity reference reads the start of chapter 1 from the evaluation file.
    assert!(common::read_text("calibration-data/moby-dick-eval.txt")
        .starts_with("CHAPTER 1. Loomings.\n\nCall me Ishmael."));
}
