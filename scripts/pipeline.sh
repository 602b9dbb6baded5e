#!/usr/bin/env bash
# The commands behind docs/REPRODUCTION.md, docs/QUANTIZATION.md and docs/BENCHMARKS.md, for one
# trained bundle: evaluate -> export -> compare calibration methods -> calibrate (gated) -> verify
# -> bench. Training itself is in docs/REPRODUCTION.md (hours on a CPU).
#
#   scripts/pipeline.sh runs/coronet "minmax entropy percentile" "first-conv,head"
#
# Arguments: bundle, calibration methods to compare, optional --keep-float list to also compare.
# Results land in the bundle (evaluation-test.json, verify.json, calib-compare/*.json, bench.json).
set -euo pipefail
BUNDLE=${1:?bundle directory}
METHODS=${2:-"minmax entropy percentile"}
KEEP=${3:-}
DATA=${DATA:-../shared/data/cxr/manifest.csv}
IMAGE=${IMAGE:-../shared/data/cxr-originals/files/covid__covid-19-pneumonia-23-day1.jpg}
ED=${EDGECXR:-.venv/bin/edgecxr}
NAME=$(basename "$BUNDLE")
OUT="$BUNDLE/calib-compare"
mkdir -p "$OUT"

$ED evaluate -m "$BUNDLE" --data "$DATA" --split test -q
$ED export -m "$BUNDLE" --data "$DATA" -q

# Calibration methods (and the keep-float variant), each scored on the test split against Keras.
variants=()
for m in $METHODS; do variants+=("$m|"); done
if [ -n "$KEEP" ]; then for m in $METHODS; do variants+=("$m|$KEEP"); done; fi
for v in "${variants[@]}"; do
  m=${v%%|*}; k=${v#*|}
  tag="$m${k:+-keep-${k//,/-}}"
  $ED calibrate -m "$BUNDLE" --data "$DATA" --method "$m" ${k:+--keep-float "$k"} --no-verify -q
  $ED verify -m "$BUNDLE" --data "$DATA" --split test --artifact onnx_int8 --json -q > "$OUT/$tag.json" || true
  cp "$BUNDLE/model.int8.onnx" "$OUT/$tag.int8.onnx"
done
