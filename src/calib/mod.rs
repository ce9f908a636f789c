//! Calibration statistics: one pass of the float model over the calibration tokens records, for
//! every [`QLinear`] input, a 2048-bin histogram, the absmax, the per-input-channel mean of
//! x² (the importance vector, as llama.cpp's imatrix) and extremes (for input transforms'
//! scales and the ranges of rescaled inputs), and for causal LMs caches the float
//! model's top-K next-token distribution so later KL measurements need no second float pass.
//!
//! Everything is accumulated in a fixed order (sequences in order, one forward at a time), so
//! the statistics are identical whatever the thread count.

pub mod hessians;

use crate::checkpoint::write::write_atomic;
use crate::error::{Error, Result, Subject};
use crate::model::{ActivationObserver, Model, QLinear};
use crate::quant::{FloatType, Format, Histogram, Transform};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::reference::TopK;
pub use hessians::{Factors, Hessians};

/// Version of the statistics file layout.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// The key calibration results computed from the weights whose sha256 is `model_sha256` on
/// `sequences` are saved under, so a later run reuses them only for the same inputs: sha256
/// of the model's hash and every sequence's length and token ids (little-endian).
pub fn key(model_sha256: &str, sequences: &[&[u32]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(model_sha256.as_bytes());
    for s in sequences {
        h.update((s.len() as u64).to_le_bytes());
        for id in *s {
            h.update(id.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// What one linear layer's inputs looked like over the calibration tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearStats {
    /// Checkpoint name of the layer's weight.
    pub name: String,
    /// Input rows (tokens) seen.
    pub tokens: u64,
    /// Histogram of every input value.
    pub histogram: Histogram,
    /// Per input channel, the sum of x² over the tokens (f64, so order-stable and exact enough).
    pub sum_sq: Vec<f64>,
    /// Per input channel, the smallest value seen, at most 0 (as activation ranges include 0;
    /// empty in files from before it was kept).
    #[serde(default)]
    pub channel_min: Vec<f32>,
    /// Per input channel, the largest value seen, at least 0 (empty in files from before).
    #[serde(default)]
    pub channel_max: Vec<f32>,
}

impl LinearStats {
    fn new(name: &str, in_features: usize) -> Self {
        LinearStats {
            name: name.to_string(),
            tokens: 0,
            histogram: Histogram::new(),
            sum_sq: vec![0.0; in_features],
            channel_min: vec![0.0; in_features],
            channel_max: vec![0.0; in_features],
        }
    }

    /// Largest |x| seen.
    pub fn absmax(&self) -> f32 {
        self.histogram.absmax()
    }

    /// |x| below which a fraction `q` of the inputs lie (from the histogram).
    pub fn abs_percentile(&self, q: f64) -> f32 {
        self.histogram.abs_quantile(q)
    }

    /// Per-input-channel mean of x²: how much each weight column's error is amplified.
    pub fn importance(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.sum_sq.iter().map(|s| (s / n) as f32).collect()
    }

    /// Per input channel, the largest |x| seen; `None` for statistics saved before it was kept.
    pub fn channel_abs_max(&self) -> Option<Vec<f32>> {
        (self.channel_max.len() == self.sum_sq.len()).then(|| {
            self.channel_min
                .iter()
                .zip(&self.channel_max)
                .map(|(lo, hi)| lo.abs().max(hi.abs()))
                .collect()
        })
    }

    /// The range `[lo, hi]` of the input divided per channel by `scales` (a transform's): from
    /// the channel extremes, so it always contains 0.
    pub fn scaled_range(&self, scales: &[f32]) -> (f32, f32) {
        let (mut lo, mut hi) = (0f32, 0f32);
        for ((min, max), s) in self.channel_min.iter().zip(&self.channel_max).zip(scales) {
            lo = lo.min(min / s);
            hi = hi.max(max / s);
        }
        (lo, hi)
    }

    fn add(&mut self, x: &[f32]) {
        let cols = self.sum_sq.len();
        self.histogram.add(x);
        for row in x.chunks_exact(cols) {
            for (j, &v) in row.iter().enumerate() {
                self.sum_sq[j] += f64::from(v) * f64::from(v);
                self.channel_min[j] = self.channel_min[j].min(v);
                self.channel_max[j] = self.channel_max[j].max(v);
            }
        }
        self.tokens += (x.len() / cols) as u64;
    }
}

/// Statistics of a calibration run, saved to and reloaded from a JSON file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// File layout version.
    pub version: u32,
    /// Tokens the model was run on.
    pub tokens: usize,
    /// Per quantizable linear, in forward order.
    pub linears: Vec<LinearStats>,
    /// The float model's top-K next-token distributions (causal LMs only).
    pub reference: Option<TopK>,
}

impl Stats {
    /// The statistics of the layer whose weight is `name`.
    pub fn linear(&self, name: &str) -> Option<&LinearStats> {
        self.linears.iter().find(|l| l.name == name)
    }

    /// Writes the statistics to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec(self)
            .map_err(|e| Error::invalid(path, format!("cannot serialise statistics: {e}")))?;
        write_atomic(path, &text)
    }

    /// Reads statistics written by [`Stats::save`].
    pub fn load(path: &Path) -> Result<Stats> {
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        let stats: Stats = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(path, format!("not a qpipe statistics file: {e}")))?;
        if stats.version != FORMAT_VERSION {
            return Err(Error::unsupported(
                path,
                format!(
                    "statistics format version {} (this qpipe reads {FORMAT_VERSION})",
                    stats.version
                ),
            ));
        }
        Ok(stats)
    }
}

impl Stats {
    /// The per-channel scales `transform` gives `fold`'s input (`None` for no transform): from
    /// its first consumer's input statistics and, for SmoothQuant, the column maxima of every
    /// consumer's float weight in `model`.
    pub fn fold_scales(
        &self,
        model: &Model,
        fold: &crate::model::Fold,
        transform: Transform,
    ) -> Result<Option<Vec<f32>>> {
        if transform.is_none() {
            return Ok(None);
        }
        let first = &fold.consumers[0];
        let stats = self.linear(first).ok_or_else(|| {
            Error::invalid(
                Subject::other("<calibration statistics>"),
                format!("no statistics for {first}"),
            )
        })?;
        let abs_max = stats.channel_abs_max().ok_or_else(|| {
            Error::invalid(
                Subject::other("<calibration statistics>"),
                format!("{first}: no per-channel ranges (statistics from an older qpipe: collect them again)"),
            )
        })?;
        let cols = abs_max.len();
        let mut weight_max = vec![0f32; cols];
        if matches!(transform, Transform::Smooth(_)) {
            let linears = model.quantizable();
            for name in &fold.consumers {
                let l = linears.iter().find(|l| l.name() == name).ok_or_else(|| {
                    Error::invalid(Subject::tensor(name), "not a layer of the model")
                })?;
                let values = l.float_values(Format::Float(FloatType::F32))?;
                for row in values.chunks_exact(cols) {
                    for (m, v) in weight_max.iter_mut().zip(row) {
                        *m = m.max(v.abs());
                    }
                }
            }
        }
        Ok(transform.scales(&stats.importance(), &abs_max, &weight_max))
    }
}

/// Accumulates the inputs of every observed layer.
struct Collector {
    by_name: Mutex<BTreeMap<String, LinearStats>>,
}

impl ActivationObserver for Collector {
    fn observe(&self, linear: &str, input: &Tensor) -> candle_core::Result<()> {
        let cols = input.dim(1)?;
        let values: Vec<f32> = input.flatten_all()?.to_vec1()?;
        let mut map = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(linear.to_string())
            .or_insert_with(|| LinearStats::new(linear, cols))
            .add(&values);
        Ok(())
    }
}

/// The weights with an input (the matmuls and a tied embedding as the LM head), in forward
/// order, after running the float `model` over `sequences` (each a full window; BERT sees them
/// unpadded) with `observer` on each of them; `on_logits` gets a causal LM's logits per
/// sequence. The observer is removed again whatever happens.
fn observed_pass<'m>(
    model: &'m Model,
    sequences: &[&[u32]],
    observer: Arc<dyn ActivationObserver>,
    mut on_logits: impl FnMut(&Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<Vec<&'m QLinear>> {
    let linears: Vec<&QLinear> = model
        .quantizable()
        .into_iter()
        .filter(|l| l.usage().multiplies())
        .collect();
    let install = |obs: Option<Arc<dyn ActivationObserver>>| {
        linears.iter().for_each(|l| l.set_observer(obs.clone()));
    };
    install(Some(observer));
    let mut run = || -> candle_core::Result<()> {
        for seq in sequences {
            let ids = Tensor::new(*seq, &Device::Cpu)?.unsqueeze(0)?;
            match model {
                Model::Llama(m) => on_logits(&m.forward(&ids)?.squeeze(0)?)?,
                Model::Bert(m) => drop(m.forward(&ids, &ids.ones_like()?)?),
            }
        }
        Ok(())
    };
    let outcome = run();
    install(None);
    outcome.map(|()| linears)
}

/// Runs the float `model` over `sequences` (each a full window; BERT sees them unpadded) and
/// returns the statistics of every quantizable layer's inputs, plus the top-`k` reference
/// distributions for a causal LM.
pub fn collect(model: &Model, sequences: &[&[u32]], k: usize) -> Result<Stats> {
    if sequences.is_empty() || sequences.iter().any(|s| s.len() < 2) {
        return Err(Error::invalid(
            Subject::other("<calibration data>"),
            "no calibration sequences of at least 2 tokens",
        ));
    }
    let collector = Arc::new(Collector {
        by_name: Mutex::new(BTreeMap::new()),
    });
    let mut reference = TopK::new(k);
    let linears = observed_pass(model, sequences, collector.clone(), |logits| {
        reference.push(logits)
    })
    .map_err(Error::compute("calibration forward pass"))?;

    let mut by_name =
        std::mem::take(&mut *collector.by_name.lock().unwrap_or_else(|e| e.into_inner()));
    let linears = linears
        .iter()
        .map(|l| {
            by_name
                .remove(l.name())
                .unwrap_or_else(|| LinearStats::new(l.name(), l.shape().1))
        })
        .collect();
    Ok(Stats {
        version: FORMAT_VERSION,
        tokens: sequences.iter().map(|s| s.len()).sum(),
        linears,
        reference: matches!(model, Model::Llama(_)).then_some(reference),
    })
}
