//! Packed GEMV/GEMM throughput of qpipe-kernels against memory bandwidth.
//!
//! GEMV on 8192x8192 (weights larger than the L3) is memory-bound, so each packed format is
//! compared with a read-only parallel pass over the same number of bytes measured in the same
//! run; GEMM at batch 16 on 4096x4096 is compute-bound and reported in GFLOP/s.
//! Run with `cargo bench --bench kernels`.

mod common;

use std::time::Instant;

use common::median_secs;
use half::f16;
use qpipe::hardware::measure::read_pass;
use qpipe_kernels::{gemm_with, gemv_with, packed_len, Backend, PackedMatrix, Zeros};
use rayon::prelude::*;

/// Deterministic pseudo-random u64 stream (xorshift64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// An owned random packed matrix in one of the benchmarked formats.
struct Owned {
    name: &'static str,
    bits: u32,
    rows: usize,
    cols: usize,
    group: usize,
    packed: Vec<u8>,
    scales: Vec<u16>,
    zeros: Option<Vec<u8>>,
}

impl Owned {
    fn new(name: &'static str, bits: u32, n: usize, group: usize, per_group_zeros: bool) -> Self {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(bits));
        // Every bit pattern is a valid code stream when rows have no padding bits.
        let packed: Vec<u8> = (0..n * packed_len(n, bits) / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        let ng = n.div_ceil(group);
        let scales = (0..n * ng)
            .map(|i| f16::from_f32(0.001 + (i % 97) as f32 * 1e-4).to_bits())
            .collect();
        let zeros = per_group_zeros.then(|| {
            (0..n * ng)
                .map(|_| (rng.next() >> 40) as u8 & ((1u16 << bits) - 1) as u8)
                .collect()
        });
        Owned {
            name,
            bits,
            rows: n,
            cols: n,
            group,
            packed,
            scales,
            zeros,
        }
    }

    fn view(&self) -> PackedMatrix<'_> {
        let zeros = match &self.zeros {
            Some(z) => Zeros::PerGroup(z),
            None => Zeros::Constant(1 << (self.bits - 1)),
        };
        PackedMatrix::new(
            self.bits,
            self.rows,
            self.cols,
            self.group,
            &self.packed,
            &self.scales,
            zeros,
        )
        .expect("benchmark matrix is consistent")
    }
}

/// Timings of a kernel paired with a read-only pass over the same number of bytes.
struct Paired {
    /// Median seconds of the kernel.
    kernel: f64,
    /// Median seconds of the read pass.
    read: f64,
    /// Fastest kernel run.
    kernel_best: f64,
    /// Fastest read pass.
    read_best: f64,
}

/// Times `kernel` and a read-only pass over `bytes` bytes alternately (`runs` times each, after
/// one warm-up) so that both see the same machine conditions.
fn paired(runs: usize, bytes: usize, mut kernel: impl FnMut()) -> Paired {
    let buf: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let (mut tk, mut tr) = (Vec::new(), Vec::new());
    std::hint::black_box(read_pass(&buf));
    kernel();
    for _ in 0..runs {
        let s = Instant::now();
        std::hint::black_box(read_pass(&buf));
        tr.push(s.elapsed().as_secs_f64());
        let s = Instant::now();
        kernel();
        tk.push(s.elapsed().as_secs_f64());
    }
    tk.sort_by(f64::total_cmp);
    tr.sort_by(f64::total_cmp);
    Paired {
        kernel: tk[tk.len() / 2],
        read: tr[tr.len() / 2],
        kernel_best: tk[0],
        read_best: tr[0],
    }
}

/// Plain f32 GEMV baseline: parallel over rows, eight-lane dot per row.
fn f32_gemv(w: &[f32], x: &[f32], y: &mut [f32]) {
    let cols = x.len();
    y.par_iter_mut().enumerate().for_each(|(r, out)| {
        let row = &w[r * cols..(r + 1) * cols];
        let mut lanes = [0f32; 8];
        for (a, b) in row.chunks_exact(8).zip(x.chunks_exact(8)) {
            for l in 0..8 {
                lanes[l] += a[l] * b[l];
            }
        }
        *out = lanes.iter().sum();
    });
}

