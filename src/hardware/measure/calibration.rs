//! The fitted rates of a measured target: per format, decode and prefill cost lines fitted to
//! timings of calibration shapes, which the cost model prices a model's shapes with.

use super::cache::{last_level_cache, Cache};
use super::least_squares::fit_relative;
use super::timing::{backend, Probe, Timer};
use crate::error::Result;
use crate::hardware::cost::{Execution, Rates};
use crate::hardware::profile::{Backend, Sourced, Support, Target};
use crate::quant::{Activation, Format};
use serde::Serialize;
use std::collections::BTreeMap;

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
pub(super) fn calibrate_with(
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
