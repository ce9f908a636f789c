//! GPTQ's cost on SmolLM2-135M: the input Hessians (one float pass over 8192 calibration
//! tokens), their factors, and GPTQ in int4-g32-sym / int4-channel-sym / int3-g32-asym on every
//! multiplied weight (the 210 matmuls and the tied LM head), against rounding to nearest with
//! the mse calibrator on the same weights in the same run. Also the layer outputs' error
//! ((W - Q) x)² summed over weights, with the Hessian, for both roundings: what GPTQ minimises.
//!
//! `scripts/fetch-models.sh && cargo bench --bench gptq` (RAYON_NUM_THREADS to change the
//! thread count).

mod common;

use common::status_kb;
use qpipe::calib::hessians;
use qpipe::checkpoint::Checkpoint;
use qpipe::data::{Builtin, Text};
use qpipe::model::Model;
use qpipe::quant::{self, Calibrator, Format, Hessian};
use std::time::Instant;

const TOKENS: usize = 8192;
const SEQ: usize = 256;

/// tr((W - Q) H (W - Q)ᵀ): the summed squared output error per token.
fn output_error(w: &[f32], q: &[f32], h: &Hessian) -> f64 {
    let n = h.dim();
    let hv = h.values();
    let mut total = 0f64;
    for (wr, qr) in w.chunks_exact(n).zip(q.chunks_exact(n)) {
        let d: Vec<f64> = wr.iter().zip(qr).map(|(a, b)| f64::from(a - b)).collect();
        for i in 0..n {
            let row = &hv[i * n..(i + 1) * n];
            let hd: f64 = row.iter().zip(&d).map(|(h, d)| f64::from(*h) * d).sum();
            total += d[i] * hd;
        }
    }
    total
}

fn main() {
    qpipe::process::configure();
    let dir = common::smollm2_dir();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let model = Model::load(&ckpt).unwrap();
    let tok = qpipe::data::tokenizer(&ckpt).unwrap();
    let ids = qpipe::data::encode(&tok, &Text::Builtin(Builtin::SotuCalibration)).unwrap();
    let seqs = qpipe::data::sequences(&ids, SEQ, TOKENS);
    println!(
        "{} rayon threads; SmolLM2-135M, Hessians over {} tokens of sotu-calibration",
        rayon::current_num_threads(),
        seqs.len() * SEQ
    );

    let t = Instant::now();
    let hs = hessians::collect(&model, &seqs).unwrap();
    let t_hessians = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let factors = hs.factors().unwrap();
    let t_factors = t.elapsed().as_secs_f64();
    println!(
        "  input Hessians: {} distinct inputs in {t_hessians:.1} s (float pass included); factors in {t_factors:.1} s; peak RSS so far {} MB",
        hs.inputs.len(),
        status_kb("VmHWM") / 1024
    );

    let linears: Vec<_> = model
        .quantizable()
        .into_iter()
        .filter(|l| l.usage().multiplies())
        .collect();
    for fmt in ["int4-g32-sym", "int4-channel-sym", "int3-g32-asym"] {
        let format: Format = fmt.parse().unwrap();
        let (mut t_rtn, mut t_gptq, mut e_rtn, mut e_gptq) = (0.0, 0.0, 0.0, 0.0);
        for l in &linears {
            let (rows, cols) = l.shape();
            let w = l.float_values(format).unwrap();
            let h = hs.get(l.name()).unwrap();
            let f = factors.get(l.name()).unwrap();
            let imp: Vec<f32> = (0..cols).map(|i| h.values()[i * cols + i]).collect();
            let s = Instant::now();
            let rtn =
                quant::quantize(&w, rows, cols, format, Calibrator::Mse, Some(&imp), None).unwrap();
            t_rtn += s.elapsed().as_secs_f64();
            let s = Instant::now();
            let gptq =
                quant::quantize(&w, rows, cols, format, Calibrator::Mse, Some(&imp), Some(f))
                    .unwrap();
            t_gptq += s.elapsed().as_secs_f64();
            e_rtn += output_error(&w, &rtn.dequantize().unwrap(), h);
            e_gptq += output_error(&w, &gptq.dequantize().unwrap(), h);
        }
        println!(
            "  {fmt:<17} {} weights: rtn-mse {t_rtn:6.1} s, gptq {t_gptq:6.1} s ({:.2}x rtn); output error gptq/rtn {:.3}",
            linears.len(),
            t_gptq / t_rtn,
            e_gptq / e_rtn
        );
    }
    println!("peak RSS {} MB", status_kb("VmHWM") / 1024);
}
