//! Forward-pass throughput of our Llama on SmolLM2-135M (batch 4 x 256 tokens of real text),
//! in tokens/s and achieved GFLOP/s, against candle's f32 matmul on the model's own linear
//! shapes measured in the same run (the ceiling a forward built on candle can reach).
//!
//! `scripts/fetch-models.sh && cargo bench --bench forward` (RAYON_NUM_THREADS to change the
//! thread count; candle's matmul follows it too).

mod common;

use candle_core::{Device, Tensor};
use common::{median_secs, status_kb};
use qpipe::checkpoint::Checkpoint;
use qpipe::model::llama::Llama;
use std::path::Path;

const BATCH: usize = 4;
const SEQ: usize = 256;

fn main() {
    // The allocator and thread settings the qpipe binary runs with.
    qpipe::process::configure();
    let dir = common::smollm2_dir();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let model = Llama::load(&ckpt).unwrap();
    let c = model.config().clone();
    let tok = qpipe::data::tokenizer(&ckpt).unwrap();
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("calibration-data/moby-dick-eval.txt");
    let ids = qpipe::data::encode(&tok, &text.into()).unwrap();
    let ids = Tensor::from_slice(&ids[..BATCH * SEQ], (BATCH, SEQ), &Device::Cpu).unwrap();
    let tokens = (BATCH * SEQ) as f64;

    // FLOPs as executed: linears (2 per weight per token), the tied LM head, and attention's
    // two matmuls over the full (masked) seq x seq score matrix.
    let linear_shapes: Vec<(usize, usize)> = model.linears().iter().map(|l| l.shape()).collect();
    let linear_flops: f64 = linear_shapes
        .iter()
        .map(|(o, i)| 2.0 * (*o * *i) as f64 * tokens)
        .sum();
    let head_flops = 2.0 * (c.vocab_size * c.hidden_size) as f64 * tokens;
    let attn_flops = (c.num_hidden_layers * c.num_attention_heads) as f64
        * 2.0
        * 2.0
        * (SEQ * SEQ * c.head_dim()) as f64
        * BATCH as f64;
    let flops = linear_flops + head_flops + attn_flops;

    println!(
        "{} rayon threads; SmolLM2-135M, batch {BATCH} x {SEQ} tokens; medians of 5 runs",
        rayon::current_num_threads()
    );
    let rss_before = status_kb("VmRSS");
    let t_fwd = median_secs(5, || {
        std::hint::black_box(model.forward(&ids).unwrap());
    });
    let peak = status_kb("VmHWM");

    // The same matmuls alone, on candle, with the same operand layouts (x [tokens, in] times
    // the transposed [out, in] weight).
    let mut t_mm = 0.0;
    let mut seen = std::collections::BTreeMap::new();
    for &(o, i) in linear_shapes
        .iter()
        .chain(std::iter::once(&(c.vocab_size, c.hidden_size)))
    {
        *seen.entry((o, i)).or_insert(0usize) += 1;
    }
    for (&(o, i), &count) in &seen {
        let x = Tensor::randn(0f32, 1., (BATCH * SEQ, i), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 0.02, (o, i), &Device::Cpu).unwrap();
        let t = median_secs(5, || {
            std::hint::black_box(x.matmul(&w.t().unwrap()).unwrap());
        });
        t_mm += t * count as f64;
    }
    let mm_gflops = (linear_flops + head_flops) / t_mm / 1e9;
    let fwd_gflops = flops / t_fwd / 1e9;
    println!(
        "  candle f32 matmul, the model's linear shapes: {:.1} GFLOP/s ({:.3} s for all of them)  (baseline)",
        mm_gflops, t_mm
    );
    println!(
        "  our forward: {:.3} s = {:.0} tokens/s, {:.1} GFLOP/s ({:.1} GFLOP, {:.0}% of it attention) = {:.0}% of the matmul baseline",
        t_fwd,
        tokens / t_fwd,
        fwd_gflops,
        flops / 1e9,
        100.0 * attn_flops / flops,
        100.0 * fwd_gflops / mm_gflops
    );
    println!(
        "  peak RSS {:.0} MB (model + mapped checkpoint {:.0} MB before the runs)",
        peak as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
}
