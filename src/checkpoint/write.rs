//! Writes safetensors files lazily and atomically (one tensor's bytes in memory at a time).
//!
//! safetensors 0.8's `serialize_to_file` already writes to a sibling temp file and renames it
//! over the target, so an interrupted or failed write never leaves a partial file behind.

use crate::error::{Error, Result};
use safetensors::tensor::View;
use safetensors::Dtype;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// A tensor whose bytes are produced only when the writer reaches it.
pub struct LazyTensor<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    produce: Box<dyn Fn() -> Vec<u8> + Send + Sync + 'a>,
}

impl<'a> LazyTensor<'a> {
    /// A tensor of `dtype` and `shape` whose little-endian bytes `produce` returns on demand.
    pub fn new(
        dtype: Dtype,
        shape: Vec<usize>,
        produce: impl Fn() -> Vec<u8> + Send + Sync + 'a,
    ) -> Self {
        LazyTensor {
            dtype,
            shape,
            produce: Box::new(produce),
        }
    }

    /// An f32 tensor whose values `produce` returns on demand.
    pub fn f32(shape: Vec<usize>, produce: impl Fn() -> Vec<f32> + Send + Sync + 'a) -> Self {
        Self::new(Dtype::F32, shape, move || {
            produce().iter().flat_map(|v| v.to_le_bytes()).collect()
        })
    }
}

impl View for &LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = (self.produce)();
        // A producer returning the wrong length would corrupt every offset after it.
        assert_eq!(
            bytes.len(),
            self.data_len(),
            "LazyTensor produced the wrong byte count"
        );
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// Writes `tensors` (and string `metadata`) to `path` atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, LazyTensor<'_>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = tensors.iter().map(|(name, t)| (name.as_str(), t));
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(source) => Error::Io {
            path: path.to_path_buf(),
            source,
        },
        other => Error::invalid(path, format!("cannot write safetensors: {other}")),
    })
}
