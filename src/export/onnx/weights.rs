//! Weights as ONNX initializers: a quantized weight's integer codes (INT4/UINT4 packed two per
//! byte, INT8/UINT8), its F16 scales (cast to float) and zero-points, and the DequantizeLinear
//! that turns them into the float matrix (`axis` for per-channel scales, `block_size` for
//! groups); float tensors in their stored dtype, cast to float. Widths ONNX has no type for
//! (2, 3, 5 and 6 bits) are widened losslessly to the next one, and said so.

use super::encodings::Collector;
use super::graph::{Attr, Graph};
use crate::error::{Error, Result};
use crate::packed::Packed;
use crate::quant::{Granularity, IntFormat, QuantizedTensor, Scheme};
use onnx_protobuf::tensor_proto::DataType;
use safetensors::Dtype;

/// How a weight is laid out for its use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// As stored, `[rows, cols]`: a table rows are gathered from.
    Rows,
    /// Transposed, `[cols, rows]`: the right operand of a MatMul (`x · Wᵀ`), scale blocks
    /// along the input axis (what runtimes fuse into int4 matmuls).
    Columns,
}

/// A weight stored in a wider ONNX integer type than its format's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Widened {
    /// The weight.
    pub name: String,
    /// Its format.
    pub format: String,
    /// The ONNX type its codes are stored as.
    pub stored_as: String,
}

/// The ONNX integer type of `f`'s codes: 4 bits for up to 4, else 8; signed when symmetric.
fn code_type(f: IntFormat) -> (DataType, u32) {
    let signed = f.scheme != Scheme::Asymmetric;
    match (f.bits <= 4, signed) {
        (true, true) => (DataType::INT4, 4),
        (true, false) => (DataType::UINT4, 4),
        (false, true) => (DataType::INT8, 8),
        (false, false) => (DataType::UINT8, 8),
    }
}

/// Raw bytes of 4- or 8-bit values (two's complement for signed), 4-bit ones two per byte,
/// the first in the low nibble.
fn raw(values: &[i16], bits: u32) -> Vec<u8> {
    if bits == 8 {
        return values.iter().map(|&v| v as u8).collect();
    }
    values
        .chunks(2)
        .map(|p| (p[0] as u8 & 0x0f) | (p.get(1).map_or(0, |&v| v as u8 & 0x0f) << 4))
        .collect()
}

