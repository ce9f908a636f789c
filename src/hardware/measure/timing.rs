//! The timing harness: prepared matmuls of a measured target's backend timed in interleaved
//! rounds on a thread of rayon's pool, with medians through the [`Cache`], and the read
//! bandwidth of a buffer larger than the last-level cache.

use super::cache::{last_level_cache, machine, Cache};
use crate::error::{candle_message, Error, Result, Subject};
use crate::hardware::profile::{Backend, Sourced, Target};
use crate::quant::{self, Calibrator, FloatType, Format, QuantizedTensor};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;
use std::time::Instant;

/// Interleaved rounds per timing session; the median is reported.
const ROUNDS: usize = 15;

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
pub(super) fn backend(target: &Target) -> Result<Backend> {
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
pub(super) struct Probe {
    pub(super) format: Format,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) tokens: usize,
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
                let q =
                    quant::quantize(&w, p.rows, p.cols, p.format, Calibrator::MinMax, None, None)
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
                        quant::gguf::quantize(&w, p.rows, p.cols, t, Calibrator::MinMax, None, None)
                            .map_err(err)?
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
pub(super) struct Timer<'a> {
    target: &'a Target,
    pub(super) backend: Backend,
    pub(super) machine: String,
}

impl<'a> Timer<'a> {
    pub(super) fn new(target: &'a Target) -> Result<Self> {
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
    pub(super) fn medians(&self, cache: &mut Cache, probes: &[Probe]) -> Result<Vec<f64>> {
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
    pub(super) fn bandwidth(&self, cache: &mut Cache) -> Result<Sourced> {
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
