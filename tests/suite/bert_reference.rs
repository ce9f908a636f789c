//! Our BERT forward pass against candle-transformers' on the real all-MiniLM-L6-v2 and 50 real
//! sentences, plus what the `QLinear` hooks must do on that model.

use crate::common;
use candle_core::{DType, Device, Tensor, D};
use candle_transformers::models::bert::{BertModel, Config};
use qpipe::checkpoint::Checkpoint;
use qpipe::model::bert::Bert;
use qpipe::model::{Recorder, WeightSource};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokenizers::{Tokenizer, TruncationParams};

const SENTENCES: usize = 50;
const BATCH: usize = 10;
const MAX_TOKENS: usize = 128;

/// The first 50 sentences of the held-out SOTU text with 5 to 60 words.
/// Batches of `(input_ids, attention_mask)`, each `(BATCH, longest)` u32, right-padded with 0.
fn batches(tokenizer_path: &Path, sentences: &[String]) -> Vec<(Tensor, Tensor)> {
    let mut tok = Tokenizer::from_file(tokenizer_path).expect("tokenizer.json loads");
    // tokenizer.json pads to a fixed 128; pad each batch to its longest instead, as
    // sentence-transformers does, so the mask really has to do its job.
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length: MAX_TOKENS,
        ..Default::default()
    }))
    .expect("truncation params");
    sentences
        .chunks(BATCH)
        .map(|chunk| {
            let enc = tok
                .encode_batch(chunk.to_vec(), true)
                .expect("sentences tokenize");
            let t = enc.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
            let mut ids = Vec::with_capacity(chunk.len() * t);
            let mut mask = Vec::with_capacity(chunk.len() * t);
            for e in &enc {
                let n = e.get_ids().len();
                ids.extend_from_slice(e.get_ids());
                ids.extend(std::iter::repeat_n(0u32, t - n));
                mask.extend(std::iter::repeat_n(1u32, n));
                mask.extend(std::iter::repeat_n(0u32, t - n));
            }
            (
                Tensor::from_vec(ids, (chunk.len(), t), &Device::Cpu).unwrap(),
                Tensor::from_vec(mask, (chunk.len(), t), &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

/// The reference pooling: masked mean over tokens, then L2 normalisation.
fn pool(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let sum = hidden.broadcast_mul(&m).unwrap().sum(1).unwrap();
    let mean = sum.broadcast_div(&m.sum(1).unwrap()).unwrap();
    let norm = mean
        .sqr()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .sqrt()
        .unwrap();
    mean.broadcast_div(&norm).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn embed_all(bert: &Bert, batches: &[(Tensor, Tensor)]) -> Vec<Vec<f32>> {
    batches
        .iter()
        .flat_map(|(ids, mask)| bert.embed(ids, mask).unwrap().to_vec2::<f32>().unwrap())
        .collect()
}

#[test]
fn minilm_matches_candle_transformers_and_qlinear_hooks_work() {
    let _cpu = common::busy();
    let Some(dir) = common::fetched_model("all-minilm-l6-v2") else {
        return;
    };
    let start = Instant::now();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let bert = Bert::load(&checkpoint).unwrap();
    let hidden = bert.config().hidden_size;
    assert_eq!(hidden, 384);
    assert_eq!(bert.linears().len(), 6 * 6);

    let tokenizer = checkpoint
        .tokenizer_path()
        .expect("tokenizer.json beside the model");
    let batches = batches(tokenizer, &common::sotu_sentences(SENTENCES));
    assert!(
        batches
            .iter()
            .any(|(_, m)| m.min_all().unwrap().to_scalar::<u32>().unwrap() == 0),
        "no batch has padding: the mask would go untested"
    );

    // The reference: candle-transformers' BertModel on the same file.
    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let reference = BertModel::load(common::reference_weights(&dir), &config).unwrap();

    let ours = embed_all(&bert, &batches);
    let theirs: Vec<Vec<f32>> = batches
        .iter()
        .flat_map(|(ids, mask)| {
            let types = ids.zeros_like().unwrap();
            let h = reference.forward(ids, &types, Some(mask)).unwrap();
            pool(&h, mask).to_vec2::<f32>().unwrap()
        })
        .collect();
    assert_eq!((ours.len(), theirs.len()), (SENTENCES, SENTENCES));
    let cosines: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| cosine(a, b))
        .collect();
    let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
    let worst = cosines.iter().position(|c| *c == min).unwrap_or(0);
    let max_abs = ours
        .iter()
        .flatten()
        .zip(theirs.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "min cosine vs candle-transformers over {SENTENCES} sentences: {min:.12} \
         (1 - min = {:.3e}, sentence #{worst}), max |delta| {max_abs:.3e}",
        1.0 - min
    );
    for (i, c) in cosines.iter().enumerate() {
        assert!(*c >= 0.99999, "sentence {i}: cosine {c}");
    }

    // The observer sees the first query layer's input flattened to [b*t, hidden], once.
    let (ids, mask) = &batches[0];
    let (b, t) = ids.dims2().unwrap();
    let first = bert.linears()[0];
    assert_eq!(first.name(), "encoder.layer.0.attention.self.query.weight");
    let recorder = Arc::new(Recorder::default());
    first.set_observer(Some(recorder.clone()));
    bert.embed(ids, mask).unwrap();
    first.set_observer(None);
    let seen = recorder.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, first.name());
    assert_eq!(seen[0].1.dims(), &[b * t, hidden]);

    // Zeroing one weight changes the embeddings; reset restores them bit for bit.
    let target = bert.linears()[2 * 6 + 4]; // layer 2 intermediate.dense
    assert_eq!(target.name(), "encoder.layer.2.intermediate.dense.weight");
    let zeros = target.float_weight().unwrap().zeros_like().unwrap();
    let format = "int8-channel-sym".parse().unwrap();
    target
        .set_weight(WeightSource::Fake(format), zeros)
        .unwrap();
    let zeroed = embed_all(&bert, &batches);
    let changed_min = ours
        .iter()
        .zip(&zeroed)
        .map(|(a, b)| cosine(a, b))
        .fold(f64::INFINITY, f64::min);
    assert!(
        changed_min < 0.999,
        "zeroing a weight barely mattered: {changed_min}"
    );
    target.reset();
    assert_eq!(target.source(), WeightSource::Float);
    assert_eq!(embed_all(&bert, &batches), ours);

    println!(
        "bert_reference: {SENTENCES} sentences, min cosine with a zeroed intermediate.dense \
         {changed_min:.4}, {:.2?}",
        start.elapsed()
    );
}
