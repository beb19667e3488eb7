#!/usr/bin/env bash
# Installs the ONNX Runtime CPU shared library that package engine loads.
#
#   scripts/install-ort.sh [DEST]
#   scripts/install-ort.sh --print-path-for ARCH
#
# DEST defaults to .cache/onnxruntime/libonnxruntime.so.1.30.0 under the repository
# root. The library comes from the npm registry: `npm pack onnxruntime-node@1.30.0`
# (not `npm install`, whose postinstall script tries to download more and fails),
# then the library for this machine's architecture is extracted, checked against its
# pinned size and SHA-256, and moved into place atomically:
#
#   uname -m           member of the package
#   x86_64 (amd64)     package/bin/napi-v6/linux/x64/libonnxruntime.so.1
#   aarch64 (arm64)    package/bin/napi-v6/linux/arm64/libonnxruntime.so.1
#
# ORT_ARCH=aarch64 installs another architecture's library (to copy to that machine).
# --print-path-for ARCH prints the member chosen for ARCH (a `uname -m` value) and
# exits, without touching the network or DEST (scripts/installort_test.go).
#
# Idempotent: does nothing when DEST already exists with the pinned size and
# SHA-256. Fails loudly (non-zero exit, message on stderr) on anything else: an
# architecture the package has no library for, no npm, a download or checksum
# failure, a DEST of the wrong size or checksum.
#
# The steps it shares with scripts/install-ort-gpu.sh (npm, `npm pack`, tar, the
# checks, the atomic copy, the architecture) are in scripts/lib/npm-fetch.sh.
set -euo pipefail

ORT_VERSION=1.30.0
ORT_PACKAGE="onnxruntime-node@${ORT_VERSION}"

PROG=install-ort
# shellcheck source=SCRIPTDIR/lib/npm-fetch.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/npm-fetch.sh"

# ort_select ARCH: sets ORT_MEMBER (the library's path inside the npm package),
# ORT_SIZE and ORT_SHA256 (its pins) for ARCH, a `uname -m` value; fails with a
# message naming ARCH for an architecture the package has no Linux library for.
ort_select() {
  case "$1" in
    x86_64 | amd64)
      ORT_MEMBER="package/bin/napi-v6/linux/x64/libonnxruntime.so.1"
      ORT_SIZE=45828512
      ORT_SHA256=ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23
      ;;
    aarch64 | arm64)
      ORT_MEMBER="package/bin/napi-v6/linux/arm64/libonnxruntime.so.1"
      ORT_SIZE=25135496
      ORT_SHA256=1f549d46250b005580b597f4164984aaf75b3bcb9f3aeb07c7f8a8fe60b23c76
      ;;
    armv7l | armv6l | armhf | arm)
      say "unsupported architecture '$1': ${ORT_PACKAGE} ships no 32-bit ARM library; use a 64-bit (aarch64) OS"
      return 1
      ;;
    *)
      say "unsupported architecture '${1:-(empty)}': ${ORT_PACKAGE} has Linux libraries for x86_64 and aarch64 (arm64) only"
      return 1
      ;;
  esac
}

if [[ "${1:-}" == "--print-path-for" ]]; then
  [[ $# -eq 2 ]] || die "usage: $0 --print-path-for ARCH"
  ort_select "$2" || exit 1
  echo "$ORT_MEMBER"
  exit 0
fi
[[ "${1:-}" != -* ]] || die "usage: $0 [DEST] | --print-path-for ARCH"

select_arch ort_select

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${root}/.cache/onnxruntime/libonnxruntime.so.${ORT_VERSION}}"

if have_pinned "$dest" "$ORT_SIZE" "$ORT_SHA256" "ONNX Runtime ${ORT_VERSION} for $arch"; then
  exit 0
fi

ensure_npm
make_workdir
npm_fetch "$ORT_PACKAGE"
extract_pinned "$workdir/$tarball" "$workdir" "$ORT_MEMBER" "$ORT_SIZE" "$ORT_SHA256" "$tarball" "extracted library"

mkdir -p "$(dirname "$dest")"
# Copied next to the destination, then renamed: a reader never sees a partial file.
part="$(mktemp "$(dirname "$dest")/.libonnxruntime.XXXXXX")"
place "$workdir/$ORT_MEMBER" "$part" "$dest" 0644
say "installed ONNX Runtime ${ORT_VERSION} ($arch) at $dest"
