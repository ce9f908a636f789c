//! The cost model: per matmul a roofline latency, memory and energy; totals for a prefill of N
//! tokens and one decode step. Everything here is an estimate from a target's parameters.
//!
//! Per matmul `W [rows x cols]` over `T` tokens:
//! - compute = `T * rows * cols / peak(precision)` + `rows * cols * unpack` (emulated formats)
//!   + `T * (rows * per_output + cols * per_input)` (measured targets; 0 in profiles),
//! - memory  = (packed weight bytes + `T * (rows + cols)` activation bytes) / bandwidth,
//! - latency = per-matmul overhead + max(compute, memory),
//! - energy  = MACs x energy per MAC at the precision + bytes moved x energy per DRAM byte.
//!
//! The memory footprint is the packed weights (codes, scales, zero-points: exact
//! `Format::storage_bytes`) plus the largest activation input + output of the prefill.

use super::profile::{Legality, Precision, Support, Target};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result, Subject};
use crate::model::arch;
use crate::quant::{Activation, Format};
use serde::Serialize;

/// One matmul weight of a model: `rows` outputs x `cols` inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatmulShape {
    /// Tensor name in the checkpoint.
    pub name: String,
    /// Output features (rows of W).
    pub rows: usize,
    /// Input features (columns of W).
    pub cols: usize,
}

/// The format chosen for one matmul: what a genome assigns per tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assignment {
    /// The matmul.
    pub shape: MatmulShape,
    /// Weight storage format.
    pub format: Format,
    /// Input activation format.
    pub activation: Activation,
}

/// The matmul weights of a checkpoint with their real shapes, in forward order.
pub fn model_shapes(checkpoint: &Checkpoint) -> Vec<MatmulShape> {
    let family = arch::detect(checkpoint).family;
    arch::matmul_weights(checkpoint, family)
        .into_iter()
        .filter_map(|w| match w.shape[..] {
            [rows, cols] => Some(MatmulShape {
                name: w.name,
                rows,
                cols,
            }),
            _ => None,
        })
        .collect()
}

/// Every shape with the same format and activations.
pub fn uniform(shapes: &[MatmulShape], format: Format, activation: Activation) -> Vec<Assignment> {
    shapes
        .iter()
        .map(|shape| Assignment {
            shape: shape.clone(),
            format,
            activation,
        })
        .collect()
}

/// How one (format, activations) pair executes on a target for a given token count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Execution {
    /// Precision of the multiply-accumulates.
    pub compute: Precision,
    /// Native, or emulated with the unpack cost per weight.
    pub support: Support,
    /// Multiply-accumulates per second at that precision.
    pub macs_per_s: f64,
    /// Fixed seconds per matmul call.
    pub overhead_s: f64,
    /// Fixed seconds per output row (a measured kernel's per-row setup; 0 in profiles).
    pub overhead_s_per_row: f64,
    /// Seconds per output value (row x token) beyond the MACs (measured; 0 in profiles).
    pub s_per_output: f64,
    /// Seconds per input value (column x token) beyond the MACs (measured; 0 in profiles).
    pub s_per_input: f64,
}

/// Where a cost model gets its rates: a target's published profile, or measurements.
pub trait Rates {
    /// The target being modelled.
    fn target(&self) -> &Target;
    /// Rates for `format` with `activation` inputs over `tokens` tokens, for a `(rows, cols)`
    /// weight matrix; illegal pairs are errors naming the target.
    fn execution(
        &self,
        format: &Format,
        activation: Activation,
        tokens: usize,
        shape: (usize, usize),
    ) -> Result<Execution>;
    /// DRAM bandwidth, bytes/s.
    fn bandwidth(&self) -> Result<f64>;
    /// Seconds to move `bytes` for a matmul whose weights take `weight_bytes`: over the DRAM
    /// bandwidth (a deployed model's weights stream from DRAM at every token).
    fn memory_s(&self, _weight_bytes: u64, bytes: u64) -> Result<f64> {
        Ok(bytes as f64 / self.bandwidth()?)
    }
}

impl Target {
    /// A missing profile number: only measured targets lack them.
    fn unmeasured(&self, what: &str) -> Error {
        Error::unsupported(
            Subject::other(&self.name),
            format!("{what} is measured on this machine: calibrate with hardware::measure first"),
        )
    }
}

impl Rates for Target {
    fn target(&self) -> &Target {
        self
    }

