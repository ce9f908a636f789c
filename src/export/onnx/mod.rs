//! ONNX export of a packed checkpoint: the model as a graph whose quantized weights are integer
//! initializers with DequantizeLinear (QDQ), and whose quantized inputs get a
//! QuantizeLinear -> DequantizeLinear pair: what Qualcomm's QNN converters, TensorRT, OpenVINO
//! and onnxruntime take. The graph computes what qpipe's own forward pass computes on the
//! packed weights (tests/suite/export_onnx.rs runs it in onnxruntime).

mod bert;
mod blocks;
pub mod encodings;
mod graph;
mod llama;
pub mod weights;

use crate::checkpoint::write::{atomically, check_writable_file, write_atomic};
use crate::error::{Error, Result};
pub use crate::hardware::EncodingsFormat;
use crate::model::arch::{self, Family};
use crate::model::bert::BertConfig;
use crate::model::llama::LlamaConfig;
use crate::packed::Packed;
use onnx_protobuf::Message;
use serde::Serialize;
use std::path::{Path, PathBuf};
pub use weights::Widened;

/// The largest file protobuf can serialise in one message.
const PROTOBUF_LIMIT: u64 = (2 << 30) - 1;
/// Initializers at least this large go to the external data file when there is one.
const EXTERNAL_MIN_BYTES: usize = 1024;
/// Alignment of each tensor in the external data file.
const EXTERNAL_ALIGN: u64 = 64;

/// Where the initializers' bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// In the model file while it fits protobuf's 2 GB limit, else as external data.
    Auto,
    /// As ONNX external data in `<file>.data` beside the model (every initializer of 1 KB or
    /// more), whatever the size.
    External,
}

/// What [`write`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// The model file.
    pub path: PathBuf,
    /// Its external data file, if the initializers went there.
    pub data_path: Option<PathBuf>,
    /// Bytes of the model file and its data file together (what ships).
    pub file_bytes: u64,
    /// Bytes of the initializers (weights, scales, zero-points, norms).
    pub initializer_bytes: u64,
    /// Weights whose integer width ONNX has no type for, stored wider (losslessly).
    pub widened: Vec<Widened>,
    /// The encodings file written beside it.
    pub encodings: Option<encodings::Written>,
}

/// Writes the model of `packed` to `path` as ONNX (opset 21), atomically, its initializers
/// where `data` says, and with `encodings` an encodings file of that format beside it
/// (`model.encodings` for `model.onnx`). A failure leaves neither file.
pub fn write(
    packed: &Packed,
    path: &Path,
    data: Data,
    encodings: Option<EncodingsFormat>,
) -> Result<Written> {
    check_writable_file(path)?;
    let found = arch::detect(&packed.checkpoint);
    let built = match found.family {
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
    let (graph, widened, collected) = (built.g, built.widened, built.encodings);
    let initializer_bytes = graph.initializer_bytes() as u64;
    let model = graph.finish(
        "qpipe",
        &format!(
            "quantized by qpipe {} (seed {}); weights dequantized by DequantizeLinear",
            env!("CARGO_PKG_VERSION"),
            packed.manifest.provenance.seed
        ),
    );
    let mut model = model;
    let external = data == Data::External || model.compute_size() > PROTOBUF_LIMIT;
    let data_path = external.then(|| {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".data");
        path.with_file_name(name)
    });
    let encodings = match encodings {
        Some(EncodingsFormat::Aimet) => Some(collected.write(&path.with_extension("encodings"))?),
        None => None,
    };
    // Whatever fails from here on removes what was written so far.
    let remove_companions = |data_path: Option<&PathBuf>| {
        for p in data_path
            .into_iter()
            .chain(encodings.as_ref().map(|e| &e.path))
        {
            let _ = std::fs::remove_file(p);
        }
    };
    let mut data_bytes = 0;
    if let Some(data_path) = &data_path {
        match write_external(&mut model, data_path) {
            Ok(n) => data_bytes = n,
            Err(e) => {
                remove_companions(None);
                return Err(e);
            }
        }
    }
    let encoded = model.write_to_bytes();
    let written = encoded
        .map_err(|e| Error::invalid(path, format!("cannot encode the ONNX model: {e}")))
        .and_then(|bytes| {
            if bytes.len() as u64 > PROTOBUF_LIMIT {
                return Err(Error::unsupported(
                    path,
                    format!(
                        "the graph alone is {} bytes, past protobuf's 2 GB limit",
                        bytes.len()
                    ),
                ));
            }
            write_atomic(path, &bytes).map(|()| bytes.len() as u64)
        });
    let model_bytes = match written {
        Ok(n) => n,
        Err(e) => {
            // No model file refers to the data or encodings file: leave nothing behind.
            remove_companions(data_path.as_ref());
            return Err(e);
        }
    };
    Ok(Written {
        path: path.to_path_buf(),
        data_path,
        file_bytes: model_bytes + data_bytes,
        initializer_bytes,
        widened,
        encodings,
    })
}

/// Moves the bytes of `model`'s initializers of at least [`EXTERNAL_MIN_BYTES`] into
/// `data_path` (atomically; each at a 64-byte aligned offset) and points them there, as ONNX's
/// external data; returns the data file's size.
fn write_external(model: &mut onnx_protobuf::ModelProto, data_path: &Path) -> Result<u64> {
    use onnx_protobuf::tensor_proto::DataLocation;
    use onnx_protobuf::StringStringEntryProto;
    let location = data_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let graph = model.graph.mut_or_insert_default();
    let mut offset = 0u64;
    atomically(data_path, |out, tmp| {
        for t in graph
            .initializer
            .iter_mut()
            .filter(|t| t.raw_data.len() >= EXTERNAL_MIN_BYTES)
        {
            let start = offset.next_multiple_of(EXTERNAL_ALIGN);
            out.write_all(&vec![0u8; (start - offset) as usize])
                .and_then(|()| out.write_all(&t.raw_data))
                .map_err(Error::io(tmp))?;
            let length = t.raw_data.len() as u64;
            offset = start + length;
            let entry = |key: &str, value: String| StringStringEntryProto {
                key: key.into(),
                value,
                ..Default::default()
            };
            t.external_data = vec![
                entry("location", location.clone()),
                entry("offset", start.to_string()),
                entry("length", length.to_string()),
            ];
            t.data_location = DataLocation::EXTERNAL.into();
            t.raw_data = Vec::new();
        }
        Ok(())
    })?;
    Ok(offset)
}
