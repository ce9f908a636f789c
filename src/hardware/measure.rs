//! Measured targets: `host` times qpipe-kernels' packed GEMV (decode) and GEMM (prefill), and
//! `llama-cpp` times candle's quantized matmul (llama.cpp's block formats), on this machine.
//!
//! A [`Calibration`] fits, per format, `t = overhead + rows * per_row + w * unpack + T * w /
//! rate + T * (rows * per_output + cols * per_input)` (w weights, T tokens; the unpack and
//! per-value terms for prefill only, unpack only for emulated formats) by least relative
//! squares to medians over calibration shapes distinct from any model's, separately for decode
//! (T = 1, the GEMV path) and prefill (T > 1, the GEMM path), and within each for the matmuls
//! qpipe-kernels runs on the calling thread and those it splits over threads (whose wake-up
//! is in the overhead). It also measures the read bandwidth of a buffer larger than the
//! last-level cache, used only for weights that do not fit in that cache. The cost model then
//! predicts a model's own shapes from those fits, and [`validate`] measures the same shapes to
//! report the error.
//!
//! Timings are medians of interleaved rounds (every probe once per round, each timed call
//! preceded by an untimed one), so that probes measured together see the same machine load.
//! They are taken on a thread of rayon's pool, which does its share of each matmul as an
//! inference loop's thread would; see [`Timer::medians`].
//! Medians are cached in a JSON file keyed by CPU model, thread count, backend, format, shape
//! and token count, written atomically.

use super::cost::{Assignment, CostModel, Execution, MatmulShape, Rates};
use super::profile::{Backend, Sourced, Support, Target};
use crate::checkpoint::write::write_atomic;
use crate::error::{candle_message, Error, Result, Subject};
use crate::quant::{self, Activation, Calibrator, FloatType, Format, QuantizedTensor};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Calibration shapes (rows, cols): columns are multiples of 256, so every format can store
/// them and no row ends in a padded block; every int format has at least three on each side of
/// `qpipe_kernels::gemv::SERIAL_GEMV_BYTES` (the decode fits have three terms), with several
/// rows-to-columns ratios (for the per-row term).
pub const CALIBRATION_SHAPES: [(usize, usize); 8] = [
    (64, 256),
    (128, 512),
    (512, 256),
    (256, 1024),
    (1024, 512),
    (1024, 1024),
    (2048, 1024),
    (4096, 512),
];

/// Token counts the prefill (GEMM) fit is measured at: three, from a few tokens to many, so
/// that the per-output and per-input terms separate from the per-weight ones. Fitted offline
/// to 363 (shape, tokens) timings of this machine, 8 and 64 tokens without those terms
/// predicted the model shapes at 32 tokens up to 29% high (int4); these with them, 15%.
pub const CALIBRATION_TOKENS: [usize; 3] = [4, 16, 64];

/// Interleaved rounds per timing session; the median is reported.
const ROUNDS: usize = 15;

/// Medians of timings on this machine, persisted as JSON.
#[derive(Debug)]
pub struct Cache {
    path: PathBuf,
    medians_s: BTreeMap<String, f64>,
}

/// The cache file's layout.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    version: u32,
    medians_s: BTreeMap<String, f64>,
}

impl Cache {
    /// `$QPIPE_CACHE`, else `$XDG_CACHE_HOME/qpipe/measurements.json`, else
    /// `~/.cache/qpipe/measurements.json`, else `.qpipe-cache/measurements.json`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("QPIPE_CACHE") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        match base {
            Some(b) => b.join("qpipe").join("measurements.json"),
            None => PathBuf::from(".qpipe-cache").join("measurements.json"),
        }
    }

    /// Opens the cache at `path` (empty if the file does not exist yet).
    pub fn open(path: &Path) -> Result<Self> {
        let medians_s = match std::fs::read_to_string(path) {
            Ok(text) => {
                let file: CacheFile = serde_json::from_str(&text)
                    .map_err(|e| Error::invalid(path, format!("invalid measurement cache: {e}")))?;
                if file.version != 1 {
                    return Err(Error::invalid(
                        path,
                        format!("measurement cache version {} (expected 1)", file.version),
                    ));
                }
                file.medians_s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io(path)(e)),
        };
        Ok(Cache {
            path: path.to_path_buf(),
            medians_s,
        })
    }

    /// The file this cache lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let file = CacheFile {
            version: 1,
            medians_s: self.medians_s.clone(),
        };
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        write_atomic(&self.path, text.as_bytes())
    }
}

