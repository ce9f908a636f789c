//! Parses one safetensors header with the safetensors crate, and explains its errors precisely.
//!
//! The crate is the authority on validity; when it rejects a file, [`diagnose`] re-reads the header
//! as plain JSON to name the tensor, offsets and byte counts involved, since the crate's own
//! errors (e.g. `TensorInvalidInfo`) do not say which tensor is wrong.

use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

/// A parsed header: where the data section starts, and the crate's validated metadata.
pub(crate) struct Header {
    /// Byte offset of the data section in the file (8 + header length).
    pub data_start: usize,
    /// Tensor infos, validated: contiguous, in bounds, sizes matching shape x dtype.
    pub metadata: Metadata,
}

/// Parses and validates the header of a whole safetensors file held in `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Result<Header, String> {
    match SafeTensors::read_metadata(bytes) {
        Ok((n, metadata)) => Ok(Header {
            data_start: 8 + n,
            metadata,
        }),
        Err(err) => {
            Err(diagnose(bytes).unwrap_or_else(|| format!("invalid safetensors file: {err}")))
        }
    }
}

struct Entry {
    name: String,
    start: usize,
    end: usize,
}

/// Names the first concrete problem in a header the crate rejected, if it can find one.
fn diagnose(bytes: &[u8]) -> Option<String> {
    let len = bytes.len();
    if bytes.starts_with(b"GGUF") {
        return Some(
            "this is a GGUF file, not safetensors (qpipe reads safetensors checkpoints)".into(),
        );
    }
    let Some(prefix) = bytes.get(..8) else {
        return Some(format!(
            "file is {len} bytes, too short for a safetensors header (8-byte length prefix)"
        ));
    };
    let n = u64::from_le_bytes(prefix.try_into().ok()?);
    if n > (len - 8) as u64 {
        return Some(format!(
            "header length {n} points past the end of the file ({len} bytes): truncated or not a safetensors file"
        ));
    }
    let header = &bytes[8..8 + n as usize];
    let text = match std::str::from_utf8(header) {
        Ok(t) => t,
        Err(e) => return Some(format!("header is not valid UTF-8: {e}")),
    };
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return Some(format!("header is not valid JSON: {e}")),
    };
    let Some(object) = json.as_object() else {
        return Some("header JSON is not an object".into());
    };
    let data_len = len - 8 - n as usize;
    let mut entries = Vec::new();
    for (name, info) in object {
        if name == "__metadata__" {
            if let Err(e) =
                serde_json::from_value::<std::collections::HashMap<String, String>>(info.clone())
            {
                return Some(format!("__metadata__ must map strings to strings: {e}"));
            }
            continue;
        }
        match check_entry(name, info, data_len) {
            Ok(entry) => entries.push(entry),
            Err(msg) => return Some(format!("tensor '{name}': {msg}")),
        }
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut cursor = 0usize;
    let mut previous: Option<&Entry> = None;
    for entry in &entries {
        if entry.start < cursor {
            let prev = previous.map(|p| p.name.as_str()).unwrap_or("?");
            return Some(format!(
                "tensors '{prev}' and '{}' overlap (byte {} is claimed by both)",
                entry.name, entry.start
            ));
        }
        if entry.start > cursor {
            return Some(format!(
                "{} unclaimed bytes before tensor '{}' at data offset {cursor}",
                entry.start - cursor,
                entry.name
            ));
        }
        cursor = entry.end;
        previous = Some(entry);
    }
    if cursor != data_len {
        return Some(format!(
            "{} trailing bytes after the last tensor (data section is {data_len} bytes, tensors end at {cursor})",
            data_len - cursor
        ));
    }
    None
}

fn check_entry(name: &str, info: &serde_json::Value, data_len: usize) -> Result<Entry, String> {
    let dtype_str = info
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or("missing or non-string \"dtype\"")?;
    let dtype: Dtype = serde_json::from_value(serde_json::Value::String(dtype_str.into()))
        .map_err(|_| format!("unsupported dtype '{dtype_str}'"))?;
    let shape: Vec<usize> = info
        .get("shape")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .ok_or("missing or invalid \"shape\" (expected a list of non-negative integers)")?;
    let (start, end): (usize, usize) = info
        .get("data_offsets")
        .and_then(|o| serde_json::from_value(o.clone()).ok())
        .ok_or("missing or invalid \"data_offsets\" (expected [start, end])")?;
    if end < start {
        return Err(format!(
            "data_offsets [{start}, {end}] end before they start"
        ));
    }
    if end > data_len {
        return Err(format!(
            "data_offsets [{start}, {end}] run past the end of the data section ({data_len} bytes): file truncated?"
        ));
    }
    let bits = shape
        .iter()
        .try_fold(dtype.bitsize(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let expected = bits.div_ceil(8);
    if expected != end - start {
        return Err(format!(
            "shape {shape:?} of {dtype:?} needs {expected} bytes but data_offsets [{start}, {end}] span {}",
            end - start
        ));
    }
    Ok(Entry {
        name: name.to_string(),
        start,
        end,
    })
}
