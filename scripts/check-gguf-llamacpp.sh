#!/usr/bin/env bash
# Scores a GGUF file with llama.cpp's own inference (through the pinned llama-cpp-python), so a
# `qpipe` GGUF export is checked by the program it is meant for, not by qpipe's reader.
#
#   scripts/check-gguf-llamacpp.sh MODEL.gguf TEXT [REFERENCE]
#
# Prints one JSON object: tokens scored, perplexity of MODEL on TEXT and, when REFERENCE is given
# (a reference .gguf, e.g. an F32 export, or a .npy of reference logits [tokens, vocab] in the
# same window order), the mean and 99th-percentile KL(reference || MODEL) of the next-token
# distributions. Text is cut into windows of CTX tokens (default 128, env CTX); every position
# after a window's first is scored; at most MAX_TOKENS tokens (default 16384) are used.
#
# The first run creates models/llama-cpp-venv and installs llama-cpp-python there, which compiles
# llama.cpp from source (several minutes; set CMAKE_BUILD_PARALLEL_LEVEL to use more cores).
# Later runs reuse it. `--install-only` just does the install. Not part of default CI.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON="llama-cpp-python==0.3.36"
NUMPY="numpy==2.2.6"
VENV=models/llama-cpp-venv

install() {
  if [ -f "$VENV/.installed" ] && [ "$(cat "$VENV/.installed")" = "$LLAMA_CPP_PYTHON $NUMPY" ]; then
    return
  fi
  echo "installing $LLAMA_CPP_PYTHON into $VENV (compiles llama.cpp; this takes a while)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$NUMPY" "$LLAMA_CPP_PYTHON" >&2
  echo "$LLAMA_CPP_PYTHON $NUMPY" >"$VENV/.installed"
}

if [ "${1:-}" = "--install-only" ]; then
  install
  exit 0
fi
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 MODEL.gguf TEXT [REFERENCE.gguf|REFERENCE_LOGITS.npy]   or   $0 --install-only" >&2
  exit 2
fi
for f in "$1" "$2" ${3:+"$3"}; do
  [ -f "$f" ] || { echo "error: $f: no such file" >&2; exit 2; }
done
install

CTX="${CTX:-128}" MAX_TOKENS="${MAX_TOKENS:-16384}" "$VENV/bin/python" - "$@" <<'EOF'
import json, os, sys
import numpy as np
from llama_cpp import Llama

model_path, text_path = sys.argv[1], sys.argv[2]
reference = sys.argv[3] if len(sys.argv) > 3 else None
ctx, max_tokens = int(os.environ["CTX"]), int(os.environ["MAX_TOKENS"])
threads = int(os.environ.get("THREADS", "2"))

def load(path):
    return Llama(model_path=path, n_ctx=ctx, n_batch=ctx, logits_all=True,
                 n_threads=threads, verbose=False)

def log_softmax(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

def window_logits(llm, window):
    llm.reset()
    llm.eval(window)
    return np.array(llm.scores[: len(window)], dtype=np.float32)

llm = load(model_path)
with open(text_path, "rb") as f:
    tokens = llm.tokenize(f.read(), add_bos=False, special=False)[:max_tokens]
windows = [tokens[i : i + ctx] for i in range(0, len(tokens) - 1, ctx)]
windows = [w for w in windows if len(w) > 1]
if not windows:
    sys.exit(f"error: {text_path}: fewer than 2 tokens")

ref_llm = load(reference) if reference and reference.endswith(".gguf") else None
ref_logits = np.load(reference) if reference and reference.endswith(".npy") else None
if reference and ref_llm is None and ref_logits is None:
    sys.exit(f"error: {reference}: expected a .gguf model or a .npy of logits")

nll, kld, scored, row = 0.0, [], 0, 0
for w in windows:
    logp = log_softmax(window_logits(llm, w))
    targets = np.array(w[1:])
    nll -= logp[np.arange(len(w) - 1), targets].sum()
    scored += len(w) - 1
    if reference:
        ref = window_logits(ref_llm, w) if ref_llm else ref_logits[row : row + len(w)]
        row += len(w)
        ref_logp = log_softmax(ref)[: len(w) - 1]
        kld.extend((np.exp(ref_logp) * (ref_logp - logp[: len(w) - 1])).sum(axis=-1).tolist())

out = {
    "model": model_path,
    "text": text_path,
    "llama_cpp_python": __import__("llama_cpp").__version__,
    "vocab": llm.n_vocab(),
    "context": ctx,
    "windows": len(windows),
    "tokens_scored": scored,
    "perplexity": float(np.exp(nll / scored)),
}
if reference:
    out["reference"] = reference
    out["kld_mean"] = float(np.mean(kld))
    out["kld_p99"] = float(np.percentile(kld, 99))
print(json.dumps(out, indent=2))
EOF
