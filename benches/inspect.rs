//! `inspect` throughput on a 643 MB synthetic Llama checkpoint (warm page cache):
//! header-only open time, and `--stats` read rate against plain reads of the same bytes
//! (a buffered `read` of the file like `cat > /dev/null`, and a parallel pass over the mmap).
//!
//! `cargo bench --bench inspect`; set QPIPE_BENCH_DIR to reuse a generated checkpoint.

mod common;
#[path = "../tests/suite/common/synthetic.rs"]
mod synthetic;

use common::{median_secs, status_kb};
use qpipe::checkpoint::{stats, Checkpoint};
use rayon::prelude::*;
use std::io::Read;
use std::path::PathBuf;

fn main() {
    let dir = std::env::var_os("QPIPE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-data/synthetic-llama"));
    let file = dir.join("model.safetensors");
    if !file.is_file() {
        let spec = synthetic::LlamaSpec {
            layers: 10,
            hidden: 1024,
            intermediate: 2816,
            heads: 16,
            kv_heads: 4,
            vocab: 32000,
            tied: false,
            dtype: qpipe::checkpoint::Dtype::F32,
        };
        synthetic::write_llama(&dir, &spec, 7);
    }
    let size = std::fs::metadata(&file).expect("bench file").len();
    let gb = size as f64 / 1e9;
    let threads = rayon::current_num_threads();
    println!(
        "file {} ({:.1} MB), {threads} rayon threads",
        file.display(),
        size as f64 / 1e6
    );

    // Baseline 1: read the file through a 1 MiB buffer and drop it, as `cat FILE > /dev/null`.
    let t_cat = median_secs(5, || {
        let mut f = std::fs::File::open(&file).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf).unwrap() > 0 {}
    });
    // Baseline 2: touch every byte of the mmap in parallel (sum of u64 words), the ceiling.
    let ckpt = Checkpoint::open(&file).unwrap();
    let map_sum = || {
        ckpt.tensors()
            .collect::<Vec<_>>()
            .par_iter()
            .flat_map_iter(|t| t.bytes.chunks(1 << 20))
            .map(|c| {
                c.chunks_exact(8)
                    .fold(0u64, |a, w| a ^ u64::from_le_bytes(w.try_into().unwrap()))
            })
            .reduce(|| 0, |a, b| a ^ b)
    };
    let t_map = median_secs(5, || {
        std::hint::black_box(map_sum());
    });
    let t_open = median_secs(20, || {
        std::hint::black_box(Checkpoint::open(&file).unwrap());
    });
    let anon_before = status_kb("RssAnon");
    let t_stats = median_secs(5, || {
        std::hint::black_box(stats::compute(&ckpt).unwrap());
    });
    let anon_peak = status_kb("RssAnon").max(anon_before);

    println!("header-only open      median {:8.3} ms", t_open * 1e3);
    println!(
        "read() like cat       median {:8.3} s  {:6.2} GB/s",
        t_cat,
        gb / t_cat
    );
    println!(
        "parallel mmap pass    median {:8.3} s  {:6.2} GB/s",
        t_map,
        gb / t_map
    );
    println!(
        "stats (2 passes)      median {:8.3} s  {:6.2} GB/s  = {:.2}x cat, {:.2}x mmap pass",
        t_stats,
        gb / t_stats,
        t_cat / t_stats,
        t_map / t_stats
    );
    println!(
        "anonymous RSS {} MB (stats allocate no per-tensor f32 copies); VmHWM incl. mapped file pages {} MB",
        anon_peak / 1024,
        status_kb("VmHWM") / 1024
    );
}