/// What this machine is, for cache keys: CPU model and rayon thread count.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}, {} threads", rayon::current_num_threads())
}

/// The largest CPU cache (bytes) listed in sysfs, if any.
fn last_level_cache() -> Option<u64> {
    let dir = Path::new("/sys/devices/system/cpu/cpu0/cache");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("size")).ok())
        .filter_map(|s| {
            let s = s.trim();
            let (num, mult) = match s.chars().last()? {
                'K' => (&s[..s.len() - 1], 1 << 10),
                'M' => (&s[..s.len() - 1], 1 << 20),
                _ => (s, 1),
            };
            num.parse::<u64>().ok().map(|n| n * mult)
        })
        .max()
}

/// A parallel read-only pass over `buf` (XOR of all words): what streaming weights costs.
pub fn read_pass(buf: &[u64]) -> u64 {
    buf.par_chunks(1 << 16)
        .map(|c| {
            let mut a = [0u64; 8];
            for w in c.chunks_exact(8) {
                for (l, v) in a.iter_mut().zip(w) {
                    *l ^= v;
                }
            }
            a.iter().fold(0, |p, q| p ^ q)
        })
        .reduce(|| 0, |p, q| p ^ q)
}

/// How `target` runs a matmul on this machine; an error for a target described by published
/// figures.
fn backend(target: &Target) -> Result<Backend> {
    target.measured.ok_or_else(|| {
        Error::unsupported(
            Subject::other(&target.name),
            "not a measured target (measured = None; measured targets run qpipe-kernels or \
             candle-qmatmul)",
        )
    })
}

/// One timing: `format` on a [rows x cols] matrix over `tokens` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Probe {
    format: Format,
    rows: usize,
    cols: usize,
    tokens: usize,
}

/// A prepared matmul ready to be timed.
enum Job {
    Kernels {
        q: quant::IntQuantized,
        x: Vec<f32>,
        y: Vec<f32>,
        tokens: usize,
    },
    Candle {
        mm: QMatMul,
        x: Tensor,
    },
}

