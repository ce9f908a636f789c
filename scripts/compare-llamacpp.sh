#!/usr/bin/env bash
# Side-by-side of llama.cpp's own quantization (llama-quantize with an importance matrix) against
# qpipe's `--target llama-cpp` search at the same size, both scored by llama.cpp itself
# (scripts/check-gguf-llamacpp.sh: mean / p99 KL against the F32 GGUF, perplexity).
#
#   scripts/compare-llamacpp.sh MODEL_DIR [TYPES...]     (default: Q8_0 Q5_K_M Q4_K_M Q3_K_M Q4_0-pure)
#
# MODEL_DIR is a Hugging Face Llama directory (models/tiny, models/smollm2-135m). A type is any
# llama-quantize type name; a `-pure` suffix adds `--pure` (every tensor in that type).
# Environment: OUT (results; default models/llama-cpp-compare/<model name>), CHUNKS (imatrix
# chunks of 128 tokens; default 128 = 16384 tokens of calibration-data/sotu-calibration.txt, or
# the whole text if shorter), THREADS (default 2), FORCE=1 (redo steps whose outputs exist),
# QPIPE (the qpipe binary; default target/release/qpipe: a copy keeps a long run independent of
# rebuilds).
# Scoring uses check-gguf-llamacpp.sh's defaults on calibration-data/sotu-eval.txt (held-out):
# CTX=128, MAX_TOKENS=16384.
#
# Per type: llama-quantize's file, then `qpipe compress --target llama-cpp --max-size` set to that
# file's tensor bytes (sum of the GGUF tensors' data sizes, in MB = 1e6 bytes). Writes OUT/table.md
# (also printed) and per-step logs/JSON in OUT. Needs scripts/build-llamacpp-tools.sh (run here),
# a built target/release/qpipe and the gguf Python package in models/.pylib
# (scripts/fetch-models.sh). Slow (SmolLM2: ~10-15 min per qpipe run on 2 cores); not in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ]; then
  echo "usage: $0 MODEL_DIR [TYPES...]   (env OUT, CHUNKS, THREADS, FORCE)" >&2
  exit 2
