//! Reads and validates a GGUF file's header (v2 and v3, little-endian) from its bytes: the
//! metadata key/values (nested arrays included), every tensor's name, shape, ggml type and data
//! offset, the alignment and where the data section starts.
//!
//! [`read`] is safe on any input: every count and length is checked against the bytes that
//! remain before anything is allocated for it, offset and size arithmetic is checked, and array
//! nesting is bounded, so a lying or truncated header gives an error, never a panic or a huge
//! allocation. A header it accepts has unique metadata keys and tensor names, a
//! `general.alignment` (u32, a power of two; default 32) that every tensor offset is a multiple
//! of, and tensors of a known ggml type with 1 to 4 dimensions of at least one element, whole
//! blocks per row, and data that lies inside the file without overlapping another tensor's.
//! Strings (keys, names, values) must be UTF-8, as the format says.
//!
//! [`Header::to_content`] hands the checked header to candle, which reads and dequantizes the
//! tensor data.

use super::encode::{ggml_type, MAGIC};
use candle_core::quantized::gguf_file::{Content, TensorInfo as CandleInfo, Value, VersionedMagic};
use candle_core::quantized::GgmlDType;
use std::collections::HashSet;

/// `general.alignment` when the metadata does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays in a metadata value (an array of scalars is depth 1).
const MAX_DEPTH: usize = 16;

/// One tensor's entry in the header, checked against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Shape, outermost dimension first (GGUF stores them innermost first).
    pub shape: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlDType,
    /// Start of the data, in bytes from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub bytes: u64,
}

/// A GGUF file's header, checked against the file's bytes.
#[derive(Debug, Clone)]
pub struct Header {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/values in file order; keys are unique.
    pub metadata: Vec<(String, Value)>,
    /// Tensor infos in file order; names are unique.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or the default 32.
    pub alignment: u64,
    /// Offset in the file of the data section (the end of the header, aligned).
    pub data_start: u64,
}

impl Header {
    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The header as candle's `Content`, for candle to read tensor data from the same bytes.
    pub fn to_content(&self) -> Content {
        Content {
            magic: match self.version {
                2 => VersionedMagic::GgufV2,
                _ => VersionedMagic::GgufV3,
            },
            metadata: self.metadata.iter().cloned().collect(),
            tensor_infos: self
                .tensors
                .iter()
                .map(|t| {
                    let info = CandleInfo {
                        ggml_dtype: t.ggml_type,
                        shape: t.shape.clone().into(),
                        offset: t.offset,
                    };
                    (t.name.clone(), info)
                })
                .collect(),
            tensor_data_offset: self.data_start,
        }
    }
}

/// Reads and validates the GGUF header at the start of `bytes`, the whole file (tensor data is
/// checked to lie inside it). The error is one line saying what is wrong and where.
pub fn read(bytes: &[u8]) -> Result<Header, String> {
    let mut r = Reader { bytes, pos: 0 };
    if bytes.len() < 4 || r.u32()? != MAGIC {
        return Err("not a GGUF file: it does not start with the magic bytes 'GGUF'".into());
    }
    let version = r.u32().map_err(|e| format!("version: {e}"))?;
    if version != 2 && version != 3 {
        return Err(format!(
            "GGUF version {version} is not supported (supported: 2, 3)"
        ));
    }
    let tensor_count = r.u64().map_err(|e| format!("tensor count: {e}"))?;
    let kv_count = r.u64().map_err(|e| format!("metadata count: {e}"))?;
    // The least an entry takes: a metadata key/value a key length, a type and one byte; a
    // tensor info a name length, a dimension count, one dimension, a type and an offset.
    let least = kv_count
        .checked_mul(8 + 4 + 1)
        .and_then(|m| tensor_count.checked_mul(8 + 4 + 8 + 4 + 8)?.checked_add(m));
    if least.is_none_or(|n| n > r.remaining()) {
        return Err(format!(
            "the header declares {kv_count} metadata entries and {tensor_count} tensors, more \
             than the {} bytes after it can hold",
            r.remaining()
        ));
    }
    let metadata = read_metadata(&mut r, kv_count as usize)?;
    let alignment = alignment(&metadata)?;
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::new();
    for i in 0..tensor_count {
        let name = r
            .string()
            .map_err(|e| format!("tensor info {i} of {tensor_count}: name: {e}"))?;
        let t = read_tensor_info(&mut r, name, alignment)?;
        if !names.insert(t.name.clone()) {
            return Err(format!("tensor '{}' is listed twice", t.name));
        }
        tensors.push(t);
    }
    let data_start = (r.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or("the data section starts past the largest offset")?;
    check_extents(&tensors, data_start, bytes.len() as u64)?;
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

/// The metadata key/values, keys unique.
fn read_metadata(r: &mut Reader<'_>, count: usize) -> Result<Vec<(String, Value)>, String> {
    let mut metadata = Vec::with_capacity(count);
    let mut keys = HashSet::new();
    for i in 0..count {
        let key = r
            .string()
            .map_err(|e| format!("metadata entry {i} of {count}: key: {e}"))?;
        let value = r
            .u32()
            .and_then(|t| r.value(t, 0))
            .map_err(|e| format!("metadata '{key}': {e}"))?;
        if !keys.insert(key.clone()) {
            return Err(format!("metadata key '{key}' appears twice"));
        }
        metadata.push((key, value));
    }
    Ok(metadata)
}

/// `general.alignment`: a u32 power of two, 32 when absent.
fn alignment(metadata: &[(String, Value)]) -> Result<u64, String> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, Value::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some((_, v)) => Err(format!(
            "general.alignment is {v:?}, expected a u32 power of two"
        )),
    }
}

