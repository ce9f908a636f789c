//! Fitness of genomes from real quantized forward passes against the float [`Baseline`].
//!
//! Three caches keep the search fast without changing any result:
//! - fake-quantized weights per (tensor, gene), built once;
//! - losses per genome (by [`Genome::key`]), so a genome met again costs nothing;
//! - hidden states entering a few checkpoint layers, keyed by [`Genome::prefix_key`]: a genome
//!   that shares every choice before layer L with one evaluated earlier (a child that differs
//!   from its parent only in later layers) starts at L. A genome that is float before its first
//!   quantized layer starts from the baseline's hidden states there.
//!
//! A cached hidden state is bit-identical to the recomputed one (same ops on the same inputs),
//! so results do not depend on what happened to be cached, nor on the thread count.

use super::genome::{Gene, Genome, Space};
use crate::calib::{Hessians, Stats};
use crate::error::{Error, Result, Subject};
use crate::model::{Model, Overrides};
use crate::quant::{
    Activation, ActivationQuant, Calibrator, Factor, Format, Rescale, Rounding, Symmetry, Transform,
};
use crate::reference::{layers, Baseline};
use candle_core::Tensor;
use rayon::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Calibrator for activation ranges: of the four, the best held-out KLD with one SmolLM2 layer's
/// input at A8 on 107 of 210 layers (minmax 49, entropy 51, percentile 7; ties counted for each),
/// and better than minmax on 149 (tests/suite/activation_quant.rs, the ignored test).
const ACTIVATION_CALIBRATOR: Calibrator = Calibrator::Mse;

/// Hidden states are kept entering every `PREFIX_STRIDE`-th layer.
const PREFIX_STRIDE: usize = 4;

/// Scores genomes by real forward passes.
pub struct Evaluator<'a> {
    model: &'a Model,
    space: &'a Space,
    baseline: &'a Baseline,
    layer_of: Vec<usize>,
    importance: Vec<Vec<f32>>,
    /// Per tensor, the GPTQ factor of its input (none until [`Evaluator::with_gptq`]).
    gptq: Vec<Option<Arc<Factor>>>,
    /// Per tensor, the quantizer of its input per quantized activation format.
    activation: Vec<HashMap<Activation, ActivationQuant>>,
    /// Per fold and offered transform, the rescaling of its input.
    scales: HashMap<(usize, Transform), FoldScale>,
    weights: Mutex<TensorCache<(usize, Gene)>>,
    losses: Mutex<HashMap<u64, f64>>,
    prefixes: Mutex<TensorCache<(usize, u64)>>,
    requests: AtomicU64,
    hits: AtomicU64,
}

/// The divisors a genome's transforms fold into their inputs' producers.
#[derive(Debug, Default)]
pub struct FoldDivisors<'a> {
    /// Per producing weight (slot index), the divisors of its rows.
    pub rows: HashMap<usize, &'a [f32]>,
    /// Per other producing tensor (a norm's weight, a bias) by name, the divisors of its first
    /// dimension.
    pub others: std::collections::BTreeMap<String, &'a [f32]>,
}

/// A fold's input rescaled by one transform.
struct FoldScale {
    /// Per channel, `s`: the consumers' columns are multiplied by it.
    scales: Vec<f32>,
    /// `1 / s` as a tensor, to multiply the input by.
    inverse: Tensor,
    /// The quantizer of the rescaled input per quantized activation format: min/max over the
    /// channels' extremes divided by `s` (the histogram is of the unscaled input).
    activation: HashMap<Activation, ActivationQuant>,
    /// The GPTQ factor of the rescaled input (none until [`Evaluator::with_gptq`]).
    gptq: Option<Arc<Factor>>,
}

/// Counters of an evaluator's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Genomes asked for.
    pub requests: u64,
    /// Of those, answered from the genome cache.
    pub hits: u64,
}

/// Tensors by key, the oldest dropped first once their bytes exceed the capacity.
struct TensorCache<K> {
    capacity: usize,
    used: usize,
    order: VecDeque<K>,
    map: HashMap<K, Tensor>,
}

impl<K: std::hash::Hash + Eq + Copy> TensorCache<K> {
    fn new(capacity: usize) -> Self {
        TensorCache {
            capacity,
            used: 0,
            order: VecDeque::new(),
            map: HashMap::new(),
        }
    }

    fn get(&self, key: &K) -> Option<Tensor> {
        self.map.get(key).cloned()
    }

    fn put(&mut self, key: K, t: &Tensor) {
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        if bytes > self.capacity || self.map.contains_key(&key) {
            return;
        }
        while self.used + bytes > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.map.remove(&old) {
                self.used -= gone.elem_count() * gone.dtype().size_in_bytes();
            }
        }
        self.used += bytes;
        self.order.push_back(key);
        self.map.insert(key, t.clone());
    }
}