/// Deterministic weights in [-1, 1) (xorshift64).
fn weights(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

impl Job {
    fn new(backend: Backend, p: &Probe, name: &str) -> Result<Self> {
        let err = |m: String| Error::unsupported(Subject::other(name), m);
        let w = weights(p.rows * p.cols);
        let x = weights(p.tokens * p.cols);
        match (backend, p.format) {
            (Backend::Kernels, Format::Int(_)) => {
                let q = quant::quantize(&w, p.rows, p.cols, p.format, Calibrator::MinMax, None)
                    .map_err(err)?;
                let QuantizedTensor::Int(q) = q else {
                    return Err(err(format!("{} did not quantize to integers", p.format)));
                };
                Ok(Job::Kernels {
                    q,
                    x,
                    y: vec![0.0; p.tokens * p.rows],
                    tokens: p.tokens,
                })
            }
            (Backend::Candle, f @ (Format::Gguf(_) | Format::Float(_))) => {
                let cpu = &Device::Cpu;
                let candle = |e: candle_core::Error| err(candle_message(&e));
                let qt = match f {
                    Format::Gguf(t) => {
                        quant::gguf::quantize(&w, p.rows, p.cols, t, None).map_err(err)?
                    }
                    _ => {
                        let dtype = if f == Format::Float(FloatType::F16) {
                            GgmlDType::F16
                        } else {
                            GgmlDType::F32
                        };
                        let t = Tensor::from_vec(w, (p.rows, p.cols), cpu).map_err(candle)?;
                        QTensor::quantize(&t, dtype).map_err(candle)?
                    }
                };
                Ok(Job::Candle {
                    mm: QMatMul::from_qtensor(qt).map_err(candle)?,
                    x: Tensor::from_vec(x, (p.tokens, p.cols), cpu).map_err(candle)?,
                })
            }
            (b, f) => Err(err(format!("{} cannot run {f}", b.name()))),
        }
    }

    /// Seconds per call of the matmul (see [`per_call`]).
    fn time_once(&mut self, name: &str) -> Result<f64> {
        let err = |m: String| Error::unsupported(Subject::other(name), m);
        match self {
            Job::Kernels { q, x, y, tokens } => q
                .with_kernel_view(|m| {
                    let mut run = || {
                        if *tokens == 1 {
                            qpipe_kernels::gemv(m, x, y)
                        } else {
                            qpipe_kernels::gemm(m, x, *tokens, y)
                        }
                    };
                    per_call(&mut run)
                })
                .map_err(err)?
                .map_err(|e: qpipe_kernels::KernelError| err(e.to_string())),
            Job::Candle { mm, x } => {
                let candle = |e: candle_core::Error| err(candle_message(&e));
                per_call(&mut || mm.forward(x).map(drop)).map_err(candle)
            }
        }
    }
}

/// Seconds per call of `run`, warmed up, averaged over at least 8 back-to-back calls lasting at
/// least 2 ms: single calls of the small shapes take tens of microseconds, where timer and
/// scheduler jitter on a shared machine would swamp them, and every probe (calibration or
/// validation, small or large) is timed in the same regime, with the worker threads awake, as
/// the matmuls of a forward pass run.
fn per_call<E>(
    run: &mut impl FnMut() -> std::result::Result<(), E>,
) -> std::result::Result<f64, E> {
    let start = Instant::now();
    run()?;
    let once = start.elapsed().as_secs_f64().max(1e-7);
    let reps = ((2e-3 / once).ceil() as usize).clamp(8, 400);
    let start = Instant::now();
    for _ in 0..reps {
        run()?;
    }
    Ok(start.elapsed().as_secs_f64() / reps as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times probes on one measured target, through the cache.
struct Timer<'a> {
    target: &'a Target,
    backend: Backend,
    machine: String,
}

impl<'a> Timer<'a> {
    fn new(target: &'a Target) -> Result<Self> {
        Ok(Timer {
            target,
            backend: backend(target)?,
            machine: machine(),
        })
    }

    fn key(&self, p: &Probe) -> String {
        format!(
            "{} | {} | {} | {}x{} | tokens {}",
            self.machine,
            self.backend.name(),
            p.format,
            p.rows,
            p.cols,
            p.tokens
        )
    }

    /// Median seconds per probe: cached ones are reused, the others are measured together in
    /// interleaved rounds and added to the cache.
    ///
    /// The rounds run on a thread of rayon's pool, as a matmul in an inference loop would: a
    /// caller outside the pool sleeps through every call and is woken after it, a third thread
    /// on a 2-core machine, and its wake-up made a 1536x576 GEMV take 55 us instead of 21 us in
    /// some orders of the probes and not in others.
    fn medians(&self, cache: &mut Cache, probes: &[Probe]) -> Result<Vec<f64>> {
        let name = &self.target.name;
        let mut missing: Vec<(String, Job, Vec<f64>)> = Vec::new();
        for p in probes {
            let key = self.key(p);
            if !cache.medians_s.contains_key(&key) && !missing.iter().any(|(k, ..)| *k == key) {
                missing.push((key, Job::new(self.backend, p, name)?, Vec::new()));
            }
        }
        if !missing.is_empty() {
            rayon::scope(|_| {
                for _ in 0..ROUNDS {
                    for (_, job, times) in &mut missing {
                        times.push(job.time_once(name)?);
                    }
                }
                Ok::<_, Error>(())
            })?;
            for (key, _, times) in missing {
                cache.medians_s.insert(key, median(times));
            }
            cache.save()?;
        }
        Ok(probes
            .iter()
            .map(|p| cache.medians_s[&self.key(p)])
            .collect())
    }

    /// Read bandwidth (bytes/s) over a buffer 4x the last-level cache (64 MiB to 1 GiB).
    fn bandwidth(&self, cache: &mut Cache) -> Result<Sourced> {
        let llc = last_level_cache().unwrap_or(0);
        let bytes = (4 * llc).clamp(64 << 20, 1 << 30);
        let key = format!("{} | read pass | {bytes} bytes", self.machine);
        let secs = match cache.medians_s.get(&key) {
            Some(s) => *s,
            None => {
                let buf: Vec<u64> = (0..bytes / 8).collect();
                std::hint::black_box(read_pass(&buf));
                let times = (0..7)
                    .map(|_| {
                        let start = Instant::now();
                        std::hint::black_box(read_pass(&buf));
                        start.elapsed().as_secs_f64()
                    })
                    .collect();
                let s = median(times);
                cache.medians_s.insert(key, s);
                cache.save()?;
                s
            }
        };
        Ok(Sourced::measured(
            bytes as f64 / secs,
            format!(
                "median of 7 parallel read passes over {} MiB ({})",
                bytes >> 20,
                self.machine
            ),
        ))
    }
}

/// A fitted cost line: `t = overhead + rows * per_row + w * unpack + T * w * s_per_mac +
/// T * (rows * s_per_output + cols * s_per_input)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    /// Fixed seconds per call.
    pub overhead_s: f64,
    /// Fixed seconds per output row (the kernels' per-row setup: scales, pointers, sums),
    /// which the short rows of small models make visible.
    pub overhead_s_per_row: f64,
    /// Seconds per weight unpacked once per call (emulated formats, prefill only).
    pub unpack_s_per_weight: f64,
    /// Seconds per multiply-accumulate.
    pub s_per_mac: f64,
    /// Seconds per output value (row x token), prefill only: GEMM sums each output's lanes
    /// and transposes it into place, a cost the per-MAC rate misprices for short rows.
    pub s_per_output: f64,
    /// Seconds per input value (column x token), prefill only: the input is copied into the
    /// kernels' column order.
    pub s_per_input: f64,
}

/// Decode (GEMV) and prefill (GEMM) fits of one format.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FormatFit {
    /// One token, a matrix of fewer than `qpipe_kernels::gemv::SERIAL_GEMV_BYTES`: the GEMV runs on
    /// the calling thread, with no thread to wake.
    pub decode_serial: Fit,
    /// One token, larger matrices (a parallel GEMV): unpacking is fused into the GEMV's dot
    /// products, so it is inside `s_per_mac`.
    pub decode: Fit,
    /// Several tokens, fewer than `qpipe_kernels::gemv::SERIAL_GEMM_MACS` multiply-accumulates (a
    /// GEMM on the calling thread).
    pub prefill_serial: Fit,
    /// Several tokens, larger (a parallel GEMM).
    pub prefill: Fit,
}