/// The rest of tensor `name`'s info: its shape, type and offset, checked on their own.
fn read_tensor_info(
    r: &mut Reader<'_>,
    name: String,
    alignment: u64,
) -> Result<TensorInfo, String> {
    let at = |e: String| format!("tensor '{name}': {e}");
    let n_dims = r.u32().map_err(at)?;
    if n_dims == 0 {
        return Err(at(format!(
            "no dimensions (a GGUF tensor has 1 to {MAX_DIMS})"
        )));
    }
    if n_dims as usize > MAX_DIMS {
        return Err(at(format!(
            "{n_dims} dimensions (a GGUF tensor has at most {MAX_DIMS})"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(r.u64().map_err(at)?);
    }
    let type_id = r.u32().map_err(at)?;
    let offset = r.u64().map_err(at)?;
    let ggml_type = ggml_type(type_id).ok_or_else(|| at(format!("unknown ggml type {type_id}")))?;
    // GGUF lists dimensions innermost first; ggml counts elements in i64.
    dims.reverse();
    if let Some(i) = dims.iter().position(|&d| d == 0) {
        return Err(at(format!("dimension {i} of {dims:?} is 0")));
    }
    let elements = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| at(format!("dimensions {dims:?} overflow the element count")))?;
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| at(format!("dimensions {dims:?} do not fit this machine")))?;
    let (block, size) = (ggml_type.block_size() as u64, ggml_type.type_size() as u64);
    let row = dims[dims.len() - 1];
    if row % block != 0 {
        return Err(at(format!(
            "rows of {row} elements are not a whole number of {ggml_type:?} blocks ({block} \
             elements)"
        )));
    }
    let bytes = (elements / block)
        .checked_mul(size)
        .ok_or_else(|| at(format!("dimensions {dims:?} overflow the data size")))?;
    if offset % alignment != 0 {
        return Err(at(format!(
            "data offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    Ok(TensorInfo {
        name,
        shape,
        ggml_type,
        offset,
        bytes,
    })
}

/// Every tensor's data lies inside the file and no two overlap.
fn check_extents(tensors: &[TensorInfo], data_start: u64, file_len: u64) -> Result<(), String> {
    let data_len = file_len.saturating_sub(data_start);
    let mut spans = Vec::with_capacity(tensors.len());
    for t in tensors {
        let end = t.offset.checked_add(t.bytes).filter(|&e| e <= data_len);
        let Some(end) = end else {
            return Err(format!(
                "tensor '{}': {} bytes at offset {} of the data section end past the end of \
                 the file ({} bytes of data from byte {data_start}): truncated?",
                t.name, t.bytes, t.offset, data_len
            ));
        };
        spans.push((t.offset, end, t.name.as_str()));
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((start_a, end_a, a), (start_b, end_b, b)) = (pair[0], pair[1]);
        if start_b < end_a {
            return Err(format!(
                "tensors '{a}' (bytes {start_a}..{end_a} of the data section) and '{b}' \
                 ({start_b}..{end_b}) overlap"
            ));
        }
    }
    Ok(())
}

/// The bytes of the file and a position in them; every read checks what remains.
struct Reader<'a> {
    /// The whole file.
    bytes: &'a [u8],
    /// The next byte to read.
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Bytes left after the position.
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// The next `n` bytes.
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {n} bytes needed at byte {}, the file has {}",
                self.pos,
                self.bytes.len()
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    /// A GGUF string: a u64 length and that many bytes of UTF-8.
    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        let at = self.pos;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("the string at byte {at} is not UTF-8"))
    }

    /// A metadata value of type id `type_id`, `depth` arrays deep.
    fn value(&mut self, type_id: u32, depth: usize) -> Result<Value, String> {
        Ok(match type_id {
            0 => Value::U8(u8::from_le_bytes(self.array()?)),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                [b] => return Err(format!("boolean byte {b} is neither 0 nor 1")),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_DEPTH}"));
                }
                let element = self.u32()?;
                let least = least_size(element)
                    .ok_or_else(|| format!("unknown array element type {element}"))?;
                let count = self.u64()?;
                if count
                    .checked_mul(least)
                    .is_none_or(|n| n > self.remaining())
                {
                    return Err(format!(
                        "an array of {count} elements of type {element} needs more than the \
                         {} bytes left",
                        self.remaining()
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for i in 0..count {
                    items.push(
                        self.value(element, depth + 1)
                            .map_err(|e| format!("element {i}: {e}"))?,
                    );
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }
}

/// The fewest bytes a value of type id `type_id` takes, `None` for an unknown type.
fn least_size(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 4 + 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
