//! GGUF's encoding: little-endian primitives, strings, metadata values and alignment padding,
//! written to a stream that counts its bytes (the writer's offsets must match what it wrote).

use super::writer::ALIGNMENT;
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use std::io::Write;
use std::path::Path;

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