    fn execution(
        &self,
        format: &Format,
        activation: Activation,
        _tokens: usize,
        _shape: (usize, usize),
    ) -> Result<Execution> {
        let Legality { compute, .. } = self.legality(format, activation)?;
        let peak = self
            .peak_macs_per_s
            .get(&compute)
            .ok_or_else(|| self.unmeasured("the peak rate"))?;
        let overhead = self
            .overhead_s_per_matmul
            .as_ref()
            .ok_or_else(|| self.unmeasured("the per-matmul overhead"))?;
        Ok(Execution {
            compute,
            support: self.check(format, activation)?,
            macs_per_s: peak.value,
            overhead_s: overhead.value,
            overhead_s_per_row: 0.0,
            s_per_output: 0.0,
            s_per_input: 0.0,
        })
    }

    fn bandwidth(&self) -> Result<f64> {
        self.bandwidth_bytes_per_s
            .as_ref()
            .map(|b| b.value)
            .ok_or_else(|| self.unmeasured("the bandwidth"))
    }
}

/// Whether compute or memory traffic sets a matmul's roofline latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// MACs (and unpacking) take longer than moving the bytes.
    Compute,
    /// Moving the bytes takes longer.
    Memory,
}

/// The estimated cost of one matmul.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatmulCost {
    /// Tensor name.
    pub name: String,
    /// Weight format.
    pub format: String,
    /// Activation format (`float`, `a8`, `a16`).
    pub activations: Activation,
    /// Execution on the target.
    pub execution: Execution,
    /// Multiply-accumulates.
    pub macs: u64,
    /// Packed weight bytes (codes + scales + zero-points).
    pub weight_bytes: u64,
    /// Input + output activation bytes.
    pub activation_bytes: u64,
    /// Seconds of compute (MACs, unpacking, per-value work).
    pub compute_s: f64,
    /// Seconds of memory traffic.
    pub memory_s: f64,
    /// Overhead + max(compute, memory), seconds.
    pub latency_s: f64,
    /// Which side of the roofline the matmul is on.
    pub bound: Bound,
    /// Joules.
    pub energy_j: f64,
}

/// Totals over all matmuls for one pass of `tokens` tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseCost {
    /// Tokens processed by every matmul.
    pub tokens: usize,
    /// Sum of matmul latencies, seconds.
    pub latency_s: f64,
    /// Sum of matmul energies, joules.
    pub energy_j: f64,
    /// Largest input + output activation of one matmul, bytes.
    pub peak_activation_bytes: u64,
    /// Per matmul.
    pub matmuls: Vec<MatmulCost>,
}

/// The estimated cost of an assignment on a target: memory, a prefill and a decode step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostEstimate {
    /// Target name.
    pub target: String,
    /// Always "estimate": these numbers come from a model, not from running the network.
    pub kind: &'static str,
    /// Packed weights, bytes.
    pub weight_bytes: u64,
    /// Packed weights + the prefill's peak activations, bytes.
    pub memory_bytes: u64,
    /// Prefill of N tokens.
    pub prefill: PhaseCost,
    /// One decode step (one token).
    pub decode: PhaseCost,
}

/// Prices assignments with the rates of one target.
pub struct CostModel<'a> {
    rates: &'a dyn Rates,
}

impl<'a> CostModel<'a> {
    /// A cost model over `rates` (a [`Target`] or a measured calibration).
    pub fn new(rates: &'a dyn Rates) -> Self {
        CostModel { rates }
    }

    /// The cost of one matmul over `tokens` tokens; illegal formats or shapes are errors.
    pub fn matmul(&self, a: &Assignment, tokens: usize) -> Result<MatmulCost> {
        let target = self.rates.target();
        let (rows, cols) = (a.shape.rows, a.shape.cols);
        a.format
            .check(rows, cols)
            .map_err(|m| target.illegal(format!("{}: {m}", a.shape.name)))?;
        let weight_bytes = a.format.storage_bytes(rows, cols) as u64;
        let ex = self
            .rates
            .execution(&a.format, a.activation, tokens, (rows, cols))?;
        let weights = (rows * cols) as f64;
        let macs = tokens as u64 * (rows * cols) as u64;
        let act_width = match (a.activation.bits(), ex.compute) {
            (Some(bits), _) => bits as u64 / 8,
            (None, Precision::Fp16) => 2,
            (None, _) => 4,
        };
        let activation_bytes = tokens as u64 * (rows + cols) as u64 * act_width;
        let unpack = match ex.support {
            Support::Native => 0.0,
            Support::Emulated {
                unpack_s_per_weight,
            } => unpack_s_per_weight * weights,
        };
        let per_value =
            tokens as f64 * (rows as f64 * ex.s_per_output + cols as f64 * ex.s_per_input);
        let compute_s = macs as f64 / ex.macs_per_s + unpack + per_value;
        let memory_s = self
            .rates
            .memory_s(weight_bytes, weight_bytes + activation_bytes)?;
        let energy = target.energy_model.as_ref();
        let pj_mac = energy
            .and_then(|e| e.per_mac_pj.get(&ex.compute))
            .map_or(0.0, |s| s.value);
        let pj_byte = energy.map_or(0.0, |e| e.per_dram_byte_pj.value);
        Ok(MatmulCost {
            name: a.shape.name.clone(),
            format: a.format.to_string(),
            activations: a.activation,
            execution: ex,
            macs,
            weight_bytes,
            activation_bytes,
            compute_s,
            memory_s,
            latency_s: ex.overhead_s
                + rows as f64 * ex.overhead_s_per_row
                + compute_s.max(memory_s),
            bound: if compute_s >= memory_s {
                Bound::Compute
            } else {
                Bound::Memory
            },
            energy_j: (macs as f64 * pj_mac + (weight_bytes + activation_bytes) as f64 * pj_byte)
                * 1e-12,
        })
    }

