"""The scoring half of scripts/check-onnx-ort.sh: MODEL.onnx against the float REFERENCE.onnx in
onnxruntime on windows of TEXT.

usage: onnx_score.py MODEL.onnx REFERENCE.onnx TEXT TOKENIZER.json SEQ MAX_TOKENS
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model, reference, text, tokenizer, seq, max_tokens = sys.argv[1:7]
seq, max_tokens = int(seq), int(max_tokens)

tok = Tokenizer.from_file(tokenizer)
tok.no_truncation()
tok.no_padding()
with open(text, encoding="utf-8") as f:
    ids = tok.encode(f.read(), add_special_tokens=False).ids
windows = len(ids[:max_tokens]) // seq
if windows == 0:
    sys.exit(f"error: {text}: fewer than {seq} tokens")
batch = np.array(ids[: windows * seq], dtype=np.int64).reshape(windows, seq)


def run(path, level):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"input_ids": batch}
    if "attention_mask" in [i.name for i in session.get_inputs()]:
        feed["attention_mask"] = np.ones_like(batch)
    names = [o.name for o in session.get_outputs()]
    name = "logits" if "logits" in names else "sentence_embedding"
    # One window at a time keeps the logits of a large vocabulary in bounded memory.
    return name, [session.run([name], {k: v[i : i + 1] for k, v in feed.items()})[0][0] for i in range(windows)]


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


name, float_out = run(reference, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
result = {"model": model, "text": text, "windows": windows, "seq_len": seq}
for label, level in [("graph", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC), ("onnxruntime_defaults", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)]:
    _, out = run(model, level)
    if name == "logits":
        kls = []
        for p, q in zip(float_out, out):
            lp, lq = log_softmax(p), log_softmax(q)
            kls.append((np.exp(lp) * (lp - lq)).sum(axis=-1))
        result[f"mean_kl_{label}"] = float(np.concatenate(kls).mean())
    else:
        cos = [float(np.dot(a, b)) for a, b in zip(float_out, out)]
        result[f"mean_one_minus_cos_{label}"] = float(1.0 - np.mean(cos))
result["tokens"] = windows * seq
print(json.dumps(result, indent=1))