/// One table line.
struct Line {
    what: String,
    backend: &'static str,
    bytes: usize,
    t: Paired,
}

fn print_table(lines: &[Line]) {
    println!(
        "{:<32} {:>7} {:>9} {:>9} {:>8} {:>9} {:>7} {:>9}",
        "GEMV 8192x8192",
        "backend",
        "median ms",
        "MiB read",
        "GB/s",
        "read GB/s",
        "ratio",
        "best ratio"
    );
    for l in lines {
        let gbs = |t: f64| l.bytes as f64 / t / 1e9;
        println!(
            "{:<32} {:>7} {:>9.3} {:>9.1} {:>8.2} {:>9.2} {:>6.1}% {:>8.1}%",
            l.what,
            l.backend,
            l.t.kernel * 1e3,
            l.bytes as f64 / (1 << 20) as f64,
            gbs(l.t.kernel),
            gbs(l.t.read),
            100.0 * l.t.read / l.t.kernel,
            100.0 * l.t.read_best / l.t.kernel_best,
        );
    }
}

fn main() {
    let n = 8192;
    let threads = rayon::current_num_threads();
    println!(
        "qpipe-kernels bench: {threads} rayon threads, best backend {}",
        Backend::detect().name()
    );
    let backends: Vec<Backend> = [Backend::Avx512, Backend::Avx2, Backend::Scalar]
        .into_iter()
        .filter(|b| b.is_available())
        .collect();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut y = vec![0f32; n];
    let mut lines = Vec::new();

    let formats = [
        Owned::new("INT4 g32, per-group zeros", 4, n, 32, true),
        Owned::new("INT8 per-channel, constant zero", 8, n, n, false),
        Owned::new("INT2 g32, per-group zeros", 2, n, 32, true),
    ];
    for f in &formats {
        let w = f.view();
        let bytes = w.storage_bytes();
        for &be in &backends {
            let runs = if be == Backend::Scalar { 7 } else { 41 };
            let t = paired(runs, bytes, || {
                gemv_with(be, &w, &x, &mut y).expect("valid gemv");
            });
            lines.push(Line {
                what: f.name.to_string(),
                backend: be.name(),
                bytes,
                t,
            });
        }
    }

    // f32 baseline: the same shape unquantized (256 MiB).
    let wf: Vec<f32> = (0..n * n).map(|i| (i % 251) as f32 * 1e-3).collect();
    let bytes = wf.len() * 4;
    let t = paired(15, bytes, || f32_gemv(&wf, &x, &mut y));
    drop(wf);
    lines.push(Line {
        what: "f32 dense (baseline)".to_string(),
        backend: "plain",
        bytes,
        t,
    });
    print_table(&lines);
    println!(
        "(bytes = packed codes + f16 scales + u8 zeros; read = parallel XOR pass over as many \
         bytes, timed alternately with the kernel; ratio = GB/s / read GB/s of the medians, \
         best ratio = the same for the fastest runs)"
    );

    // GEMM: batch 16 on 4096x4096.
    let (m, batch) = (4096, 16);
    println!();
    println!(
        "{:<34} {:>7} {:>10} {:>10}",
        "GEMM 4096x4096, batch 16", "backend", "median ms", "GFLOP/s"
    );
    let xb: Vec<f32> = (0..batch * m)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
        .collect();
    let mut yb = vec![0f32; batch * m];
    let gemm_formats = [
        Owned::new("INT4 g32, per-group zeros", 4, m, 32, true),
        Owned::new("INT8 per-channel, constant zero", 8, m, m, false),
    ];
    for f in &gemm_formats {
        let w = f.view();
        for &be in &backends {
            let runs = if be == Backend::Scalar { 5 } else { 15 };
            let t = median_secs(runs, || {
                gemm_with(be, &w, &xb, batch, &mut yb).expect("valid gemm");
            });
            let flops = 2.0 * (batch * m * m) as f64;
            println!(
                "{:<34} {:>7} {:>10.3} {:>10.1}",
                f.name,
                be.name(),
                t * 1e3,
                flops / t / 1e9
            );
        }
    }
}