/// Least squares of the relative error: the non-negative `theta` minimising
/// `sum_i ((features_i . theta) / t_i - 1)^2`; features that would come out negative are
/// dropped (held at 0).
fn fit_relative(features: &[Vec<f64>], t: &[f64]) -> Vec<f64> {
    let n = features.first().map_or(0, Vec::len);
    // A feature that is zero everywhere (no unpack term) is not fitted.
    let mut active: Vec<bool> = (0..n)
        .map(|j| features.iter().any(|f| f[j] != 0.0))
        .collect();
    loop {
        let idx: Vec<usize> = (0..n).filter(|&j| active[j]).collect();
        let k = idx.len();
        // Normal equations A^T A theta = A^T 1 with rows a_i = features_i / t_i.
        let mut m = vec![vec![0.0; k + 1]; k];
        for (f, &ti) in features.iter().zip(t) {
            for (r, &jr) in idx.iter().enumerate() {
                for (c, &jc) in idx.iter().enumerate() {
                    m[r][c] += f[jr] * f[jc] / (ti * ti);
                }
                m[r][k] += f[jr] / ti;
            }
        }
        let sol = solve(m);
        let mut theta = vec![0.0; n];
        for (v, &j) in sol.iter().zip(&idx) {
            theta[j] = *v;
        }
        match idx.iter().copied().find(|&j| theta[j] < 0.0) {
            Some(j) if k > 1 => active[j] = false,
            _ => return theta.iter().map(|v| v.max(0.0)).collect(),
        }
    }
}

