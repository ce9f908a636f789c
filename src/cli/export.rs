//! `qpipe export`: a packed checkpoint converted to a format a runtime loads.

use super::print;
use qpipe::export::onnx;
use qpipe::packed::Packed;
use qpipe::report::human_bytes;
use qpipe::Result;
use std::io::Write;
use std::path::PathBuf;

/// Formats `export` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// ONNX opset 21 with QuantizeLinear/DequantizeLinear (onnxruntime, QNN, TensorRT, OpenVINO).
    Onnx,
}

/// Encodings files `export` writes beside the model.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Encodings {
    /// AIMET's encodings JSON (Qualcomm QNN, AI Hub).
    Aimet,
}

/// Arguments of `qpipe export`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The packed checkpoint (model.qpipe.safetensors, or the directory holding it); a float
    /// model is exported unquantized (the reference to compare a quantized export with).
    packed: PathBuf,
    /// What to write.
    #[arg(long, value_enum)]
    format: Format,
    /// Output file (default: model.onnx beside the packed checkpoint).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write a quantization-encodings file beside it: aimet (AIMET's JSON, version 1.0.0,
    /// which Qualcomm's QNN converters and AI Hub read), as `--target hexagon` does.
    #[arg(long, value_enum)]
    encodings: Option<Encodings>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `qpipe export`.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<i32> {
    let packed = Packed::open_or_float(&args.packed)?;
    let written = match args.format {
        Format::Onnx => {
            let path = args
                .out
                .clone()
                .unwrap_or_else(|| packed.checkpoint.dir().join("model.onnx"));
            let encodings = args.encodings.map(|e| match e {
                Encodings::Aimet => onnx::EncodingsFormat::Aimet,
            });
            onnx::write(&packed, &path, onnx::Data::Auto, encodings)?
        }
    };
    if args.json {
        print(out, &super::json_text(&written)?)?;
        return Ok(0);
    }
    let mut text = format!(
        "wrote {} ({})\n",
        written.path.display(),
        human_bytes(written.file_bytes)
    );
    if let Some(e) = &written.encodings {
        text.push_str(&qpipe::pipeline::summary::encodings(e));
    }
    for w in &written.widened {
        text.push_str(&format!(
            "  {} ({}) stored as {}: ONNX has no narrower type\n",
            w.name, w.format, w.stored_as
        ));
    }
    print(out, &text)?;
    Ok(0)
}
