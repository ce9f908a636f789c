//! Process-wide settings qpipe runs with. The binary and the benchmarks apply them once at
//! start-up, before any thread exists.

/// Applies the settings below; call first thing in `main`.
///
/// - candle's element-wise ops run on the calling thread. Sensitivity and search evaluate
///   forward passes in parallel on rayon's threads, and candle 0.11 hands big element-wise ops
///   to its own pool, which serialises concurrent callers on a lock while its worker spins: a
///   28-candidate sensitivity run took 24.0 s with it and 21.8 s without, and one forward pass
///   alone is no slower. Matmuls still use every rayon thread. A `CANDLE_NUM_THREADS` the user
///   set is kept.
/// - glibc keeps freed memory for reuse. A forward pass allocates a fresh tensor per op (about
///   2 GB in all for SmolLM2 on 1024 tokens); by default glibc maps the large ones and gives
///   memory back, so the kernel zeroes new pages on every pass: 20% of a forward pass in perf.
///   Serving blocks up to 32 MB (glibc's limit) from the heap and never trimming it takes one
///   SmolLM2 pass from 1.47 s to 1.19 s (`cargo bench --bench forward`). Whole commands gain
///   less or nothing, their passes being chunked and parallel: `eval` on 4096 tokens
///   17.5 -> 16.7 s; the layer-15 sensitivity 21.5-22.3 s either way; a short `compress`
///   164.6 -> 163.0 s with 1.6% more peak RSS. Outputs are identical.
pub fn configure() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; both values are in range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
