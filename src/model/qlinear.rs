//! `QLinear`: the one place a matmul weight enters a forward pass.
//!
//! Every quantizable weight of every model goes through a `QLinear`, so the search can swap what
//! a layer computes with (float, fake-quantized, later packed) on a built model, and calibration
//! can watch what flows into it, without the model code knowing about either.

use crate::error::{Error, Result, Subject};
use crate::quant::gguf::{self, GgufMatrix};
use crate::quant::{
    ActivationQuant, Calibrator, Factor, FloatType, Format, IntQuantized, QuantizedTensor, Rescale,
};
use candle_core::{Module, Tensor};
use std::sync::{Arc, RwLock};

/// What a [`QLinear`] currently multiplies by.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightSource {
    /// The checkpoint's own weights (converted to f32).
    Float,
    /// Quantize-then-dequantize values of `format`; the tensor holds them.
    Fake(Format),
    /// Stored packed in `format` (read from a packed checkpoint) and multiplied as stored.
    Packed(Format),
}

/// A weight multiplied in its stored form, never expanded to a full f32 matrix.
enum PackedWeight {
    /// qpipe integer codes, multiplied by qpipe-kernels' GEMM.
    Int(IntQuantized),
    /// GGUF blocks, multiplied by candle's CPU kernels (llama.cpp's algorithm).
    Gguf(GgufMatrix),
}

/// A float weight's format.
const F32: Format = Format::Float(FloatType::F32);

/// What a layer multiplies by.
#[derive(Clone)]
enum Weight {
    /// An f32 matrix holding `format`'s values (which decides how the runtime treats inputs).
    Dense(Tensor, Format),
    /// A packed one.
    Packed(Arc<PackedWeight>),
}

/// Receives the input of a [`QLinear`] on every forward pass while installed.
pub trait ActivationObserver: Send + Sync {
    /// `input` is the layer's input flattened to `[tokens, in_features]`, f32.
    fn observe(&self, linear: &str, input: &Tensor) -> candle_core::Result<()>;
}

/// Replacements for some layers' weights and input quantizers during one forward pass. The
/// shared model stays untouched, so differently quantized variants can run in parallel.
pub trait Overrides: Sync {
    /// The weight (f32, the layer's shape, holding the values of the format it comes with) to
    /// multiply by instead of `linear`'s own, if any.
    fn weight(&self, linear: &str) -> Option<(&Tensor, Format)>;

    /// The input quantizer to use instead of `linear`'s own (`Some(None)`: float input).
    fn input_quant(&self, _linear: &str) -> Option<Option<ActivationQuant>> {
        None
    }

    /// Per input channel, `1 / s` to multiply `linear`'s input by before it is quantized (a
    /// rescaled weight reads a rescaled input, see [`crate::quant::transform`]).
    fn input_scale(&self, _linear: &str) -> Option<&Tensor> {
        None
    }
}

/// One layer's weight replaced: the override a sensitivity candidate needs.
pub struct Swap<'a> {
    /// Checkpoint name of the layer's weight.
    pub name: &'a str,
    /// The weight to use instead (same shape, f32).
    pub weight: &'a Tensor,
    /// The format whose values it holds.
    pub format: Format,
}

impl Overrides for Swap<'_> {
    fn weight(&self, linear: &str) -> Option<(&Tensor, Format)> {
        (linear == self.name).then_some((self.weight, self.format))
    }
}

/// How a model uses a quantizable weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Usage {
    /// Multiplied: `y = x Wᵀ + b`.
    Matmul,
    /// An embedding table whose rows are looked up by id (no input to quantize).
    Gather,
    /// A tied embedding: looked up at the start and multiplied as the LM head at the end.
    GatherAndMatmul,
}

impl Usage {
    /// Whether rows are looked up (its effect starts at the model's first layer).
    pub fn gathers(self) -> bool {
        self != Usage::Matmul
    }

    /// Whether it is multiplied (has an input, a runtime cost as a matmul).
    pub fn multiplies(self) -> bool {
        self != Usage::Gather
    }
}

