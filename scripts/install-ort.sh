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
# exits, without touching the network or DEST (scripts/install_test.go).
#
# Idempotent: does nothing when DEST already exists with the pinned size. Fails
# loudly (non-zero exit, message on stderr) on anything else: an architecture the
# package has no library for, no npm, a download or checksum failure, a DEST of the
# wrong size.
set -euo pipefail

ORT_VERSION=1.30.0
ORT_PACKAGE="onnxruntime-node@${ORT_VERSION}"

die() { echo "install-ort: $*" >&2; exit 1; }

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
      echo "install-ort: unsupported architecture '$1': ${ORT_PACKAGE} ships no 32-bit ARM library; use a 64-bit (aarch64) OS" >&2
      return 1
      ;;
    *)
      echo "install-ort: unsupported architecture '${1:-(empty)}': ${ORT_PACKAGE} has Linux libraries for x86_64 and aarch64 (arm64) only" >&2
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

[[ "$(uname -s)" == "Linux" ]] || die "only Linux is supported by this script, not $(uname -s)"
arch="${ORT_ARCH:-$(uname -m)}"
ort_select "$arch" || exit 1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${root}/.cache/onnxruntime/libonnxruntime.so.${ORT_VERSION}}"

size_of() { stat -c %s "$1" 2>/dev/null || echo -1; }

if [[ -e "$dest" ]]; then
  have="$(size_of "$dest")"
  [[ "$have" == "$ORT_SIZE" ]] && exit 0
  die "$dest exists with $have bytes, want $ORT_SIZE (ONNX Runtime ${ORT_VERSION} for $arch); remove it and re-run"
fi

if ! command -v npm >/dev/null; then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "npm is missing and installing it needs root or sudo: apt-get install npm"
    sudo="sudo"
  fi
  echo "install-ort: npm is missing; installing it with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm >/dev/null ||
    die "apt-get install npm failed"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "install-ort: fetching ${ORT_PACKAGE} from the npm registry" >&2
tgz="$(cd "$tmp" && npm pack --silent "$ORT_PACKAGE" 2>"$tmp/npm.err" | tail -n 1)" ||
  die "npm pack ${ORT_PACKAGE} failed: $(cat "$tmp/npm.err")"
[[ -n "$tgz" && -f "$tmp/$tgz" ]] || die "npm pack ${ORT_PACKAGE} produced no tarball: $(cat "$tmp/npm.err")"

tar -xzf "$tmp/$tgz" -C "$tmp" "$ORT_MEMBER" ||
  die "$tgz does not contain $ORT_MEMBER"
lib="$tmp/$ORT_MEMBER"

have="$(size_of "$lib")"
[[ "$have" == "$ORT_SIZE" ]] || die "extracted library has $have bytes, want $ORT_SIZE"
sum="$(sha256sum "$lib" | cut -d' ' -f1)"
[[ "$sum" == "$ORT_SHA256" ]] || die "extracted library has SHA-256 $sum, want $ORT_SHA256"

mkdir -p "$(dirname "$dest")"
# Copy next to the destination, then rename: a reader never sees a partial file.
part="$(mktemp "$(dirname "$dest")/.libonnxruntime.XXXXXX")"
cp "$lib" "$part" && chmod 0644 "$part" && mv -f "$part" "$dest" || {
  rm -f "$part"
  die "cannot write $dest"
}
echo "install-ort: installed ONNX Runtime ${ORT_VERSION} ($arch) at $dest" >&2