    /// Totals over `assignment` for one pass of `tokens` tokens.
    pub fn phase(&self, assignment: &[Assignment], tokens: usize) -> Result<PhaseCost> {
        let matmuls = assignment
            .iter()
            .map(|a| self.matmul(a, tokens))
            .collect::<Result<Vec<_>>>()?;
        Ok(PhaseCost {
            tokens,
            latency_s: matmuls.iter().map(|m| m.latency_s).sum(),
            energy_j: matmuls.iter().map(|m| m.energy_j).sum(),
            peak_activation_bytes: matmuls
                .iter()
                .map(|m| m.activation_bytes)
                .max()
                .unwrap_or(0),
            matmuls,
        })
    }

    /// Memory, a prefill of `prefill_tokens` tokens and one decode step for `assignment`.
    pub fn estimate(
        &self,
        assignment: &[Assignment],
        prefill_tokens: usize,
    ) -> Result<CostEstimate> {
        let prefill = self.phase(assignment, prefill_tokens)?;
        let decode = self.phase(assignment, 1)?;
        let weight_bytes: u64 = prefill.matmuls.iter().map(|m| m.weight_bytes).sum();
        Ok(CostEstimate {
            target: self.rates.target().name.clone(),
            kind: "estimate",
            weight_bytes,
            memory_bytes: weight_bytes
                + prefill
                    .peak_activation_bytes
                    .max(decode.peak_activation_bytes),
            prefill,
            decode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::profile::target;

    fn shape(rows: usize, cols: usize) -> MatmulShape {
        MatmulShape {
            name: format!("w{rows}x{cols}"),
            rows,
            cols,
        }
    }

    #[test]
    fn roofline_terms_add_up() {
        let t = target("tensorrt").unwrap();
        let model = CostModel::new(&t);
        let a = &uniform(
            &[shape(4096, 4096)],
            "int8-channel-sym".parse().unwrap(),
            Activation::A8,
        )[0];
        let c = model.matmul(a, 1).unwrap();
        let bytes = (4096 * 4096 + 4096 * 2 + 2 * 4096) as f64;
        assert_eq!(c.weight_bytes + c.activation_bytes, bytes as u64);
        assert!((c.memory_s - bytes / 2.048e11).abs() < 1e-15);
        assert!((c.compute_s - 4096.0 * 4096.0 / 4.25e13).abs() < 1e-15);
        assert_eq!(c.bound, Bound::Memory);
        assert!((c.latency_s - (5e-6 + c.memory_s)).abs() < 1e-15);
        let energy = 4096.0 * 4096.0 * 0.3e-12 + bytes * 162.5e-12;
        assert!((c.energy_j - energy).abs() < 1e-12 * energy);
        // A large prefill is compute-bound.
        assert_eq!(model.matmul(a, 4096).unwrap().bound, Bound::Compute);
    }

    #[test]
    fn emulated_formats_pay_the_unpack_cost() {
        let t = target("arm-dot").unwrap();
        let model = CostModel::new(&t);
        let s = [shape(1024, 1024)];
        let native = model
            .matmul(
                &uniform(&s, "int8-channel-sym".parse().unwrap(), Activation::A8)[0],
                64,
            )
            .unwrap();
        let emulated = model
            .matmul(
                &uniform(&s, "int4-channel-sym".parse().unwrap(), Activation::A8)[0],
                64,
            )
            .unwrap();
        let unpack = 1024.0 * 1024.0 / 1.536e11;
        assert!((emulated.compute_s - native.compute_s - unpack).abs() < 1e-12);
    }

    #[test]
    fn shapes_a_format_cannot_store_are_rejected() {
        let t = target("llama-cpp").unwrap();
        let a = &uniform(
            &[shape(1536, 576)],
            "q4_k".parse().unwrap(),
            Activation::Float,
        )[0];
        let e = CostModel::new(&t).matmul(a, 1).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "llama-cpp: w1536x576: q4_k needs rows whose length is a multiple of 256"
            ),
            "{e}"
        );
    }
}