/// A linear layer `y = x W^T + b` (or an embedding table, see [`Usage`]) whose weight can be
/// swapped and whose input can be observed.
pub struct QLinear {
    name: String,
    /// `(out_features, in_features)`; for an embedding `(rows, width)`.
    shape: (usize, usize),
    usage: Usage,
    /// The checkpoint's float weight; `None` for a layer loaded packed.
    float: Option<Tensor>,
    bias: Option<Tensor>,
    active: RwLock<(WeightSource, Weight)>,
    input_quant: RwLock<Option<ActivationQuant>>,
    observer: RwLock<Option<Arc<dyn ActivationObserver>>>,
}

impl QLinear {
    /// Wraps an f32 `[out, in]` weight named `name` (its checkpoint tensor name).
    pub fn new(name: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Self {
        let d = weight.dims();
        QLinear {
            name: name.into(),
            shape: (d[0], d.get(1).copied().unwrap_or(1)),
            usage: Usage::Matmul,
            active: RwLock::new((WeightSource::Float, Weight::Dense(weight.clone(), F32))),
            float: Some(weight),
            bias,
            input_quant: RwLock::new(None),
            observer: RwLock::new(None),
        }
    }

    /// A layer computing with `weight` as stored (integer codes through qpipe-kernels, GGUF
    /// blocks through candle's quantized matmul; float passthrough is expanded once), with its
    /// input quantized by `input_quant`: what a packed checkpoint loads into.
    pub fn packed(
        name: impl Into<String>,
        format: Format,
        shape: (usize, usize),
        weight: QuantizedTensor,
        bias: Option<Tensor>,
        input_quant: Option<ActivationQuant>,
    ) -> Result<Self> {
        let name = name.into();
        let context = || format!("{name}: {format}");
        let weight = match weight {
            QuantizedTensor::Int(q) => Weight::Packed(Arc::new(PackedWeight::Int(q))),
            QuantizedTensor::Gguf(q) => Weight::Packed(Arc::new(PackedWeight::Gguf(
                GgufMatrix::new(&q).map_err(|m| Error::invalid(Subject::tensor(&name), m))?,
            ))),
            q @ QuantizedTensor::Float(..) => {
                let values = q
                    .dequantize()
                    .map_err(|m| Error::invalid(Subject::tensor(&name), m))?;
                Weight::Dense(
                    Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
                        .map_err(Error::compute(context()))?,
                    format,
                )
            }
        };
        Ok(QLinear {
            shape,
            usage: Usage::Matmul,
            float: None,
            bias,
            active: RwLock::new((WeightSource::Packed(format), weight)),
            input_quant: RwLock::new(input_quant),
            observer: RwLock::new(None),
            name,
        })
    }

    /// The same weight used as `usage` says.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// How the model uses this weight.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The checkpoint name of the weight (e.g. `model.layers.0.self_attn.q_proj.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The checkpoint name of the bias, if the layer has one.
    pub fn bias_name(&self) -> Option<String> {
        self.bias.as_ref().map(|_| {
            format!(
                "{}.bias",
                self.name.strip_suffix(".weight").unwrap_or(&self.name)
            )
        })
    }

    /// `(out_features, in_features)`.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// The original float weight; an error for a layer loaded packed, which has none.
    pub fn float_weight(&self) -> candle_core::Result<&Tensor> {
        self.float.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{} was loaded packed; its float weight is not available",
                self.name
            ))
        })
    }

    /// What the layer currently computes with.
    pub fn source(&self) -> WeightSource {
        self.read_active().0.clone()
    }

    /// Makes the layer compute with `weight` (same shape as the float weight), labelled `source`.
    pub fn set_weight(&self, source: WeightSource, weight: Tensor) -> candle_core::Result<()> {
        if weight.dims() != [self.shape.0, self.shape.1] {
            candle_core::bail!(
                "{}: replacement weight has shape {:?}, expected {:?}",
                self.name,
                weight.dims(),
                self.shape
            );
        }
        let weight = weight.to_dtype(candle_core::DType::F32)?;
        let format = match &source {
            WeightSource::Fake(f) | WeightSource::Packed(f) => *f,
            WeightSource::Float => F32,
        };
        *self.active.write().unwrap_or_else(|e| e.into_inner()) =
            (source, Weight::Dense(weight, format));
        Ok(())
    }

    /// The layer's float weight, rescaled by `rescale`, stored in `format` and read back
    /// (calibrated by `cal`, optionally weighted by a per-input-channel `importance`, rounded
    /// by GPTQ with the input's factor `gptq` or else to nearest): what a forward pass sees.
    pub fn fake_weight(
        &self,
        format: Format,
        cal: Calibrator,
        importance: Option<&[f32]>,
        gptq: Option<&Factor>,
        rescale: Rescale<'_>,
    ) -> Result<Tensor> {
        let (rows, cols) = self.shape();
        let fake = crate::quant::fake_quantize(
            &self.rescaled_values(format, rescale)?,
            rows,
            cols,
            format,
            cal,
            importance,
            gptq,
        )
        .map_err(|m| Error::unsupported(Subject::tensor(&self.name), m))?;
        Tensor::from_vec(fake, (rows, cols), &candle_core::Device::Cpu)
            .map_err(Error::compute(format!("{}: {format}", self.name)))
    }

    /// The layer's float weight stored in `format` (packed codes, scales and zero-points),
    /// chosen as [`Self::fake_weight`] says.
    pub fn quantized(
        &self,
        format: Format,
        cal: Calibrator,
        importance: Option<&[f32]>,
        gptq: Option<&Factor>,
        rescale: Rescale<'_>,
    ) -> Result<QuantizedTensor> {
        let (rows, cols) = self.shape();
        crate::quant::quantize(
            &self.rescaled_values(format, rescale)?,
            rows,
            cols,
            format,
            cal,
            importance,
            gptq,
        )
        .map_err(|m| Error::unsupported(Subject::tensor(&self.name), m))
    }

    /// Row-major float weight values (errors name `format`, what they are for).
    pub fn float_values(&self, format: Format) -> Result<Vec<f32>> {
        self.float_weight()
            .and_then(|t| t.flatten_all()?.to_vec1())
            .map_err(Error::compute(format!("{}: {format}", self.name)))
    }

    /// [`Self::float_values`] rescaled.
    fn rescaled_values(&self, format: Format, rescale: Rescale<'_>) -> Result<Vec<f32>> {
        let mut values = self.float_values(format)?;
        rescale.apply(&mut values, self.shape.1);
        Ok(values)
    }

    /// Makes the layer compute with [`Self::fake_weight`].
    pub fn fake_quantize(
        &self,
        format: Format,
        cal: Calibrator,
        importance: Option<&[f32]>,
    ) -> Result<()> {
        let t = self.fake_weight(format, cal, importance, None, Rescale::NONE)?;
        self.set_weight(WeightSource::Fake(format), t)
            .map_err(Error::compute(format!("{}: {format}", self.name)))
    }

    /// Back to the float weight (a layer loaded packed stays packed).
    pub fn reset(&self) {
        if let Some(float) = &self.float {
            *self.active.write().unwrap_or_else(|e| e.into_inner()) =
                (WeightSource::Float, Weight::Dense(float.clone(), F32));
        }
    }

    /// Fake-quantizes this layer's input with `quant` from now on (`None`: float input).
    pub fn set_input_quant(&self, quant: Option<ActivationQuant>) {
        *self.input_quant.write().unwrap_or_else(|e| e.into_inner()) = quant;
    }

    /// The input quantizer in use, if any.
    pub fn input_quant(&self) -> Option<ActivationQuant> {
        *self.input_quant.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs (or with `None` removes) an observer of this layer's inputs.
    pub fn set_observer(&self, observer: Option<Arc<dyn ActivationObserver>>) {
        *self.observer.write().unwrap_or_else(|e| e.into_inner()) = observer;
    }

    /// The weight to compute with: `overrides`' where it has one, else the active one.
    fn weight_with(&self, overrides: Option<&dyn Overrides>) -> Weight {
        match overrides.and_then(|o| o.weight(&self.name)) {
            Some((w, format)) => Weight::Dense(w.clone(), format),
            None => self.read_active().1.clone(),
        }
    }

    fn read_active(&self) -> std::sync::RwLockReadGuard<'_, (WeightSource, Weight)> {
        self.active.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Module for QLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(x, None)
    }
}