/// `values` (row-major `[rows, cols]`) as `layout` lays them out.
fn arrange<T: Copy + Default>(values: &[T], rows: usize, cols: usize, layout: Layout) -> Vec<T> {
    match layout {
        Layout::Rows => values.to_vec(),
        Layout::Columns => {
            let mut out = vec![T::default(); values.len()];
            for r in 0..rows {
                for c in 0..cols {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
            out
        }
    }
}

/// The float value of the weight `name` of `packed` laid out as `layout`: its initializers and
/// the nodes that dequantize or cast it (a quantized weight's DequantizeLinear outputs the
/// tensor `name`). Widened integer formats are recorded in `widened`, the grid of every chosen
/// weight in `encodings`.
pub fn weight(
    g: &mut Graph,
    packed: &Packed,
    name: &str,
    layout: Layout,
    widened: &mut Vec<Widened>,
    encodings: &mut Collector,
) -> Result<String> {
    let file = packed.checkpoint.first_file();
    let Some(entry) = packed.manifest.tensors.get(name) else {
        return float_tensor(g, packed, name, layout);
    };
    let [rows, cols] = entry.shape;
    let dims = match layout {
        Layout::Rows => [rows, cols],
        Layout::Columns => [cols, rows],
    };
    match packed.weight(name)? {
        QuantizedTensor::Int(q) => {
            let f = q.format;
            let (dtype, bits) = code_type(f);
            if bits != f.bits {
                widened.push(Widened {
                    name: name.to_string(),
                    format: entry.format.to_string(),
                    stored_as: format!("{dtype:?}"),
                });
            }
            let mut codes = vec![0u8; rows * cols];
            let row_bytes = q.packed.len() / rows.max(1);
            for (r, out) in codes.chunks_exact_mut(cols).enumerate() {
                qpipe_kernels::unpack(&q.packed[r * row_bytes..(r + 1) * row_bytes], f.bits, out)
                    .map_err(|e| Error::invalid(file, format!("'{name}': {e}")))?;
            }
            let offset = if f.scheme == Scheme::Asymmetric {
                0
            } else {
                1i16 << (f.bits - 1)
            };
            let values: Vec<i16> = codes.iter().map(|&c| i16::from(c) - offset).collect();
            let codes = g.initializer(
                &format!("{name}.codes"),
                dtype,
                &dims,
                raw(&arrange(&values, rows, cols, layout), bits),
            );
            // Scales (and zero-points) per group, row-major [rows, groups]: laid out like the
            // codes, with the group axis where the codes' input axis is.
            let groups = match f.granularity {
                Granularity::Tensor => 0,
                gr => cols.div_ceil(gr.group_len(cols)),
            };
            let (scale_dims, attrs): (Vec<usize>, Vec<(&str, Attr)>) = match (f.granularity, layout)
            {
                (Granularity::Tensor, _) => (vec![], vec![]),
                (Granularity::Channel, Layout::Rows) => (vec![rows], vec![("axis", Attr::Int(0))]),
                (Granularity::Channel, Layout::Columns) => {
                    (vec![rows], vec![("axis", Attr::Int(1))])
                }
                (gr, Layout::Rows) => (
                    vec![rows, groups],
                    vec![
                        ("axis", Attr::Int(1)),
                        ("block_size", Attr::Int(gr.group_len(cols) as i64)),
                    ],
                ),
                (gr, Layout::Columns) => (
                    vec![groups, rows],
                    vec![
                        ("axis", Attr::Int(0)),
                        ("block_size", Attr::Int(gr.group_len(cols) as i64)),
                    ],
                ),
            };
            let per_group = |v: &[u8]| -> Vec<u8> {
                // `v` holds one element of `size` bytes per group, row-major [rows, groups].
                let size = v.len() / q.scales.len().max(1);
                match (f.granularity, layout) {
                    (Granularity::Group(_), Layout::Columns) => {
                        let items: Vec<&[u8]> = v.chunks_exact(size).collect();
                        arrange(&items, rows, groups, Layout::Columns).concat()
                    }
                    _ => v.to_vec(),
                }
            };
            let scale_bytes: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            let scales16 = g.initializer(
                &format!("{name}.scales"),
                DataType::FLOAT16,
                &scale_dims,
                per_group(&scale_bytes),
            );
            let scales = g.op(
                "Cast",
                &[&scales16],
                vec![("to", Attr::Int(DataType::FLOAT as i64))],
                "scale",
            );
            let mut inputs = vec![codes, scales];
            if f.scheme == Scheme::Asymmetric {
                let zeros: Vec<i16> = per_group(&q.zeros).iter().map(|&z| i16::from(z)).collect();
                inputs.push(g.initializer(
                    &format!("{name}.zeros"),
                    dtype,
                    &scale_dims,
                    raw(&zeros, bits),
                ));
            }
            encodings.weight(name, f, bits, cols, &q.scales, &q.zeros);
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            Ok(g.op_named("DequantizeLinear", &inputs, attrs, name))
        }
        QuantizedTensor::Float(t, bytes) => {
            let dtype = t.dtype();
            encodings.float_weight(
                name,
                match dtype {
                    Dtype::F16 => Some(16),
                    Dtype::F32 => Some(32),
                    _ => None,
                },
            );
            let raw = match layout {
                Layout::Rows => bytes,
                Layout::Columns => {
                    let items: Vec<&[u8]> = bytes.chunks_exact(dtype.bitsize() / 8).collect();
                    arrange(&items, rows, cols, layout).concat()
                }
            };
            Ok(cast(g, name, dtype, &dims, raw))
        }
        QuantizedTensor::Gguf(_) => Err(Error::unsupported(
            file,
            format!(
                "'{name}' is stored as {}, which ONNX has no operator for (the llama-cpp target writes GGUF)",
                entry.format
            ),
        )),
    }
}

/// A tensor outside the manifest (a norm's weight, a bias) as float, from its stored dtype.
fn float_tensor(g: &mut Graph, packed: &Packed, name: &str, layout: Layout) -> Result<String> {
    let view = packed.checkpoint.tensor(name)?;
    let shape: Vec<usize> = view.shape.to_vec();
    let (raw, dims) = match (layout, shape.as_slice()) {
        (Layout::Columns, &[rows, cols]) => {
            let items: Vec<&[u8]> = view.bytes.chunks_exact(view.dtype.bitsize() / 8).collect();
            (
                arrange(&items, rows, cols, layout).concat(),
                vec![cols, rows],
            )
        }
        _ => (view.bytes.to_vec(), shape),
    };
    Ok(cast(g, name, view.dtype, &dims, raw))
}

/// An initializer of a float `dtype`, cast to float unless it is f32 already.
fn cast(g: &mut Graph, name: &str, dtype: Dtype, dims: &[usize], raw: Vec<u8>) -> String {
    let (onnx, f32) = match dtype {
        Dtype::F16 => (DataType::FLOAT16, false),
        Dtype::BF16 => (DataType::BFLOAT16, false),
        _ => (DataType::FLOAT, true),
    };
    let init = g.initializer(name, onnx, dims, raw);
    if f32 {
        return init;
    }
    g.op(
        "Cast",
        &[&init],
        vec![("to", Attr::Int(DataType::FLOAT as i64))],
        "float",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_values_pack_low_nibble_first_and_tables_transpose() {
        assert_eq!(raw(&[-8, 7, 1], 4), vec![0x78, 0x01]);
        assert_eq!(raw(&[15, 0, 3, 12], 4), vec![0x0f, 0xc3]);
        assert_eq!(raw(&[-1, 200], 8), vec![0xff, 200]);
        assert_eq!(
            arrange(&[1, 2, 3, 4, 5, 6], 2, 3, Layout::Columns),
            vec![1, 4, 2, 5, 3, 6]
        );
    }
}
