//! A small builder over ONNX's protobuf messages (the `onnx-protobuf` crate, generated from the
//! official onnx.proto): nodes with fresh output names, initializers from raw little-endian
//! bytes, and the finished `ModelProto` at IR version 10, opset 21 (INT4/UINT4 tensors and
//! `block_size` on DequantizeLinear).

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::type_proto::{self, Value};
use onnx_protobuf::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The default domain's opset the graphs use.
pub const OPSET: i64 = 21;
/// The IR version opset 21 needs.
const IR_VERSION: i64 = 10;

/// A node attribute.
pub enum Attr {
    /// An integer.
    Int(i64),
    /// Integers.
    Ints(Vec<i64>),
    /// A float.
    Float(f32),
    /// A string.
    String(String),
}

/// A dimension of a graph input or output: fixed, or named (dynamic).
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size.
    Named(&'static str),
}

/// A graph being built.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    next: usize,
}

impl Graph {
    /// `op` on `inputs` (names; "" for an omitted optional input) with `attrs`; returns the
    /// name of its single output, `{hint}` made unique.
    pub fn op(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        hint: &str,
    ) -> String {
        let out = format!("{hint}_{}", self.next);
        self.next += 1;
        self.op_named(op, inputs, attrs, &out)
    }

    /// `op` on `inputs` with `attrs`, its single output named `out` (a tensor other files,
    /// such as the encodings, refer to by name); returns `out`.
    pub fn op_named(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        out: &str,
    ) -> String {
        let out = out.to_string();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.to_string(),
            attribute: attrs
                .into_iter()
                .map(|(name, a)| attribute(name, a))
                .collect(),
            ..Default::default()
        });
        out
    }

    /// An initializer `name` of `dtype` and `dims` from its raw little-endian bytes (INT4 and
    /// UINT4 packed two per byte, the first in the low nibble); returns `name`.
    pub fn initializer(
        &mut self,
        name: &str,
        dtype: DataType,
        dims: &[usize],
        raw: Vec<u8>,
    ) -> String {
        self.initializers.push(tensor(name, dtype, dims, raw));
        name.to_string()
    }

    /// An f32 initializer.
    pub fn f32s(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, DataType::FLOAT, dims, raw)
    }

    /// An i64 initializer.
    pub fn i64s(&mut self, name: &str, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, DataType::INT64, &[values.len()], raw)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DataType, dims: &[Dim]) {
        self.inputs.push(value_info(name, dtype, dims));
    }

    /// Declares `value` a graph output (renamed to `name` through an Identity).
    pub fn output(&mut self, value: &str, name: &str, dtype: DataType, dims: &[Dim]) {
        self.nodes.push(NodeProto {
            input: vec![value.to_string()],
            output: vec![name.to_string()],
            name: name.to_string(),
            op_type: "Identity".into(),
            ..Default::default()
        });
        self.outputs.push(value_info(name, dtype, dims));
    }

    /// Bytes of every initializer's data.
    pub fn initializer_bytes(&self) -> usize {
        self.initializers.iter().map(|t| t.raw_data.len()).sum()
    }

    /// The model holding the graph; initializers no node reads are left out.
    pub fn finish(mut self, name: &str, doc: &str) -> ModelProto {
        let read: std::collections::HashSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        let initializers = std::mem::take(&mut self.initializers)
            .into_iter()
            .filter(|t| read.contains(t.name.as_str()))
            .collect::<Vec<_>>();
        self.initializers = initializers;
        let graph = GraphProto {
            node: self.nodes,
            name: name.to_string(),
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        };
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
                ..Default::default()
            }],
            producer_name: "qpipe".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_string(),
            graph: Some(graph).into(),
            ..Default::default()
        }
    }
}

/// A tensor message.
fn tensor(name: &str, dtype: DataType, dims: &[usize], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dtype as i32,
        raw_data: raw,
        ..Default::default()
    }
}

fn attribute(name: &str, a: Attr) -> AttributeProto {
    let mut p = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    let t = match a {
        Attr::Int(i) => {
            p.i = i;
            AttributeType::INT
        }
        Attr::Ints(v) => {
            p.ints = v;
            AttributeType::INTS
        }
        Attr::Float(f) => {
            p.f = f;
            AttributeType::FLOAT
        }
        Attr::String(v) => {
            p.s = v.into_bytes();
            AttributeType::STRING
        }
    };
    p.type_ = t.into();
    p
}

fn value_info(name: &str, dtype: DataType, dims: &[Dim]) -> ValueInfoProto {
    let shape = TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::Fixed(v) => dimension::Value::DimValue(*v),
                    Dim::Named(n) => dimension::Value::DimParam(n.to_string()),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    ValueInfoProto {
        name: name.to_string(),
        type_: Some(TypeProto {
            value: Some(Value::TensorType(type_proto::Tensor {
                elem_type: dtype as i32,
                shape: Some(shape).into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}
