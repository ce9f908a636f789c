#!/usr/bin/env bash
# Scores a qpipe ONNX export with onnxruntime against the float model, so the file a QNN,
# TensorRT or OpenVINO toolchain takes is checked by an independent runtime, not by qpipe.
#
#   scripts/check-onnx-ort.sh MODEL.onnx TEXT REFERENCE
#
# REFERENCE is the float model the export was made from (a directory with config.json and
# tokenizer.json, or its .safetensors); it is exported unquantized with `qpipe export` and run
# in the same onnxruntime. TEXT is tokenized with REFERENCE's tokenizer.json (no special tokens,
# as qpipe does) and cut into windows of SEQ tokens (default 128, env SEQ), at most MAX_TOKENS
# (default 1024). Prints one JSON object: for causal LMs the mean full-vocabulary
# KL(float || MODEL) over every position, for encoders the mean 1 - cos of the sentence
# embeddings; each with onnxruntime's default session (which fuses QDQ into its own kernels) and
# with the graph as written (basic optimisations only).
#
# Uses models/.pylib (onnx, onnxruntime: scripts/fetch-models.sh) and installs the pinned PyPI
# `tokenizers` into models/.pytokenizers on first use. QPIPE names the qpipe binary (default:
# cargo run --release). Not part of default CI.
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENIZERS="tokenizers==0.22.1"
TOKDIR=models/.pytokenizers

if [ $# -ne 3 ]; then
  echo "usage: $0 MODEL.onnx TEXT REFERENCE" >&2
  exit 2
fi
model=$1 text=$2 reference=$3
for f in "$model" "$text"; do
  [ -f "$f" ] || { echo "error: $f: no such file" >&2; exit 2; }
done
[ -e "$reference" ] || { echo "error: $reference: no such file or directory" >&2; exit 2; }
[ -d models/.pylib/onnxruntime ] || { echo "error: models/.pylib has no onnxruntime: run scripts/fetch-models.sh" >&2; exit 2; }
refdir=$reference
[ -d "$refdir" ] || refdir=$(dirname "$reference")
[ -f "$refdir/tokenizer.json" ] || { echo "error: $refdir/tokenizer.json: no such file" >&2; exit 2; }

if [ "$(cat "$TOKDIR/.installed" 2>/dev/null)" != "$TOKENIZERS" ]; then
  echo "installing $TOKENIZERS into $TOKDIR" >&2
  rm -rf "$TOKDIR.partial"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$TOKDIR.partial" "$TOKENIZERS" >&2
  echo "$TOKENIZERS" >"$TOKDIR.partial/.installed"
  rm -rf "$TOKDIR" && mv "$TOKDIR.partial" "$TOKDIR"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${QPIPE:-}" ]; then
  "$QPIPE" export "$reference" --format onnx --out "$work/reference.onnx" >&2
else
  cargo run --release --quiet -- export "$reference" --format onnx --out "$work/reference.onnx" >&2
fi

PYTHONPATH="models/.pylib:$TOKDIR" python3 scripts/onnx_score.py \
  "$model" "$work/reference.onnx" "$text" "$refdir/tokenizer.json" "${SEQ:-128}" "${MAX_TOKENS:-1024}"