/// A genome's weights and input quantizers as per-forward overrides.
pub struct GenomeOverrides<'g> {
    weights: HashMap<&'g str, (Tensor, Format)>,
    quants: HashMap<&'g str, Option<ActivationQuant>>,
    inverse_scales: HashMap<&'g str, Tensor>,
}

impl Overrides for GenomeOverrides<'_> {
    fn weight(&self, linear: &str) -> Option<(&Tensor, Format)> {
        self.weights.get(linear).map(|(w, f)| (w, *f))
    }

    fn input_quant(&self, linear: &str) -> Option<Option<ActivationQuant>> {
        self.quants.get(linear).copied()
    }

    fn input_scale(&self, linear: &str) -> Option<&Tensor> {
        self.inverse_scales.get(linear)
    }
}

impl<'a> Evaluator<'a> {
    /// An evaluator for genomes of `space` on `model`, against `baseline`, with importance and
    /// activation histograms from `stats`; caches up to `weight_cache` bytes of fake-quantized
    /// weights and `prefix_cache` bytes of hidden states.
    pub fn new(
        model: &'a Model,
        space: &'a Space,
        baseline: &'a Baseline,
        stats: &Stats,
        weight_cache: usize,
        prefix_cache: usize,
    ) -> Result<Evaluator<'a>> {
        let missing = |name: &str| {
            Error::invalid(
                Subject::other("<calibration statistics>"),
                format!("no statistics for {name}"),
            )
        };
        let mut importance = Vec::with_capacity(space.slots.len());
        let mut activation = Vec::with_capacity(space.slots.len());
        for slot in &space.slots {
            if !slot.usage.multiplies() {
                // A table only looked up has no input: every column weighs the same.
                importance.push(vec![1.0; slot.shape[1]]);
                activation.push(HashMap::new());
                continue;
            }
            let s = stats
                .linear(&slot.name)
                .ok_or_else(|| missing(&slot.name))?;
            importance.push(s.importance());
            let mut quants = HashMap::new();
            for &a in &space.activations {
                let Some(bits) = a.bits() else { continue };
                let q = ActivationQuant::calibrated(
                    ACTIVATION_CALIBRATOR,
                    &s.histogram,
                    bits,
                    Symmetry::Asymmetric,
                )
                .map_err(|m| Error::invalid(Subject::tensor(&slot.name), m))?;
                quants.insert(a, q);
            }
            activation.push(quants);
        }
        let mut scales = HashMap::new();
        for (k, fold) in space.folds.iter().enumerate() {
            for &t in &space.transforms {
                let Some(s) = stats.fold_scales(model, &fold.fold, t)? else {
                    continue;
                };
                scales.insert((k, t), fold_scale(s, stats, &fold.fold, space)?);
            }
        }
        Ok(Evaluator {
            model,
            space,
            baseline,
            layer_of: space.layer_of(),
            importance,
            gptq: vec![None; space.slots.len()],
            activation,
            scales,
            weights: Mutex::new(TensorCache::new(weight_cache)),
            losses: Mutex::new(HashMap::new()),
            prefixes: Mutex::new(TensorCache::new(prefix_cache)),
            requests: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        })
    }

    /// Lets genes round with GPTQ: the factors of the tensors' inputs, and of every fold's
    /// input rescaled by each offered transform (`diag(1/s) H diag(1/s)`), computed in parallel.
    pub fn with_gptq(mut self, hessians: &Hessians) -> Result<Self> {
        let factors = hessians.factors()?;
        self.gptq = self
            .space
            .slots
            .iter()
            .map(|s| factors.get(&s.name).cloned())
            .collect();
        let space = self.space;
        let scaled = self
            .scales
            .par_iter()
            .map(|(&(k, t), f)| {
                let name = &space.folds[k].fold.consumers[0];
                let bad = |m: String| Error::invalid(Subject::tensor(name), m);
                let h = hessians
                    .get(name)
                    .ok_or_else(|| bad("no input Hessian".into()))?;
                let factor =
                    Factor::new(&h.scaled(&f.scales)).map_err(|m| bad(format!("{t}: {m}")))?;
                Ok(((k, t), Arc::new(factor)))
            })
            .collect::<Result<Vec<_>>>()?;
        for (key, factor) in scaled {
            if let Some(f) = self.scales.get_mut(&key) {
                f.gptq = Some(factor);
            }
        }
        Ok(self)
    }

    /// The GPTQ factor tensor `i` (slot order) is rounded with under `gene`: none to nearest,
    /// else that of its input, rescaled by the gene's transform.
    pub fn factor(&self, i: usize, gene: &Gene) -> Result<Option<&Factor>> {
        let factor = match self.fold_scale(i, gene.transform) {
            Some(f) => f.gptq.as_deref(),
            None => self.gptq[i].as_deref(),
        };
        match gene.rounding {
            Rounding::Nearest => Ok(None),
            Rounding::Gptq => factor.map(Some).ok_or_else(|| {
                Error::invalid(
                    Subject::tensor(&self.space.slots[i].name),
                    "GPTQ rounding without the input's Hessian",
                )
            }),
        }
    }

    /// The space genomes come from.
    pub fn space(&self) -> &Space {
        self.space
    }

    /// Work done so far.
    pub fn counters(&self) -> Counters {
        Counters {
            requests: self.requests.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
        }
    }

    /// Losses of `genomes` in order, evaluating distinct uncached ones in parallel.
    pub fn losses(&self, genomes: &[Genome]) -> Result<Vec<f64>> {
        self.requests
            .fetch_add(genomes.len() as u64, Ordering::Relaxed);
        let mut todo: Vec<&Genome> = Vec::new();
        {
            let cache = lock(&self.losses);
            for g in genomes {
                if !cache.contains_key(&g.key()) && !todo.iter().any(|t| t.key() == g.key()) {
                    todo.push(g);
                }
            }
        }
        self.hits
            .fetch_add((genomes.len() - todo.len()) as u64, Ordering::Relaxed);
        let fresh = todo
            .par_iter()
            .map(|g| self.evaluate(g).map(|l| (g.key(), l)))
            .collect::<Result<Vec<_>>>()?;
        let mut cache = lock(&self.losses);
        cache.extend(fresh);
        Ok(genomes.iter().map(|g| cache[&g.key()]).collect())
    }

    /// The per-input-column importance of tensor `i` (slot order) weighting its calibrator.
    pub fn importance(&self, i: usize) -> &[f32] {
        &self.importance[i]
    }

    /// The quantizer of tensor `i`'s input under `g` (`None`: float input).
    pub fn input_quant(&self, g: &Genome, i: usize) -> Option<ActivationQuant> {
        let layer = self.space.slots[i].layer;
        let quants = match self.fold_scale(i, g.genes[i].transform) {
            Some(f) => &f.activation,
            None => &self.activation[i],
        };
        quants.get(&g.activations[layer]).copied()
    }

    /// The scales `transform` gives tensor `i`'s input (`None`: not rescaled).
    pub fn scales(&self, i: usize, transform: Transform) -> Option<&[f32]> {
        self.fold_scale(i, transform).map(|f| f.scales.as_slice())
    }

    /// Per input column of tensor `i` under `transform`, the importance its calibrator weighs
    /// by: that of the rescaled input, mean (x / s)².
    pub fn scaled_importance(&self, i: usize, transform: Transform) -> std::borrow::Cow<'_, [f32]> {
        match self.scales(i, transform) {
            Some(s) => self.importance[i]
                .iter()
                .zip(s)
                .map(|(m, s)| m / (s * s))
                .collect(),
            None => std::borrow::Cow::Borrowed(&self.importance[i]),
        }
    }

    /// Where `g`'s transforms fold.
    pub fn fold_divisors(&self, g: &Genome) -> FoldDivisors<'_> {
        let mut d = FoldDivisors::default();
        for f in &self.space.folds {
            let first = f.consumers[0];
            let Some(s) = self.scales(first, g.genes[first].transform) else {
                continue;
            };
            for name in &f.fold.producers {
                match f.producer.filter(|&p| &self.space.slots[p].name == name) {
                    Some(p) => {
                        d.rows.insert(p, s);
                    }
                    None => {
                        d.others.insert(name.clone(), s);
                    }
                }
            }
        }
        d
    }

    fn fold_scale(&self, i: usize, transform: Transform) -> Option<&FoldScale> {
        let k = self.space.slots[i].fold?;
        self.scales.get(&(k, transform))
    }

    /// Known losses (for saving the search state).
    pub fn known(&self) -> Vec<(u64, f64)> {
        let mut all: Vec<(u64, f64)> = lock(&self.losses).iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_by_key(|e| e.0);
        all
    }

    /// Seeds the genome cache (from a saved search state).
    pub fn remember(&self, known: &[(u64, f64)]) {
        lock(&self.losses).extend(known.iter().copied());
    }

    fn evaluate(&self, g: &Genome) -> Result<f64> {
        let context = || format!("genome {:016x}", g.key());
        let overrides = self.overrides(g)?;
        let n = layers(self.model);
        // The first layer where the genome quantizes anything; before it the model is float.
        let first = g
            .genes
            .iter()
            .zip(&self.layer_of)
            .filter(|(gene, _)| !matches!(gene.format, Format::Float(crate::quant::FloatType::F32)))
            .map(|(_, &l)| l)
            .chain(g.activations.iter().position(|a| *a != Activation::Float))
            .min()
            .unwrap_or(n)
            .min(n);
        let mut start = first;
        let mut h = self
            .baseline
            .entering(self.model, first, Some(&overrides))
            .map_err(Error::compute(context()))?;
        {
            let cache = lock(&self.prefixes);
            for l in (first + 1..=n).rev().filter(|l| l % PREFIX_STRIDE == 0) {
                if let Some(state) = cache.get(&(l, g.prefix_key(&self.layer_of, l))) {
                    (start, h) = (l, state);
                    break;
                }
            }
        }
        let run = || -> candle_core::Result<f64> {
            let mut h = h;
            let mut l = start;
            while l < n {
                let next = ((l / PREFIX_STRIDE + 1) * PREFIX_STRIDE).min(n);
                h = self
                    .baseline
                    .advance(self.model, h, l..next, Some(&overrides))?;
                l = next;
                if l % PREFIX_STRIDE == 0 && l < n {
                    lock(&self.prefixes).put((l, g.prefix_key(&self.layer_of, l)), &h);
                }
            }
            self.baseline.loss(self.model, &h, Some(&overrides))
        };
        run().map_err(Error::compute(context()))
    }

    /// `g` as overrides of the float model's forward pass (fake-quantized weights, input
    /// quantizers).
    pub fn overrides<'g>(&self, g: &'g Genome) -> Result<GenomeOverrides<'g>>
    where
        'a: 'g,
    {
        self.space
            .check(g)
            .map_err(|m| Error::invalid(Subject::other("genome"), m))?;
        let mut weights = HashMap::new();
        let mut quants = HashMap::new();
        let mut inverse_scales = HashMap::new();
        for (i, (slot, gene)) in self.space.slots.iter().zip(&g.genes).enumerate() {
            weights.insert(slot.name.as_str(), (self.weight(i, *gene)?, gene.format));
            quants.insert(slot.name.as_str(), self.input_quant(g, i));
            if let Some(f) = self.fold_scale(i, gene.transform) {
                inverse_scales.insert(slot.name.as_str(), f.inverse.clone());
            }
        }
        Ok(GenomeOverrides {
            weights,
            quants,
            inverse_scales,
        })
    }

    /// The fake-quantized weight of slot `i` for `gene`, built once.
    fn weight(&self, i: usize, gene: Gene) -> Result<Tensor> {
        if let Some(w) = lock(&self.weights).get(&(i, gene)) {
            return Ok(w);
        }
        let slot = &self.space.slots[i];
        let linear = self
            .model
            .quantizable()
            .into_iter()
            .find(|l| l.name() == slot.name)
            .ok_or_else(|| {
                Error::invalid(Subject::tensor(&slot.name), "not a layer of the model")
            })?;
        let rescale = Rescale {
            columns: self.scales(i, gene.transform),
            rows: None,
        };
        let t = linear.fake_weight(
            gene.format,
            gene.calibrator,
            Some(&self.scaled_importance(i, gene.transform)),
            self.factor(i, &gene)?,
            rescale,
        )?;
        lock(&self.weights).put((i, gene), &t);
        Ok(t)
    }
}

/// The rescaling by `scales` of `fold`'s input, with its activation quantizers for the
/// space's quantized activation formats.
fn fold_scale(
    scales: Vec<f32>,
    stats: &Stats,
    fold: &crate::model::Fold,
    space: &Space,
) -> Result<FoldScale> {
    let name = &fold.consumers[0];
    let bad = |m: String| Error::invalid(Subject::tensor(name), m);
    let s = stats
        .linear(name)
        .ok_or_else(|| bad("no calibration statistics".into()))?;
    let (lo, hi) = s.scaled_range(&scales);
    let mut activation = HashMap::new();
    for &a in &space.activations {
        if let Some(bits) = a.bits() {
            activation.insert(
                a,
                ActivationQuant::new(bits, Symmetry::Asymmetric, lo, hi).map_err(bad)?,
            );
        }
    }
    let inverse: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
    let inverse = Tensor::new(inverse, &candle_core::Device::Cpu)
        .map_err(Error::compute(format!("{name}: input scales")))?;
    Ok(FoldScale {
        scales,
        inverse,
        activation,
        gptq: None,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