fi
MODEL=${1%/}
shift
[ -f "$MODEL/config.json" ] || { echo "error: $MODEL: no config.json (not a model directory)" >&2; exit 2; }
TYPES=("$@")
[ ${#TYPES[@]} -gt 0 ] || TYPES=(Q8_0 Q5_K_M Q4_K_M Q3_K_M Q4_0-pure)
for t in "${TYPES[@]}"; do
  [[ "$t" =~ ^[A-Za-z0-9_]+(-pure)?$ ]] || { echo "error: bad type name: $t" >&2; exit 2; }
done
OUT=${OUT:-models/llama-cpp-compare/$(basename "$MODEL")}
CHUNKS=${CHUNKS:-128}
THREADS=${THREADS:-2}
FORCE=${FORCE:-0}
CAL=calibration-data/sotu-calibration.txt
EVAL=calibration-data/sotu-eval.txt
QPIPE=${QPIPE:-target/release/qpipe}
for f in "$CAL" "$EVAL" "$QPIPE" models/.pylib/gguf/__init__.py; do
  [ -e "$f" ] || { echo "error: $f missing (see README: build qpipe, scripts/fetch-models.sh)" >&2; exit 2; }
done
export CTX=128 MAX_TOKENS=16384 THREADS RAYON_NUM_THREADS="$THREADS"
mkdir -p "$OUT"

BIN=$(scripts/build-llamacpp-tools.sh)
need() { [ "$FORCE" = 1 ] || [ ! -s "$1" ]; }

# Tensor bytes (data only), whole-file bytes, parameters and bits per weight of a GGUF file.
gguf_stats() {
  PYTHONPATH=models/.pylib python3 - "$1" <<'EOF'
import json, os, sys
import gguf
r = gguf.GGUFReader(sys.argv[1])
nbytes = sum(int(t.n_bytes) for t in r.tensors)
params = sum(int(t.n_elements) for t in r.tensors)
types = {}
for t in r.tensors:
    types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
print(json.dumps({"tensor_bytes": nbytes, "file_bytes": os.path.getsize(sys.argv[1]),
                  "params": params, "bpw": nbytes * 8 / params, "tensor_types": types}))
EOF
}
field() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d.get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }
score() { # GGUF -> JSON file
  if need "$2"; then
    scripts/check-gguf-llamacpp.sh "$1" "$EVAL" "$OUT/f32.gguf" >"$2.partial" 2>"${2%.json}.log"
    mv "$2.partial" "$2"
  fi
}

# a. F32 reference.
if need "$OUT/f32.gguf"; then
  cargo run --release --quiet --example gguf-f32 -- "$MODEL" "$OUT/f32.gguf"
fi
gguf_stats "$OUT/f32.gguf" >"$OUT/f32.stats.json"
score "$OUT/f32.gguf" "$OUT/f32.check.json"

# b. Importance matrix on the calibration text (CHUNKS x 128 tokens; fewer if the text is shorter).
if need "$OUT/imatrix.gguf"; then
  "$BIN/llama-imatrix" -m "$OUT/f32.gguf" -f "$CAL" -o "$OUT/imatrix.gguf" -c 128 --chunks "$CHUNKS" \
    -t "$THREADS" >"$OUT/imatrix.log" 2>&1 \
    || { echo "error: llama-imatrix failed, see $OUT/imatrix.log" >&2; exit 2; }
fi

for t in "${TYPES[@]}"; do
  base=${t%-pure}
  pure=()
  [ "$t" = "$base" ] || pure=(--pure)
  # c. llama.cpp's quantization.
  if need "$OUT/$t.gguf"; then
    "$BIN/llama-quantize" "${pure[@]}" --imatrix "$OUT/imatrix.gguf" "$OUT/f32.gguf" "$OUT/$t.gguf.partial" \
      "$base" "$THREADS" >"$OUT/$t.quantize.log" 2>&1 \
      || { echo "error: llama-quantize $t failed, see $OUT/$t.quantize.log" >&2; exit 2; }
    mv "$OUT/$t.gguf.partial" "$OUT/$t.gguf"
  fi
  # What llama.cpp changed: tensors it could not store in the requested block type.
  grep -iE "falling back|fallback|not divisible|unusual shape" "$OUT/$t.quantize.log" \
    >"$OUT/$t.fallbacks.txt" || true
  gguf_stats "$OUT/$t.gguf" >"$OUT/$t.stats.json"
  # d. llama.cpp scores it.
  score "$OUT/$t.gguf" "$OUT/$t.check.json"
  # f. qpipe at the same tensor bytes.
  bytes=$(field "$OUT/$t.stats.json" tensor_bytes)
  mb=$(python3 -c "print('%.6f' % ($bytes / 1e6))")
  q="$OUT/qpipe-$t"
  if need "$q/model.gguf" || [ ! -s "$q.time" ]; then
    if [ -s "$q.exit2" ] && [ "$FORCE" != 1 ]; then
      :
    else
      rm -f "$q.exit2" "$q.time"
      start=$(date +%s.%N)
      set +e
      "$QPIPE" compress "$MODEL" --target llama-cpp --max-size "$mb" --out "$q" >"$q.log" 2>"$q.err"
      rc=$?
      set -e
      python3 -c "print('%.1f' % ($(date +%s.%N) - $start))" >"$q.time"
      if [ $rc = 2 ]; then
        grep -v '^\s*$' "$q.err" | tail -1 >"$q.exit2"
      elif [ $rc != 0 ]; then
        echo "error: qpipe compress $t exited $rc, see $q.err" >&2
        exit 2
      fi
    fi
  fi
  if [ ! -s "$q.exit2" ]; then
    gguf_stats "$q/model.gguf" >"$q.stats.json"
    score "$q/model.gguf" "$q.check.json"
  fi
done

# g. The table.
{
  echo "# llama.cpp quantization vs qpipe --target llama-cpp at equal tensor bytes: $MODEL"
  echo
  echo "CPU: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1);" \
    "avx2: $(grep -qw avx2 /proc/cpuinfo && echo yes || echo no)," \
    "avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)," \
    "avx512_vnni: $(grep -qw avx512_vnni /proc/cpuinfo && echo yes || echo no); threads: $THREADS"
  echo
  echo "llama.cpp: vendor/llama.cpp of the $(cut -d' ' -f1 models/llama-cpp-tools/.built) sdist" \
    "(tools from scripts/build-llamacpp-tools.sh; scoring via scripts/check-gguf-llamacpp.sh)."
  echo "imatrix: $CAL, -c 128 --chunks $CHUNKS ($(grep -oE 'computing over [0-9]+ chunks[^)]*' "$OUT/imatrix.log" | head -1 || true))."
  echo "Scored on $EVAL with CTX=$CTX, MAX_TOKENS=$MAX_TOKENS ($(field "$OUT/f32.check.json" tokens_scored) tokens scored);" \
    "KL(F32 || quantized) of next-token distributions, both through llama.cpp."
  echo "F32 reference: $(field "$OUT/f32.stats.json" tensor_bytes) tensor bytes, $(field "$OUT/f32.stats.json" params) parameters," \
    "ppl $(python3 -c "print('%.4f' % $(field "$OUT/f32.check.json" perplexity))")."
  echo "Tensor bytes = sum of the GGUF tensors' data sizes (no header/metadata); bpw = tensor bytes x 8 / parameters."
  echo
  echo "| type | llama.cpp tensor bytes | bpw | mean KL | p99 KL | ppl | qpipe tensor bytes | bpw | mean KL | p99 KL | ppl | qpipe wall s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for t in "${TYPES[@]}"; do
    q="$OUT/qpipe-$t"
    python3 - "$t" "$OUT/$t.stats.json" "$OUT/$t.check.json" "$q" <<'EOF'
import json, os, sys
t, ls, lc, q = sys.argv[1:]
def cells(stats, check):
    s, c = json.load(open(stats)), json.load(open(check))
    return [f"{s['tensor_bytes']:,} (file {s['file_bytes']:,})", f"{s['bpw']:.3f}",
            f"{c['kld_mean']:.5f}", f"{c['kld_p99']:.4f}", f"{c['perplexity']:.3f}"]
row = [t] + cells(ls, lc)
wall = open(q + ".time").read().strip() if os.path.exists(q + ".time") else "?"
if os.path.exists(q + ".exit2") and os.path.getsize(q + ".exit2"):
    row += ["exit 2: " + open(q + ".exit2").read().strip().replace("|", "/"), "", "", "", ""]
else:
    row += cells(q + ".stats.json", q + ".check.json")
row.append(wall)
print("| " + " | ".join(row) + " |")
EOF
  done
  echo
  echo "Tensor types per file (count of tensors):"
  echo
  for t in "${TYPES[@]}"; do
    echo "- $t llama.cpp: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tensor_types"])' "$OUT/$t.stats.json")"
    if [ -s "$OUT/qpipe-$t.stats.json" ] && [ ! -s "$OUT/qpipe-$t.exit2" ]; then
      echo "- $t qpipe: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tensor_types"])' "$OUT/qpipe-$t.stats.json")"
    fi
    if [ -s "$OUT/$t.fallbacks.txt" ]; then
      echo "- $t llama-quantize fallbacks ($(wc -l <"$OUT/$t.fallbacks.txt") lines, first 3):"
      head -3 "$OUT/$t.fallbacks.txt" | sed 's/^/    /'
    fi
  done
} >"$OUT/table.md.partial"
mv "$OUT/table.md.partial" "$OUT/table.md"
cat "$OUT/table.md"
