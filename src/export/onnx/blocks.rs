//! The building blocks both architectures' graphs share: weights from the packed checkpoint,
//! a layer's input through its quantizer, `x · Wᵀ + b`, attention heads and scaled-dot-product
//! attention with an additive mask.

use super::encodings::Collector;
use super::graph::{Attr, Graph};
use super::weights::{weight, Layout, Widened};
use crate::error::Result;
use crate::packed::Packed;
use crate::quant::ActivationQuant;
use onnx_protobuf::tensor_proto::DataType;
use std::collections::HashMap;

/// A graph under construction from a packed checkpoint.
pub struct Blocks<'a> {
    /// The graph.
    pub g: Graph,
    packed: &'a Packed,
    /// Weights stored wider than their format.
    pub widened: Vec<Widened>,
    /// The encodings of the quantized weights and inputs.
    pub encodings: Collector,
    /// Per tensor, its quantized copies read by matmuls: the quantizer and the QDQ's output.
    quantized: HashMap<String, Vec<(ActivationQuant, String)>>,
}

impl<'a> Blocks<'a> {
    /// A graph for `packed`, with the constants every block uses.
    pub fn new(packed: &'a Packed) -> Self {
        let mut g = Graph::default();
        for (name, axis) in [
            ("axis_0", 0),
            ("axis_1", 1),
            ("axis_2", 2),
            ("axis_3", 3),
            ("axes_last", -1),
        ] {
            g.i64s(name, &[axis]);
        }
        Blocks {
            g,
            packed,
            widened: Vec::new(),
            encodings: Collector::default(),
            quantized: HashMap::new(),
        }
    }

    /// The float value of the stored tensor `name` laid out as `layout`.
    pub fn weight(&mut self, name: &str, layout: Layout) -> Result<String> {
        weight(
            &mut self.g,
            self.packed,
            name,
            layout,
            &mut self.widened,
            &mut self.encodings,
        )
    }

    /// Whether the checkpoint stores `name`.
    pub fn has(&self, name: &str) -> bool {
        self.packed.checkpoint.get(name).is_some()
    }

    /// A scalar int64 constant.
    pub fn scalar_i64(&mut self, name: &str, v: i64) -> String {
        self.g
            .initializer(name, DataType::INT64, &[], v.to_le_bytes().to_vec())
    }

    /// `x` through the quantizer of the input of the weight `name`, when the target quantizes
    /// it: QuantizeLinear -> DequantizeLinear with the calibrated scale and zero-point.
    ///
    /// A converter that reads encodings by tensor name quantizes a tensor for all its readers,
    /// so the QDQ reads a copy of `x` read by nothing else, `{name}.input`: the residual that
    /// also reads a BERT layer's input stays float, as qpipe computes it. Readers of `x` with
    /// the same quantizer (q, k and v; gate and up) share the copy, its QDQ and its encoding.
    pub fn input(&mut self, x: &str, name: &str) -> String {
        let quant = self
            .packed
            .manifest
            .tensors
            .get(name)
            .and_then(|e| e.input_quant);
        let Some(q) = quant else {
            return x.to_string();
        };
        let copies = self.quantized.entry(x.to_string()).or_default();
        if let Some((_, dq)) = copies.iter().find(|(c, _)| *c == q) {
            return dq.clone();
        }
        let copy = self
            .g
            .op_named("Identity", &[x], vec![], &format!("{name}.input"));
        self.encodings.activation(&copy, q);
        let dq = self.qdq(&copy, name, q);
        self.quantized
            .entry(x.to_string())
            .or_default()
            .push((q, dq.clone()));
        dq
    }

    fn qdq(&mut self, x: &str, name: &str, q: ActivationQuant) -> String {
        let g = &mut self.g;
        let scale = g.f32s(&format!("{name}.input_scale"), &[], &[q.scale]);
        let (dtype, raw) = match (q.bits, q.symmetric) {
            (8, true) => (DataType::INT8, vec![0u8]),
            (8, false) => (DataType::UINT8, vec![q.zero as u8]),
            (_, true) => (DataType::INT16, vec![0u8; 2]),
            (_, false) => (DataType::UINT16, (q.zero as u16).to_le_bytes().to_vec()),
        };
        let zero = g.initializer(&format!("{name}.input_zero"), dtype, &[], raw);
        let quantized = g.op("QuantizeLinear", &[x, &scale, &zero], vec![], "q");
        g.op(
            "DequantizeLinear",
            &[&quantized, &scale, &zero],
            vec![],
            "dq",
        )
    }

    /// `x · Wᵀ (+ b)` for the weight `{prefix}.weight` (and its bias, if stored), its input
    /// quantized as the target does.
    pub fn linear(&mut self, x: &str, prefix: &str) -> Result<String> {
        let name = format!("{prefix}.weight");
        let x = self.input(x, &name);
        let w = self.weight(&name, Layout::Columns)?;
        let y = self.g.op("MatMul", &[&x, &w], vec![], "matmul");
        let bias = format!("{prefix}.bias");
        if !self.has(&bias) {
            return Ok(y);
        }
        let b = self.weight(&bias, Layout::Rows)?;
        Ok(self.g.op("Add", &[&y, &b], vec![], "biased"))
    }

    /// `[b, s, heads * hd]` -> `[b, heads, s, hd]`.
    pub fn heads(&mut self, x: &str, heads: usize, hd: usize) -> String {
        let shape = self
            .g
            .i64s(&format!("shape_{x}"), &[0, 0, heads as i64, hd as i64]);
        let r = self.g.op("Reshape", &[x, &shape], vec![], "split");
        self.g.op(
            "Transpose",
            &[&r],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
            "heads",
        )
    }

    /// softmax(q kᵀ / √hd + mask) v for heads `[b, h, s, hd]`, merged back to `[b, s, h·hd]`.
    pub fn attention(
        &mut self,
        q: &str,
        k: &str,
        v: &str,
        mask: &str,
        width: usize,
        hd: usize,
    ) -> String {
        let root = self
            .g
            .f32s(&format!("{q}_sqrt_hd"), &[], &[(hd as f64).sqrt() as f32]);
        let merged = self.g.i64s(&format!("{q}_merge"), &[0, 0, width as i64]);
        let g = &mut self.g;
        let kt = g.op(
            "Transpose",
            &[k],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
            "kt",
        );
        let qk = g.op("MatMul", &[q, &kt], vec![], "qk");
        let scaled = g.op("Div", &[&qk, &root], vec![], "scaled");
        let masked = g.op("Add", &[&scaled, mask], vec![], "masked");
        let probs = g.op(
            "Softmax",
            &[&masked],
            vec![("axis", Attr::Int(-1))],
            "probs",
        );
        let ctx = g.op("MatMul", &[&probs, v], vec![], "ctx");
        let ctx = g.op(
            "Transpose",
            &[&ctx],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
            "ctxt",
        );
        g.op("Reshape", &[&ctx, &merged], vec![], "attn")
    }
}
