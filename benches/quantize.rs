//! Quantize throughput (MB/s of f32 input) per format and calibrator, on 4096x4096 and
//! 11008x4096 N(0, 0.02) matrices, against baselines measured in the same run: a memcpy of the
//! same bytes, and candle's own Q4_0 / Q4_K quantizers (llama.cpp's reference algorithms).
//!
//! `cargo bench --bench quantize` (RAYON_NUM_THREADS to change the thread count).

mod common;
#[path = "../tests/suite/common/synthetic.rs"]
mod synthetic;

use common::{median_secs, status_kb};
use qpipe::quant::{self, Calibrator, Format};

fn main() {
    let threads = rayon::current_num_threads();
    println!("{threads} rayon threads; medians of 5 runs; MB = 1e6 bytes of f32 input\n");
    let cases: [(&str, Calibrator); 8] = [
        ("int4-g32-asym", Calibrator::MinMax),
        ("int4-g32-asym", Calibrator::Mse),
        ("int4-g32-asym", Calibrator::Entropy),
        ("int4-g32-asym", Calibrator::Percentile(9990)),
        ("int8-channel-sym", Calibrator::MinMax),
        ("int8-channel-sym", Calibrator::Mse),
        ("int8-channel-sym", Calibrator::Entropy),
        ("int2-g32-asym", Calibrator::MinMax),
    ];
    for (rows, cols) in [(4096usize, 4096usize), (11008, 4096)] {
        let w = synthetic::normal_values(rows * cols, 0.02, 1);
        let mb = (rows * cols * 4) as f64 / 1e6;
        println!("{rows}x{cols} ({mb:.0} MB f32)");
        let mut dst = vec![0f32; w.len()];
        let t_copy = median_secs(5, || dst.copy_from_slice(std::hint::black_box(&w)));
        println!(
            "  {:<34} {:>9.1} MB/s  (baseline)",
            "memcpy of the same bytes",
            mb / t_copy
        );
        let mut minmax_t = 0.0;
        for (fmt, cal) in cases {
            let f: Format = fmt.parse().unwrap();
            let t = median_secs(5, || {
                std::hint::black_box(quant::quantize(&w, rows, cols, f, cal, None, None).unwrap());
            });
            if fmt == "int4-g32-asym" && cal == Calibrator::MinMax {
                minmax_t = t;
            }
            let ratio = if fmt == "int4-g32-asym" {
                format!("{:.2}x int4 minmax time", t / minmax_t)
            } else {
                String::new()
            };
            println!(
                "  {:<34} {:>9.1} MB/s  {:>7.1} ms  {ratio}",
                format!("{fmt} {cal}"),
                mb / t,
                t * 1e3
            );
        }
        let t_fake = median_secs(5, || {
            let f: Format = "int4-g32-asym".parse().unwrap();
            std::hint::black_box(
                quant::fake_quantize(&w, rows, cols, f, Calibrator::MinMax, None, None).unwrap(),
            );
        });
        println!(
            "  {:<34} {:>9.1} MB/s  {:>7.1} ms",
            "int4-g32-asym minmax (fake, no pack)",
            mb / t_fake,
            t_fake * 1e3
        );
        let src =
            candle_core::Tensor::from_slice(&w, (rows, cols), &candle_core::Device::Cpu).unwrap();
        for (name, t) in [
            ("candle q4_0", candle_core::quantized::GgmlDType::Q4_0),
            ("candle q4_k", candle_core::quantized::GgmlDType::Q4K),
        ] {
            let secs = median_secs(3, || {
                std::hint::black_box(candle_core::quantized::QTensor::quantize(&src, t).unwrap());
            });
            println!(
                "  {:<34} {:>9.1} MB/s  {:>7.1} ms  (llama.cpp reference algorithm via candle)",
                name,
                mb / secs,
                secs * 1e3
            );
        }
        println!();
    }
    println!(
        "peak RSS {} MB (inputs, outputs and one copy of the largest matrix)",
        status_kb("VmHWM") / 1024
    );
}
