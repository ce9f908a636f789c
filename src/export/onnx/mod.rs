//! ONNX export of a packed checkpoint: the model as a graph whose quantized weights are integer
//! initializers with DequantizeLinear (QDQ), and whose quantized inputs get a
//! QuantizeLinear -> DequantizeLinear pair: what Qualcomm's QNN converters, TensorRT, OpenVINO
//! and onnxruntime take. The graph computes what qpipe's own forward pass computes on the
//! packed weights (tests/suite/export_onnx.rs runs it in onnxruntime).

mod bert;
mod blocks;
mod graph;
mod llama;
pub mod weights;

use crate::checkpoint::write::write_atomic;
use crate::error::{Error, Result};
use crate::model::arch::{self, Family};
use crate::model::bert::BertConfig;
use crate::model::llama::LlamaConfig;
use crate::packed::Packed;
use onnx_protobuf::Message;
use serde::Serialize;
use std::path::{Path, PathBuf};
pub use weights::Widened;

/// The largest file protobuf can serialise in one message.
const PROTOBUF_LIMIT: usize = (2 << 30) - 1;

/// What [`write`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub file_bytes: u64,
    /// Bytes of the initializers (weights, scales, zero-points, norms).
    pub initializer_bytes: u64,
    /// Weights whose integer width ONNX has no type for, stored wider (losslessly).
    pub widened: Vec<Widened>,
}

/// Writes the model of `packed` to `path` as ONNX (opset 21), atomically.
pub fn write(packed: &Packed, path: &Path) -> Result<Written> {
    let found = arch::detect(&packed.checkpoint);
    let (graph, widened) = match found.family {
        Some(Family::Llama) => {
            let config: LlamaConfig = crate::model::weights::config(&packed.checkpoint)?;
            config.validate().map_err(|m| {
                Error::invalid(crate::model::weights::config_path(&packed.checkpoint), m)
            })?;
            llama::build(packed, &config)?
        }
        Some(Family::Bert) => {
            let config: BertConfig = crate::model::weights::config(&packed.checkpoint)?;
            let act = config.validate(&packed.checkpoint)?;
            bert::build(packed, &config, act)?
        }
        None => {
            return Err(Error::unsupported(
                packed.checkpoint.first_file(),
                format!(
                    "architecture '{}' has no ONNX builder (supported: the Llama family, BERT)",
                    found.name
                ),
            ))
        }
    };
    let initializer_bytes = graph.initializer_bytes() as u64;
    let model = graph.finish(
        "qpipe",
        &format!(
            "quantized by qpipe {} (seed {}); weights dequantized by DequantizeLinear",
            env!("CARGO_PKG_VERSION"),
            packed.manifest.provenance.seed
        ),
    );
    let bytes = model
        .write_to_bytes()
        .map_err(|e| Error::invalid(path, format!("cannot encode the ONNX model: {e}")))?;
    if bytes.len() > PROTOBUF_LIMIT {
        return Err(Error::unsupported(
            path,
            format!(
                "the model is {} bytes, past protobuf's 2 GB limit (external data is not written yet)",
                bytes.len()
            ),
        ));
    }
    write_atomic(path, &bytes)?;
    Ok(Written {
        path: path.to_path_buf(),
        file_bytes: bytes.len() as u64,
        initializer_bytes,
        widened,
    })
}