/// Gaussian elimination with partial pivoting on an augmented k x (k+1) system.
fn solve(mut m: Vec<Vec<f64>>) -> Vec<f64> {
    let k = m.len();
    for col in 0..k {
        let pivot = (col..k)
            .max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
            .unwrap_or(col);
        if m[pivot][col].abs() < f64::MIN_POSITIVE {
            continue;
        }
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (v, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    (0..k)
        .map(|r| {
            if m[r][r].abs() < f64::MIN_POSITIVE {
                0.0
            } else {
                m[r][k] / m[r][r]
            }
        })
        .collect()
}

/// A measured target: its profile with the measured bandwidth and on-chip memory filled in,
/// and a decode/prefill fit per calibrated format.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// The target, with `bandwidth_bytes_per_s` and `on_chip_bytes` measured.
    pub target: Target,
    /// What was measured on (CPU model, threads).
    pub machine: String,
    /// Fits per format.
    #[serde(serialize_with = "by_name")]
    pub fits: BTreeMap<Format, FormatFit>,
}

/// A map keyed by format, serialized under the formats' names: JSON keys must be strings.
fn by_name<S: serde::Serializer>(
    fits: &BTreeMap<Format, FormatFit>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_map(fits.iter().map(|(f, fit)| (f.to_string(), fit)))
}

/// Whether qpipe-kernels runs a matmul of `weight_bytes` packed bytes and `macs`
/// multiply-accumulates over `tokens` tokens on the calling thread.
fn kernel_is_serial(weight_bytes: usize, macs: usize, tokens: usize) -> bool {
    if tokens == 1 {
        qpipe_kernels::gemv_runs_serially(weight_bytes)
    } else {
        qpipe_kernels::gemm_runs_serially(macs)
    }
}

/// Columns per row `backend` works through for `format`: qpipe-kernels round rows up to whole
/// blocks ([`qpipe_kernels::covered_cols`]); candle's are taken as `cols`.
fn covered_cols(backend: Backend, format: &Format, cols: usize) -> usize {
    match (backend, format) {
        (Backend::Kernels, Format::Int(f)) => {
            qpipe_kernels::covered_cols(f.bits, f.granularity.group_len(cols), cols)
        }
        _ => cols,
    }
}

/// Calibration probes of `format`: every calibration shape at one token and at each
/// calibration token count.
fn calibration_probes(format: Format) -> Vec<Probe> {
    CALIBRATION_SHAPES
        .iter()
        .flat_map(|&(rows, cols)| {
            std::iter::once(1)
                .chain(CALIBRATION_TOKENS)
                .map(move |tokens| Probe {
                    format,
                    rows,
                    cols,
                    tokens,
                })
        })
        .collect()
}

/// Calibrates a measured target (`host`, `llama-cpp`) for `formats` on this machine, measuring
/// only what `cache` does not hold yet. Formats illegal on the target are errors.
pub fn calibrate(target: &Target, formats: &[Format], cache: &mut Cache) -> Result<Calibration> {
    calibrate_with(target, formats, cache, &[])
}

/// `calibrate`, with `extra` probes measured in the same interleaved session.
fn calibrate_with(
    target: &Target,
    formats: &[Format],
    cache: &mut Cache,
    extra: &[Probe],
) -> Result<Calibration> {
    let timer = Timer::new(target)?;
    let mut legal = Vec::new();
    for f in formats {
        legal.push((*f, target.legality(f, Activation::Float)?.emulated));
    }
    let mut probes: Vec<Probe> = legal
        .iter()
        .flat_map(|(f, _)| calibration_probes(*f))
        .collect();
    probes.extend_from_slice(extra);
    timer.medians(cache, &probes)?;
    let mut fits = BTreeMap::new();
    for (format, emulated) in legal {
        let ps = calibration_probes(format);
        let t = timer.medians(cache, &ps)?;
        // Each phase splits where the kernels do (serial below SERIAL_GEMV_BYTES or
        // SERIAL_GEMM_MACS); llama-cpp's matmul has no such split: all its probes count as
        // parallel, and its serial fits are unused zeros.
        let serial = |p: &Probe| {
            timer.backend == Backend::Kernels
                && kernel_is_serial(
                    p.format.storage_bytes(p.rows, p.cols),
                    p.tokens * p.rows * p.cols,
                    p.tokens,
                )
        };
        let fit_phase = |keep: &dyn Fn(&Probe) -> bool| {
            let (feats, ts): (Vec<Vec<f64>>, Vec<f64>) = ps
                .iter()
                .zip(&t)
                .filter(|(p, _)| keep(p))
                .map(|(p, &t)| {
                    let cols = covered_cols(timer.backend, &p.format, p.cols);
                    let w = (p.rows * cols) as f64;
                    let tokens = p.tokens as f64;
                    let unpack = if emulated && p.tokens > 1 { w } else { 0.0 };
                    // At one token the per-output term is the per-row one, and a per-input
                    // term fitted no better than the noise: decode fits have neither.
                    let per_value = |n: usize| if p.tokens > 1 { tokens * n as f64 } else { 0.0 };
                    let features = vec![
                        1.0,
                        p.rows as f64,
                        unpack,
                        tokens * w,
                        per_value(p.rows),
                        per_value(cols),
                    ];
                    (features, t)
                })
                .unzip();
            // llama-cpp has no serial decode probes: its unused serial fit is zero.
            let theta = fit_relative(&feats, &ts);
            let th = |i: usize| theta.get(i).copied().unwrap_or(0.0);
            Fit {
                overhead_s: th(0),
                overhead_s_per_row: th(1),
                unpack_s_per_weight: th(2),
                s_per_mac: th(3),
                s_per_output: th(4),
                s_per_input: th(5),
            }
        };
        fits.insert(
            format,
            FormatFit {
                decode_serial: fit_phase(&|p| p.tokens == 1 && serial(p)),
                decode: fit_phase(&|p| p.tokens == 1 && !serial(p)),
                prefill_serial: fit_phase(&|p| p.tokens > 1 && serial(p)),
                prefill: fit_phase(&|p| p.tokens > 1 && !serial(p)),
            },
        );
    }
    let mut measured = target.clone();
    measured.bandwidth_bytes_per_s = Some(timer.bandwidth(cache)?);
    measured.on_chip_bytes = last_level_cache().map(|b| {
        Sourced::measured(
            b as f64,
            "largest cache in /sys/devices/system/cpu/cpu0/cache",
        )
    });
    Ok(Calibration {
        target: measured,
        machine: timer.machine,
        fits,
    })
}

impl Rates for Calibration {
    fn target(&self) -> &Target {
        &self.target
    }

    fn execution(
        &self,
        format: &Format,
        activation: Activation,
        tokens: usize,
        (rows, cols): (usize, usize),
    ) -> Result<Execution> {
        let legal = self.target.legality(format, activation)?;
        let fit = self.fits.get(format).ok_or_else(|| {
            self.target
                .illegal(format!("{format} has not been calibrated on this machine"))
        })?;
        let backend = backend(&self.target)?;
        let serial = backend == Backend::Kernels
            && kernel_is_serial(
                format.storage_bytes(rows, cols),
                tokens * rows * cols,
                tokens,
            );
        let phase = match (tokens, serial) {
            (1, true) => fit.decode_serial,
            (1, false) => fit.decode,
            (_, true) => fit.prefill_serial,
            (_, false) => fit.prefill,
        };
        // The fits count the columns the kernels work through; the cost model counts real
        // ones, so per-column rates carry the padding of a row's last block.
        let pad = covered_cols(backend, format, cols) as f64 / cols.max(1) as f64;
        Ok(Execution {
            compute: legal.compute,
            support: if legal.emulated {
                Support::Emulated {
                    unpack_s_per_weight: phase.unpack_s_per_weight * pad,
                }
            } else {
                Support::Native
            },
            macs_per_s: 1.0 / (phase.s_per_mac * pad).max(f64::MIN_POSITIVE),
            overhead_s: phase.overhead_s,
            overhead_s_per_row: phase.overhead_s_per_row,
            s_per_output: phase.s_per_output,
            s_per_input: phase.s_per_input * pad,
        })
    }

    fn bandwidth(&self) -> Result<f64> {
        Rates::bandwidth(&self.target)
    }

    /// Zero when the weights fit in the last-level cache: the probes call a matmul back to
    /// back, so such weights stay on chip, and the fitted per-MAC rates (from calibration
    /// shapes of at most 2 MiB) already include their traffic. Adding a DRAM term there
    /// predicted 2x the measured time of the small shapes once the AVX-512 GEMV made them
    /// faster than DRAM could feed them.
    fn memory_s(&self, weight_bytes: u64, bytes: u64) -> Result<f64> {
        let on_chip = self.target.on_chip_bytes.as_ref().map_or(0.0, |b| b.value);
        if (weight_bytes as f64) <= on_chip {
            return Ok(0.0);
        }
        Ok(bytes as f64 / self.bandwidth()?)
    }
}

/// One shape's predicted and measured latency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShapeCheck {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Tokens (1 = decode / GEMV).
    pub tokens: usize,
    /// The cost model's latency, seconds.
    pub predicted_s: f64,
    /// Median measured latency, seconds.
    pub measured_s: f64,
    /// predicted / measured - 1.
    pub error: f64,
}

