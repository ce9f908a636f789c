//! Our Llama forward pass against candle-transformers' llama on the real SmolLM2-135M (imported
//! from its GGUF by `qpipe import`), plus its perplexity on real text.

use crate::common;
use qpipe::checkpoint::Checkpoint;
use qpipe::model::llama::{sequence_logits, Llama};
use qpipe::reference::metrics::perplexity;

#[test]
fn smollm2_logits_equal_candle_transformers() {
    let _cpu = common::busy();
    let Some(dir) = common::fetched_model("smollm2-135m") else {
        return;
    };
    let ours = Llama::load(&Checkpoint::open(&dir).unwrap()).unwrap();
    let vocab = ours.config().vocab_size;
    let tokens = common::held_out_tokens(&dir, 96);
    // Several lengths: every position of the longest is checked through its own prefix.
    for len in [1, 17, 96] {
        let ids = &tokens[..len];
        let logits = sequence_logits(&ours, ids).unwrap();
        let last = &logits[(len - 1) * vocab..];
        let reference = common::reference_llama_last_logits(&dir, ids);
        assert_eq!(reference.len(), vocab);
        let rel = common::relative_max_diff(last, &reference);
        eprintln!("len {len}: max |diff| / max |logit| = {rel:.2e}");
        assert!(rel <= 1e-4, "len {len}: relative max diff {rel}");
    }
}

#[test]
fn smollm2_perplexity_on_moby_dick_chapter_1_is_about_78() {
    let _cpu = common::busy();
    let Some(dir) = common::fetched_model("smollm2-135m") else {
        return;
    };
    let model = Llama::load(&Checkpoint::open(&dir).unwrap()).unwrap();
    let vocab = model.config().vocab_size;
    let tokens = common::held_out_tokens(&dir, 512);
    let logits = sequence_logits(&model, &tokens).unwrap();
    let ppl = perplexity(&logits[..511 * vocab], vocab, &tokens[1..]).unwrap();
    eprintln!("SmolLM2-135M perplexity, first 512 tokens of Moby Dick chapter 1: {ppl:.2}");
    assert!((ppl / 78.0 - 1.0).abs() <= 0.03, "perplexity {ppl}");
}

#[test]
fn swapping_a_weight_changes_logits_and_reset_restores_them_exactly() {
    let _cpu = common::busy();
    let Some(dir) = common::fetched_model("smollm2-135m") else {
        return;
    };
    let model = Llama::load(&Checkpoint::open(&dir).unwrap()).unwrap();
    let tokens = common::held_out_tokens(&dir, 32);
    let before = sequence_logits(&model, &tokens).unwrap();
    let layer = model.linears()[6 * 7 + 6]; // layer 6 down_proj
    layer
        .fake_quantize(
            "int2-tensor-sym".parse().unwrap(),
            qpipe::quant::Calibrator::MinMax,
            None,
        )
        .unwrap();
    let swapped = sequence_logits(&model, &tokens).unwrap();
    let moved = before
        .iter()
        .zip(&swapped)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-2, "INT2 down_proj moved logits by only {moved}");
    layer.reset();
    assert_eq!(sequence_logits(&model, &tokens).unwrap(), before);
}
