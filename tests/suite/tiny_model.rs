//! The committed demo model `models/tiny` (trained by examples/train-tiny.rs): it loads through
//! the Hugging Face path, matches candle-transformers, and quantization damage on it is
//! measurable with real forward passes on held-out text.

use crate::common;
use qpipe::checkpoint::Checkpoint;
use qpipe::model::llama::{sequence_logits, Llama};
use qpipe::quant::Calibrator;

#[test]
fn tiny_logits_equal_candle_transformers() {
    let _cpu = common::busy();
    let tiny = common::tiny();
    let model = Llama::load(&Checkpoint::open(&tiny).unwrap()).unwrap();
    let vocab = model.config().vocab_size;
    let tokens = common::held_out_tokens(&tiny, 200);
    for len in [1, 64, 200] {
        let ours = sequence_logits(&model, &tokens[..len]).unwrap();
        let reference = common::reference_llama_last_logits(&tiny, &tokens[..len]);
        let rel = common::relative_max_diff(&ours[(len - 1) * vocab..], &reference);
        eprintln!("len {len}: max |diff| / max |logit| = {rel:.2e}");
        assert!(rel <= 1e-4, "len {len}: relative max diff {rel}");
    }
}

/// Mean KLD vs the float model over 4 held-out windows of 128 tokens with every linear in
/// `format`, then the float weights restored.
fn mean_kld(model: &Llama, format: &str, tokens: &[u32]) -> f64 {
    let windows: Vec<&[u32]> = tokens.chunks_exact(128).collect();
    let reference: Vec<Vec<f32>> = windows
        .iter()
        .map(|w| sequence_logits(model, w).unwrap())
        .collect();
    for l in model.linears() {
        l.fake_quantize(format.parse().unwrap(), Calibrator::MinMax, None)
            .unwrap();
    }
    let kld = common::mean_kld(model, &windows, &reference);
    model.linears().iter().for_each(|l| l.reset());
    kld
}

#[test]
fn int8_channel_is_nearly_free_and_int2_tensor_is_not() {
    let _cpu = common::busy();
    let tiny = common::tiny();
    let model = Llama::load(&Checkpoint::open(&tiny).unwrap()).unwrap();
    let tokens = common::held_out_tokens(&tiny, 512);
    let int8 = mean_kld(&model, "int8-channel-sym", &tokens);
    let int2 = mean_kld(&model, "int2-tensor-asym", &tokens);
    eprintln!(
        "models/tiny held-out mean KLD: int8-channel-sym {int8:.3e}, int2-tensor-asym {int2:.3}"
    );
    assert!(int8 < 1e-3, "INT8 per-channel mean KLD {int8}");
    assert!(int2 > 0.1, "INT2 per-tensor mean KLD {int2}");
}
