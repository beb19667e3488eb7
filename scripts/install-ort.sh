#!/usr/bin/env bash
# Installs the ONNX Runtime CPU shared library that package engine loads.
#
#   scripts/install-ort.sh [DEST]
#
# DEST defaults to .cache/onnxruntime/libonnxruntime.so.1.30.0 under the repository
# root. The library comes from the npm registry: `npm pack onnxruntime-node@1.30.0`
# (not `npm install`, whose postinstall script tries to download more and fails),
# then package/bin/napi-v6/linux/x64/libonnxruntime.so.1 is extracted, checked
# against the pinned size and SHA-256, and moved into place atomically.
#
# Idempotent: does nothing when DEST already exists with the pinned size. Fails
# loudly (non-zero exit, message on stderr) on anything else: wrong platform, no
# npm, a download or checksum failure, a DEST of the wrong size.
set -euo pipefail

ORT_VERSION=1.30.0
ORT_PACKAGE="onnxruntime-node@${ORT_VERSION}"
ORT_MEMBER="package/bin/napi-v6/linux/x64/libonnxruntime.so.1"
ORT_SIZE=45828512
ORT_SHA256=ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23

die() { echo "install-ort: $*" >&2; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${root}/.cache/onnxruntime/libonnxruntime.so.${ORT_VERSION}}"

size_of() { stat -c %s "$1" 2>/dev/null || echo -1; }

if [[ -e "$dest" ]]; then
  have="$(size_of "$dest")"
  [[ "$have" == "$ORT_SIZE" ]] && exit 0
  die "$dest exists with $have bytes, want $ORT_SIZE (ONNX Runtime ${ORT_VERSION}); remove it and re-run"
fi

[[ "$(uname -s)/$(uname -m)" == "Linux/x86_64" ]] ||
  die "only linux/x86_64 is supported by this script, not $(uname -s)/$(uname -m)"

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
echo "install-ort: installed ONNX Runtime ${ORT_VERSION} at $dest" >&2
