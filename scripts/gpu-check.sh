#!/usr/bin/env bash
# Checks the CUDA engine on a machine with an NVIDIA GPU and prints per-variant
# batch latencies, CPU against GPU (docs/deployment.md, "GPU").
#
#   scripts/gpu-check.sh [--device N] [--batches "1 2 4 ... 256"] [--cpu-threads N]
#                        [--apps "fashion ..."] [--provider-option KEY=VALUE]...
#   scripts/gpu-check.sh --cpu-only     rehearsal without a GPU (see below)
#   scripts/gpu-check.sh --engine-test FILE   without Go on the GPU machine
#
# Steps, each stopping the script with a message when it fails:
#   1. an NVIDIA GPU: `nvidia-smi -L` lists one (exit 2 when not);
#   2. the library `make ort-gpu` installed (ORT_GPU_DIR, default
#      .cache/onnxruntime-gpu) and the CUDA 13 libraries its CUDA provider needs
#      (`ldd`; cuDNN 9 is looked up with ldconfig) (exit 3 when missing);
#   3. the engine's GPU tests on that library with SNEAKGATE_TEST_GPU=1: the
#      CUDA provider is probed and used without falling back, every test model
#      gives the CPU's answers within 1e-3, profiles are cached under the
#      provider's key (exit 1 when a test fails);
#   4. the table: every variant under models/ profiled on the CPU provider
#      (--cpu-threads intra-op threads, default 1 as the gateway's default
#      config) and on the CUDA provider, median batch latency at each batch size
#      (default 1 2 4 8 16 32 64 128 256), per sample, and the CPU/GPU ratio;
#      also written to .cache/gpu-check.txt (GPU_CHECK_OUT).
#
# Steps 3 and 4 run the engine package's tests: with `go test` by default, or,
# on a GPU machine without Go, with a test binary built elsewhere (x86-64, same
# repository revision): `go test -c -o engine.test ./engine`, copied over and
# named with --engine-test FILE; it runs in engine/ as `go test` would.
#
# --cpu-only runs steps 2-4 with the CPU provider in place of CUDA, on a machine
# without a GPU: it checks the script, the library install and the table, not
# the GPU. NVIDIA_SMI names the nvidia-smi to run (tests use a stub).
set -euo pipefail

die() {
  local code=$1
  shift
  echo "gpu-check: $*" >&2
  exit "$code"
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
device=0
batches="1 2 4 8 16 32 64 128 256"
threads=1
cpu_only=0
engine_test=""
apps=""
popts=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="${2:?--device needs a number}"; shift 2 ;;
    --batches) batches="${2:?--batches needs a list}"; shift 2 ;;
    --cpu-threads) threads="${2:?--cpu-threads needs a number}"; shift 2 ;;
    --cpu-only) cpu_only=1; shift ;;
    --engine-test) engine_test="${2:?--engine-test needs a file}"; shift 2 ;;
    --apps) apps="${2:?--apps needs names}"; shift 2 ;;
    --provider-option) popts="$popts ${2:?--provider-option needs KEY=VALUE}"; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die 64 "unknown argument '$1' (see $0 --help)" ;;
  esac
