"""Checks a qpipe ONNX export's encodings file with AIMET itself.

usage: aimet_check.py MODEL.onnx MODEL.encodings

AIMET's workflow hands Qualcomm's converters a float model plus an encodings file. This script
makes that float model from qpipe's QDQ graph (every weight's DequantizeLinear replaced by its
float values, every input's QuantizeLinear -> DequantizeLinear pair removed, F16 tensors as
F32), lets aimet_onnx.quantsim.encodings_to_onnx_qdq (AIMET's own reader: it validates the file
and puts a QDQ on every tensor it names) rebuild a quantized model from the float model and the
encodings, and runs both in onnxruntime on the same random token windows. If the encodings carry
qpipe's grids, AIMET's model computes what qpipe's graph computes. Prints one JSON object and
exits 1 if the two differ by more than 1e-5 of the largest output.
"""
import json
import logging
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from aimet_onnx._encoding import EncodingBase
from aimet_onnx.quantsim import _flatten_encodings, encodings_to_onnx_qdq

logging.getLogger("Quant").setLevel(logging.WARNING)

model_path, encodings_path = sys.argv[1], sys.argv[2]
qdq = onnx.load(model_path)
encodings = json.load(open(encodings_path))
weights = {e["name"] for e in encodings["param_encodings"] if e["dtype"] == "INT"}
inputs = {e["name"] for e in encodings["activation_encodings"]}


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    # The graph as written: constant folding only, no QDQ fusions.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def feed(model, rng):
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and "input_ids" in n.input)
    table = next(t for t in model.graph.initializer if t.name == gather.input[0])
    ids = rng.integers(0, table.dims[0], size=(2, 48), dtype=np.int64)
    names = [i.name for i in model.graph.input]
    return {n: ids if n == "input_ids" else np.ones_like(ids) for n in names}


# The float values of the quantized weights, as qpipe's graph dequantizes them.
probe = onnx.ModelProto()
probe.CopyFrom(qdq)
del probe.graph.output[:]
probe.graph.output.extend(helper.make_tensor_value_info(w, onnx.TensorProto.FLOAT, None) for w in sorted(weights))
dummy = {i.name: np.zeros((1, 1), dtype=np.int64) for i in qdq.graph.input}
values = dict(zip(sorted(weights), session(probe).run(None, dummy)))

# The float model: weights as F32 initializers, input QDQ pairs removed, F16 casts folded.
graph = qdq.graph
init = {t.name: t for t in graph.initializer}
rename = {}
nodes = []
new_inits = [numpy_helper.from_array(v.astype(np.float32), w) for w, v in values.items()]
for n in graph.node:
    if n.op_type == "DequantizeLinear" and n.output[0] in weights:
        continue
    if n.op_type == "QuantizeLinear" and n.input[0] in inputs:
        continue
    if n.op_type == "DequantizeLinear" and any(
        m.op_type == "QuantizeLinear" and m.output[0] == n.input[0] and m.input[0] in inputs for m in graph.node
    ):
        q = next(m for m in graph.node if m.output[0] == n.input[0])
        rename[n.output[0]] = q.input[0]
        continue
    if n.op_type == "Cast" and n.input[0] in init and init[n.input[0]].data_type == onnx.TensorProto.FLOAT16:
        value = numpy_helper.to_array(init[n.input[0]]).astype(np.float32)
        new_inits.append(numpy_helper.from_array(value, n.output[0]))
        continue
    copy = onnx.NodeProto()
    copy.CopyFrom(n)
    nodes.append(copy)
for n in nodes:
    for i, name in enumerate(n.input):
        n.input[i] = rename.get(name, name)
read = {i for n in nodes for i in n.input}
kept = [t for t in graph.initializer if t.name in read and t.data_type != onnx.TensorProto.FLOAT16]
# AIMET's reader finds a weight's channel axis from the op reading it, so a weight read by two
# kinds of op (a tied table: Gather and the head's Gemm) must come as one copy per reader, as
# aimet_onnx.utils.duplicate_shared_initializers makes them; each copy gets the weight's encoding.
readers = {}
for n in nodes:
    for i, name in enumerate(n.input):
        if name in values:
            readers.setdefault(name, []).append((n, i))
for name, uses in readers.items():
    for k, (n, i) in enumerate(uses[1:], start=1):
        copy = f"{name}.reader{k}"
        n.input[i] = copy
        new_inits.append(numpy_helper.from_array(values[name].astype(np.float32), copy))
        entry = next(e for e in encodings["param_encodings"] if e["name"] == name)
        encodings["param_encodings"].append({**entry, "name": copy})
float_graph = helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output), kept + new_inits)
float_model = helper.make_model(float_graph, opset_imports=list(qdq.opset_import), ir_version=qdq.ir_version)
onnx.checker.check_model(float_model, full_check=True)

# AIMET's file check, then its parser of every 1.0.0 entry. A 1.0.0 entry does not say which
# axis is the channel's and which the blocks', so AIMET takes them from the op reading the
# weight, as its QuantizationSimModel does: MatMul's right operand [in, out] has channels on
# axis 1 and blocks on axis 0; a gathered table or Gemm(transB) operand [out, in] the reverse.
_flatten_encodings(encodings)
axes = {}
for n in nodes:
    for i, name in enumerate(n.input):
        if n.op_type == "MatMul" and i == 1:
            axes[name] = (1, 0)
        elif (n.op_type == "Gather" and i == 0) or (n.op_type == "Gemm" and i == 1):
            axes[name] = (0, 1)
dims = {t.name: tuple(t.dims) for t in new_inits}
converted = []
for e in encodings["activation_encodings"] + encodings["param_encodings"]:
    channel, block = axes.get(e["name"], (None, None))
    parsed = EncodingBase.from_qnn_encoding_dict(
        e,
        input_shape=dims.get(e["name"]),
        default_channel_axis=channel if e["enc_type"] != "PER_TENSOR" else None,
        default_block_axis=block if e["enc_type"] == "PER_BLOCK" else None,
    )
    as_2_0_0 = parsed.to_qnn_encoding_dict("2.0.0")
    if as_2_0_0:
        converted.append({**as_2_0_0, "name": e["name"]})
rebuilt = encodings_to_onnx_qdq(float_model, {"version": "2.0.0", "encodings": converted}, prequantize_constants=True)
rng = np.random.default_rng(0)
x = feed(float_model, rng)
ours, theirs, unquantized_inputs = (session(m).run(None, x)[0] for m in (qdq, rebuilt, float_model))
scale = float(np.abs(ours).max())
diff = float(np.abs(ours - theirs).max()) / scale
report = {
    "weights": len(weights),
    "inputs": len(inputs),
    "aimet_qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in rebuilt.graph.node),
    "max_abs_diff_vs_aimet": diff,
    "max_abs_diff_vs_float_inputs": float(np.abs(ours - unquantized_inputs).max()) / scale,
}
print(json.dumps(report, indent=1))
sys.exit(0 if diff <= 1e-5 else 1)