impl QLinear {
    /// The forward pass, with this layer's weight and input quantizer taken from `overrides`
    /// where it has them. `x` is `[..., in]`; the matmul runs on the flattened `[tokens, in]`
    /// view.
    pub fn forward_with(
        &self,
        x: &Tensor,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let (out, inp) = self.shape();
        let (last, lead) = dims
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: scalar input", self.name)))?;
        if *last != inp {
            candle_core::bail!("{}: input has {last} features, weight has {inp}", self.name);
        }
        let x2 = x.reshape((lead.iter().product::<usize>(), inp))?;
        if let Some(obs) = self
            .observer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            obs.observe(&self.name, &x2)?;
        }
        // Observers see the float input (calibration); the matmul sees the rescaled and
        // quantized one.
        let x2 = match overrides.and_then(|o| o.input_scale(&self.name)) {
            Some(inv) => x2.broadcast_mul(inv)?,
            None => x2,
        };
        let quant = overrides
            .and_then(|o| o.input_quant(&self.name))
            .unwrap_or_else(|| self.input_quant());
        let x2 = match quant {
            Some(q) => q.apply(&x2)?,
            None => x2,
        };
        let mut y = match self.weight_with(overrides) {
            Weight::Dense(w, Format::Gguf(t)) => runtime_matmul(t, &x2, &w)?,
            Weight::Dense(w, _) => x2.matmul(&w.t()?)?,
            Weight::Packed(p) => match &*p {
                PackedWeight::Int(q) => packed_matmul(q, &x2)?,
                PackedWeight::Gguf(m) => m.matmul(&x2)?,
            },
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut shape = lead.to_vec();
        shape.push(out);
        y.reshape(shape)
    }
}