done
[[ "$device" =~ ^[0-9]+$ ]] || die 64 "--device $device: want a GPU number"
# The table's file, absolute: the tests run in engine/, this script from $root.
out="${GPU_CHECK_OUT:-$root/.cache/gpu-check.txt}"
[[ "$out" == /* ]] || out="$PWD/$out"
if [[ -n "$engine_test" ]]; then
  [[ -f "$engine_test" && -x "$engine_test" ]] || die 64 "--engine-test $engine_test: not an executable file (build it with \`go test -c -o engine.test ./engine\`)"
  engine_test="$(cd "$(dirname "$engine_test")" && pwd)/$(basename "$engine_test")"
fi

# engine_tests ARGS...: the engine package's tests, through `go test` or the
# prebuilt binary (its flags are go test's with a "test." prefix), in engine/.
engine_tests() {
  local count=1 verbose=0 run="" timeout=10m
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -v) verbose=1; shift ;;
      -run) run="$2"; shift 2 ;;
      -timeout) timeout="$2"; shift 2 ;;
      *) die 70 "engine_tests: unknown argument $1" ;;
    esac
  done
  if [[ -n "$engine_test" ]]; then
    local v=()
    [[ $verbose -eq 0 ]] || v=(-test.v)
    (cd "$root/engine" && "$engine_test" -test.count="$count" -test.timeout="$timeout" ${v[@]+"${v[@]}"} -test.run "$run")
  else
    command -v go >/dev/null || die 3 "go is not installed: install Go, or build the tests elsewhere with \`go test -c -o engine.test ./engine\` and pass --engine-test engine.test"
    local v=()
    [[ $verbose -eq 0 ]] || v=(-v)
    (cd "$root" && go test -count="$count" -timeout "$timeout" ${v[@]+"${v[@]}"} -run "$run" ./engine)
  fi
}

# 1. A GPU.
smi="${NVIDIA_SMI:-nvidia-smi}"
if [[ $cpu_only -eq 0 ]]; then
  command -v "$smi" >/dev/null ||
    die 2 "no NVIDIA GPU: $smi is not installed (no NVIDIA driver). This check needs a GPU; on a machine without one the gateway runs on the CPU (engine.provider: cuda falls back, docs/deployment.md). scripts/gpu-check.sh --cpu-only rehearses the steps without a GPU."
  gpus="$("$smi" -L 2>&1)" || die 2 "no NVIDIA GPU: $smi -L failed: $gpus"
  grep -q '^GPU [0-9]' <<<"$gpus" || die 2 "no NVIDIA GPU: $smi -L lists none: $gpus"
  grep -q "^GPU ${device}:" <<<"$gpus" || die 2 "no GPU ${device}: $smi -L lists: $gpus"
  echo "gpu-check: $(grep "^GPU ${device}:" <<<"$gpus")" >&2
  echo "gpu-check: driver $("$smi" --query-gpu=driver_version --format=csv,noheader -i "$device" 2>/dev/null || echo '?')" >&2
else
  echo "gpu-check: --cpu-only: a rehearsal with the CPU provider in place of CUDA; nothing here checks a GPU" >&2
fi

# have_lib NAME: the dynamic loader finds NAME (ldconfig's cache or LD_LIBRARY_PATH).
have_lib() {
  ldconfig -p 2>/dev/null | grep -q "[[:space:]]$1 " && return 0
  local d ds
  IFS=: read -ra ds <<<"${LD_LIBRARY_PATH:-}"
  for d in "${ds[@]}"; do
    [[ -n "$d" && -e "$d/$1" ]] && return 0
  done
  return 1
}

# 2. The library and what its CUDA provider needs.
dir="${ORT_GPU_DIR:-$root/.cache/onnxruntime-gpu}"
lib="$dir/libonnxruntime.so.1.29.0"
cuda="$dir/libonnxruntime_providers_cuda.so"
for f in "$lib" "$dir/libonnxruntime_providers_shared.so" "$cuda"; do
  [[ -f "$f" ]] || die 3 "$f is missing: run \`make ort-gpu\` first (or set ORT_GPU_DIR)"
done
if [[ $cpu_only -eq 0 ]]; then
  missing="$(ldd "$cuda" 2>&1 | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')"
  [[ -z "$missing" ]] ||
    die 3 "the CUDA provider cannot load: missing ${missing}(libcuda.so.1 comes with the NVIDIA driver, the others with CUDA 13: install it and put its lib64 on the loader path, /etc/ld.so.conf.d/ or LD_LIBRARY_PATH)"
  if ! have_lib libcudnn.so.9; then
    echo "gpu-check: warning: libcudnn.so.9 not found (ldconfig, LD_LIBRARY_PATH): convolutions on CUDA need cuDNN 9" >&2
  fi
fi

export SNEAKGATE_ORT_LIB="$lib" SNEAKGATE_GPU_ORT_LIB="$lib" SNEAKGATE_GPU_DEVICE="$device"
cd "$root"

# 3. The engine's GPU tests.
if [[ $cpu_only -eq 0 ]]; then
  echo "gpu-check: engine tests on the CUDA provider (device $device)" >&2
  SNEAKGATE_TEST_GPU=1 engine_tests -v -run '^(TestGPUProvider|TestLegacyCUDAPathReachesProvider|TestProbeModelOnCPU)$' >&2 ||
    die 1 "engine GPU tests failed (output above)"
else
  echo "gpu-check: engine tests of the GPU library without a GPU" >&2
  engine_tests -v -run '^(TestGPUFallback|TestLegacyCUDAPathReachesProvider|TestProbeModelOnCPU)$' >&2 ||
    die 1 "engine tests failed (output above)"
fi

# 4. The table.
mkdir -p "$(dirname "$out")"
provider=cuda
[[ $cpu_only -eq 0 ]] || provider=cpu
echo "gpu-check: profiling every variant under models/ on cpu and $provider at batch sizes $batches (a few minutes)" >&2
rm -f "$out"
if ! SNEAKGATE_GPU_TABLE="$out" SNEAKGATE_GPU_TABLE_PROVIDER="$provider" SNEAKGATE_GPU_BATCHES="$batches" \
  SNEAKGATE_GPU_TABLE_APPS="$apps" SNEAKGATE_GPU_PROVIDER_OPTIONS="$popts" \
  SNEAKGATE_GPU_CPU_THREADS="$threads" engine_tests -timeout 60m -run '^TestGPULatencyTable$' >&2; then
  # A model that kills the measuring process on one provider costs only its
  # own rows ("-"); the table, with what died at its end, is still printed.
  [[ -s "$out" ]] || die 1 "profiling failed (output above)"
  cat "$out"
  die 1 "some measurements failed (the lines starting with '#' at the end of the table say which and how); the table is in $out"
fi
cat "$out"
echo "gpu-check: ok; the table is in $out" >&2
