#!/usr/bin/env bash
# Installs an ONNX Runtime that can run the CUDA execution provider, in its own
# directory beside the CPU library (`make ort`), which it never touches.
#
#   scripts/install-ort-gpu.sh [DESTDIR]
#   scripts/install-ort-gpu.sh --print-members-for ARCH
#
# DESTDIR defaults to .cache/onnxruntime-gpu under the repository root. It gets
#
#   libonnxruntime.so.1.29.0              ONNX Runtime 1.29.0 (SNEAKGATE_ORT_LIB or engine.library)
#   libonnxruntime_providers_shared.so    the provider bridge
#   libonnxruntime_providers_cuda.so      the CUDA provider, built for CUDA 13 and cuDNN 9
#
# from two npm packages (`npm pack` + tar, not `npm install`):
#
#   com.github.asus4.onnxruntime@0.4.9                package/Plugins/Linux/x64/libonnxruntime.so
#   com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9  package/Plugins/Linux/x64/libonnxruntime_providers_{shared,cuda}.so
#
# (the second is about 180 MB). ONNX Runtime loads the providers from the
# directory of libonnxruntime.so, so the three files stay together. Every file
# is checked against its pinned size and SHA-256 before it is moved into place
# (atomically, the core library last). The machine that runs it needs the NVIDIA
# driver, CUDA 13 (libcudart.so.13, libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10) and cuDNN 9; installing needs none of them, and without them
# the gateway falls back to the CPU (docs/deployment.md, "GPU").
#
# --print-members-for ARCH prints, for ARCH (a `uname -m` value), one line per
# file: the npm package, the member inside it and the installed name, and exits
# without touching the network or DESTDIR (scripts/installortgpu_test.go).
#
# Idempotent: does nothing when every file is in DESTDIR with its pinned size and
# SHA-256. Fails loudly (non-zero exit, message on stderr) on anything else: an
# architecture with no CUDA build in these packages (only x86_64 has one), no
# npm, a download or checksum failure, a file in DESTDIR of the wrong size or
# checksum.
#
# The steps it shares with scripts/install-ort.sh (npm, `npm pack`, tar, the
# checks, the atomic copy, the architecture) are in scripts/lib/npm-fetch.sh.
set -euo pipefail

ORT_GPU_VERSION=1.29.0
CORE_PACKAGE="com.github.asus4.onnxruntime@0.4.9"
GPU_PACKAGE="com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9"

PROG=install-ort-gpu
# shellcheck source=SCRIPTDIR/lib/npm-fetch.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/npm-fetch.sh"

# gpu_select ARCH: sets FILES to the lines "PACKAGE MEMBER NAME SIZE SHA256" of
# ARCH's files, the core library last; fails with a message naming ARCH for an
# architecture the packages have no CUDA build for.
gpu_select() {
  case "$1" in
    x86_64 | amd64)
      local dir=package/Plugins/Linux/x64
      FILES="$GPU_PACKAGE $dir/libonnxruntime_providers_shared.so libonnxruntime_providers_shared.so 14632 c6a12593396095f5670160e284c35d1700b7708cf3037b7042e2a5200ccae772
$GPU_PACKAGE $dir/libonnxruntime_providers_cuda.so libonnxruntime_providers_cuda.so 229780440 56cf3254b118ad837ccc4ed8f6d1b23504bbf7ef91b34cbc0b289cb7f10b3037
$CORE_PACKAGE $dir/libonnxruntime.so libonnxruntime.so.${ORT_GPU_VERSION} 28497752 5715f06d8992ca8eeeddcce43df3a7d38f97d537052126f558e912cb312460ca"
      ;;
    aarch64 | arm64)
      say "unsupported architecture '$1': ${GPU_PACKAGE} has a CUDA provider for Linux x86_64 only; on aarch64 (e.g. Jetson) build ONNX Runtime with CUDA from source and name it in engine.library"
      return 1
      ;;
    *)
      say "unsupported architecture '${1:-(empty)}': ${GPU_PACKAGE} has a CUDA provider for Linux x86_64 only"
      return 1
      ;;
  esac
}

if [[ "${1:-}" == "--print-members-for" ]]; then
  [[ $# -eq 2 ]] || die "usage: $0 --print-members-for ARCH"
  gpu_select "$2" || exit 1
  while read -r pkg member name _; do echo "$pkg $member $name"; done <<<"$FILES"
  exit 0
fi
[[ "${1:-}" != -* ]] || die "usage: $0 [DESTDIR] | --print-members-for ARCH"

select_arch gpu_select

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${root}/.cache/onnxruntime-gpu}"

# What is missing; a file of the wrong size or checksum is an error, not something
# to replace.
missing=()
while read -r pkg member name size sum; do
  have_pinned "$dest/$name" "$size" "$sum" "ONNX Runtime ${ORT_GPU_VERSION} GPU for $arch" ||
    missing+=("$pkg $member $name $size $sum")
done <<<"$FILES"
if [[ ${#missing[@]} -eq 0 ]]; then
  say "ONNX Runtime ${ORT_GPU_VERSION} with the CUDA provider is in $dest"
  exit 0
fi

ensure_npm

mkdir -p "$dest"
# The download goes next to the destination (not /tmp, often a small tmpfs):
# about 330 MB of packages (and npm's cache of them) while it runs, removed at
# the end.
make_workdir "$dest/.download.XXXXXX"

declare -A tarballs=()
for line in "${missing[@]}"; do
  read -r pkg member name size sum <<<"$line"
  if [[ -z "${tarballs[$pkg]:-}" ]]; then
    npm_fetch "$pkg" --cache "$workdir/npm-cache"
    tarballs[$pkg]="$workdir/$tarball"
  fi
  mkdir -p "$workdir/x/$name"
  extract_pinned "${tarballs[$pkg]}" "$workdir/x/$name" "$member" "$size" "$sum" "$pkg" "$member from ${pkg}"
done

# Every file checked: move them into place, each atomically, the core library
# last (its presence is what `make ort-gpu` and SNEAKGATE_ORT_LIB look at).
for line in "${missing[@]}"; do
  read -r pkg member name size sum <<<"$line"
  place "$workdir/x/$name/$member" "$dest/.${name}.part" "$dest/$name" 0755
done
say "installed ONNX Runtime ${ORT_GPU_VERSION} with the CUDA provider ($arch) in $dest"
say "use it with SNEAKGATE_ORT_LIB=$dest/libonnxruntime.so.${ORT_GPU_VERSION} (or engine.library) and engine.provider: cuda; scripts/gpu-check.sh checks it on a GPU"