/// The cost model's error on a model's own shapes for one format on a measured target.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// The calibration the predictions come from.
    pub calibration: Calibration,
    /// Format checked.
    pub format: String,
    /// Distinct shapes, decode and prefill.
    pub checks: Vec<ShapeCheck>,
}

impl Validation {
    /// Largest |error| over all checks.
    pub fn max_abs_error(&self) -> f64 {
        self.checks
            .iter()
            .map(|c| c.error.abs())
            .fold(0.0, f64::max)
    }
}

/// Predicts and measures each distinct shape of `shapes` with `format` for one decode step and
/// a prefill of `prefill_tokens` tokens. Probes missing from `cache` (calibration and model
/// shapes alike) are measured in one interleaved session.
pub fn validate(
    target: &Target,
    format: Format,
    shapes: &[MatmulShape],
    prefill_tokens: usize,
    cache: &mut Cache,
) -> Result<Validation> {
    let mut distinct: Vec<&MatmulShape> = Vec::new();
    for s in shapes {
        if !distinct
            .iter()
            .any(|d| (d.rows, d.cols) == (s.rows, s.cols))
        {
            distinct.push(s);
        }
    }
    for s in &distinct {
        format
            .check(s.rows, s.cols)
            .map_err(|m| target.illegal(format!("{}: {m}", s.name)))?;
    }
    let pairs: Vec<(Probe, &MatmulShape)> = distinct
        .iter()
        .flat_map(|s| {
            [1, prefill_tokens].map(|tokens| {
                let probe = Probe {
                    format,
                    rows: s.rows,
                    cols: s.cols,
                    tokens,
                };
                (probe, *s)
            })
        })
        .collect();
    let probes: Vec<Probe> = pairs.iter().map(|(p, _)| *p).collect();
    let calibration = calibrate_with(target, &[format], cache, &probes)?;
    let measured = Timer::new(target)?.medians(cache, &probes)?;
    let model = CostModel::new(&calibration);
    let checks = pairs
        .iter()
        .zip(measured)
        .map(|((p, s), measured_s)| {
            let a = Assignment {
                shape: (*s).clone(),
                format,
                activation: Activation::Float,
            };
            let predicted_s = model.matmul(&a, p.tokens)?.latency_s;
            Ok(ShapeCheck {
                rows: p.rows,
                cols: p.cols,
                tokens: p.tokens,
                predicted_s,
                measured_s,
                error: predicted_s / measured_s - 1.0,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Validation {
        calibration,
        format: format.to_string(),
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_fit_recovers_a_line_and_drops_negative_terms() {
        let feats: Vec<Vec<f64>> = [(1.0, 10.0), (1.0, 100.0), (1.0, 1000.0)]
            .iter()
            .map(|&(a, b)| vec![a, b])
            .collect();
        let t: Vec<f64> = feats.iter().map(|f| 3.0 + 0.5 * f[1]).collect();
        let theta = fit_relative(&feats, &t);
        assert!((theta[0] - 3.0).abs() < 1e-9 && (theta[1] - 0.5).abs() < 1e-12);
        // A decreasing series would need a negative slope: it is dropped, the rest refitted.
        let theta = fit_relative(&feats, &[3.0, 2.0, 1.0]);
        assert_eq!(theta[1], 0.0);
        assert!(theta[0] > 1.0 && theta[0] < 3.0);
    }

    #[test]
    fn cache_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/m.json");
        let mut c = Cache::open(&path).unwrap();
        c.medians_s.insert("k".into(), 1.5e-6);
        c.save().unwrap();
        assert_eq!(Cache::open(&path).unwrap().medians_s["k"], 1.5e-6);
        std::fs::write(&path, "{").unwrap();
        let e = Cache::open(&path).unwrap_err().to_string();
        assert!(e.contains("m.json: invalid measurement cache"), "{e}");
    }
}
