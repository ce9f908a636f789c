//! GGUF's encoding: little-endian primitives, strings, metadata values and alignment padding,
//! written to a stream that counts its bytes (the writer's offsets must match what it wrote);
//! and the numbers the writer and the reader share: the magic and the ggml type ids.

use super::writer::ALIGNMENT;
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use std::io::Write;
use std::path::Path;

/// GGUF's magic number, `GGUF` read as a little-endian u32.
pub(super) const MAGIC: u32 = 0x4655_4747;

/// The ggml storage types qpipe reads and writes, with their ids (`enum ggml_type`): the ones
/// candle implements.
const GGML_TYPES: [(u32, GgmlDType); 15] = [
    (0, GgmlDType::F32),
    (1, GgmlDType::F16),
    (2, GgmlDType::Q4_0),
    (3, GgmlDType::Q4_1),
    (6, GgmlDType::Q5_0),
    (7, GgmlDType::Q5_1),
    (8, GgmlDType::Q8_0),
    (9, GgmlDType::Q8_1),
    (10, GgmlDType::Q2K),
    (11, GgmlDType::Q3K),
    (12, GgmlDType::Q4K),
    (13, GgmlDType::Q5K),
    (14, GgmlDType::Q6K),
    (15, GgmlDType::Q8K),
    (30, GgmlDType::BF16),
];

/// The ggml type with id `id`, `None` for one qpipe does not know.
pub(super) fn ggml_type(id: u32) -> Option<GgmlDType> {
    GGML_TYPES.iter().find(|(i, _)| *i == id).map(|(_, t)| *t)
}

/// ggml's id of type `t`.
pub(super) fn ggml_type_id(t: GgmlDType) -> u32 {
    GGML_TYPES
        .iter()
        .find(|(_, known)| *known == t)
        .map_or(0, |(id, _)| *id)
}

/// The output stream: little-endian GGUF primitives, counting bytes for the padding.
pub(super) struct Sink<'a> {
    /// The stream.
    pub(super) out: &'a mut dyn Write,
    /// The temp file it writes (named in errors).
    pub(super) tmp: &'a Path,
    /// Bytes written so far.
    pub(super) pos: u64,
}

impl Sink<'_> {
    pub(super) fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(Error::io(self.tmp))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    pub(super) fn u32(&mut self, v: u32) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub(super) fn u64(&mut self, v: u64) -> Result<()> {
        self.bytes(&v.to_le_bytes())
    }

    pub(super) fn string(&mut self, s: &str) -> Result<()> {
        self.u64(s.len() as u64)?;
        self.bytes(s.as_bytes())
    }

    /// Zeros up to the next multiple of the alignment.
    pub(super) fn pad(&mut self) -> Result<()> {
        let n = self.pos.next_multiple_of(ALIGNMENT) - self.pos;
        self.bytes(&vec![0u8; n as usize])
    }

    /// A metadata value: a key's value is preceded by its type id, an array element is not
    /// (the array states its element type once).
    pub(super) fn value(&mut self, key: &str, v: &Value, place: Place) -> Result<()> {
        if place == Place::KeyValue {
            self.u32(value_type_id(v))?;
        }
        match v {
            Value::U8(x) => self.bytes(&x.to_le_bytes()),
            Value::I8(x) => self.bytes(&x.to_le_bytes()),
            Value::U16(x) => self.bytes(&x.to_le_bytes()),
            Value::I16(x) => self.bytes(&x.to_le_bytes()),
            Value::U32(x) => self.bytes(&x.to_le_bytes()),
            Value::I32(x) => self.bytes(&x.to_le_bytes()),
            Value::U64(x) => self.bytes(&x.to_le_bytes()),
            Value::I64(x) => self.bytes(&x.to_le_bytes()),
            Value::F32(x) => self.bytes(&x.to_le_bytes()),
            Value::F64(x) => self.bytes(&x.to_le_bytes()),
            Value::Bool(x) => self.bytes(&[u8::from(*x)]),
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                let element = items.first().map_or(4, value_type_id);
                if items.iter().any(|i| value_type_id(i) != element) {
                    return Err(Error::invalid(
                        self.tmp,
                        format!("metadata {key}: array elements of mixed types"),
                    ));
                }
                self.u32(element)?;
                self.u64(items.len() as u64)?;
                items
                    .iter()
                    .try_for_each(|i| self.value(key, i, Place::Element))
            }
        }
    }
}

/// Where a metadata value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// As the value of a key (with its type id).
    KeyValue,
    /// As an element of an array (without).
    Element,
}

/// GGUF's metadata value type id (`enum gguf_type`).
fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}