impl QLinear {
    /// Rows `ids` (u32, any shape) of the weight as an embedding table: `[..ids, width]` f32,
    /// from `overrides`' weight where it has one. A packed table dequantizes only those rows.
    pub fn gather(
        &self,
        ids: &Tensor,
        overrides: Option<&dyn Overrides>,
    ) -> candle_core::Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.shape.1);
        let flat = ids.flatten_all()?;
        let rows = match self.weight_with(overrides) {
            Weight::Dense(w, _) => w.index_select(&flat, 0)?,
            Weight::Packed(p) => {
                let ids: Vec<u32> = flat.to_vec1()?;
                let width = self.shape.1;
                let mut out = vec![0f32; ids.len() * width];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(width)) {
                    let r = id as usize;
                    if r >= self.shape.0 {
                        candle_core::bail!("{}: id {r} outside {} rows", self.name, self.shape.0);
                    }
                    match &*p {
                        PackedWeight::Int(q) => q
                            .with_kernel_view(|m| m.try_dequantize_row(r, row))
                            .map_err(candle_core::Error::Msg)?
                            .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
                        PackedWeight::Gguf(m) => m.dequantize_row(r, row)?,
                    }
                }
                Tensor::from_vec(out, (ids.len(), width), flat.device())?
            }
        };
        rows.reshape(shape)
    }
}

/// `x W^T` with `w` holding `t`'s values, the input rounded as llama.cpp's CPU kernels round
/// it for `t` (see [`gguf::round_input`]): what the packed weight computes, on a dense matmul.
fn runtime_matmul(
    t: crate::quant::GgufType,
    x: &Tensor,
    w: &Tensor,
) -> candle_core::Result<Tensor> {
    let cols = x.dim(1)?;
    let mut xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let err = gguf::round_input(t, &mut xs, cols);
    let y = Tensor::from_vec(xs, x.dims(), x.device())?.matmul(&w.t()?)?;
    match err {
        Some(e) => y + gguf::min_correction(w, e)?,
        None => Ok(y),
    }
}

/// `x W^T` for `x` `[tokens, in]` with W packed, on qpipe-kernels' GEMM.
fn packed_matmul(w: &IntQuantized, x: &Tensor) -> candle_core::Result<Tensor> {
    let tokens = x.dim(0)?;
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let mut y = vec![0f32; tokens * w.rows];
    w.with_kernel_view(|m| qpipe_kernels::gemm(m, &xs, tokens, &mut y))
        .map_err(candle_core::Error::Msg)?
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    Tensor::from_vec(y, (tokens, w.rows), x.device())
}

/// An observer that keeps every input it sees, per layer, in order (for tests and small runs).
#[derive(Default)]
pub struct Recorder {
    seen: std::sync::Mutex<Vec<(String, Tensor)>>,
}

impl Recorder {
    /// The recorded `(layer name, input)` pairs, in the order the forward pass produced them.
    pub fn take(&self) -> Vec<(String, Tensor)> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ActivationObserver for Recorder {
    fn observe(&self, linear: &str, input: &Tensor) -> candle_core::Result<()> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((linear.to_string(), input.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
