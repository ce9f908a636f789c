#!/usr/bin/env bash
# Checks the encodings file of a qpipe ONNX export with AIMET itself (aimet-onnx from PyPI):
# AIMET validates the file, parses every entry and rebuilds a quantized model from the float
# model and the encodings; onnxruntime then runs AIMET's model and qpipe's model.onnx on the same
# token windows. Equal outputs mean Qualcomm's tooling reads qpipe's grids as qpipe wrote them.
#
#   scripts/check-aimet-encodings.sh MODEL.onnx [MODEL.encodings]
#
# The encodings default to MODEL.onnx's with the extension .encodings (what `qpipe compress
# --target hexagon` and `qpipe export --format onnx --encodings aimet` write). Installs the
# packages pinned in scripts/aimet-requirements.txt (aimet-onnx and its torch, about 6 GB) into
# the virtual environment models/.aimet on first use. Prints one JSON object; exits 1 when
# AIMET's model differs from qpipe's by more than 1e-5 of the largest output. Not in default CI.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 MODEL.onnx [MODEL.encodings]" >&2
  exit 2
fi
model=$1
encodings=${2:-${model%.onnx}.encodings}
for f in "$model" "$encodings"; do
  [ -f "$f" ] || { echo "error: $f: no such file" >&2; exit 2; }
done

VENV=models/.aimet
pins=scripts/aimet-requirements.txt
marker="$(sha256sum "$pins" | cut -d' ' -f1) python$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$marker" ]; then
  echo "installing the packages of $pins into $VENV (about 6 GB)" >&2
  rm -rf "$VENV.partial"
  python3 -m venv "$VENV.partial"
  if ! "$VENV.partial/bin/pip" install --quiet --disable-pip-version-check -r "$pins" >&2; then
    echo "error: cannot install the packages of $pins from PyPI" >&2
    exit 2
  fi
  echo "$marker" >"$VENV.partial/.installed"
  rm -rf "$VENV" && mv "$VENV.partial" "$VENV"
fi
"$VENV/bin/python" scripts/aimet_check.py "$model" "$encodings"
