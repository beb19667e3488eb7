#!/usr/bin/env bash
# Installs what `make build` and `make ort` have built: `make install` runs it.
#
#   [DESTDIR=...] [PREFIX=/usr/local] [UNITDIR=/etc/systemd/system] scripts/install.sh
#
# BIN (bin/sneakgate) and ORT_LIB (.cache/onnxruntime/libonnxruntime.so.1.30.0) name the
# built files; ORT_VERSION names the installed library. Installs:
#
#   PREFIX/bin/sneakgate
#   PREFIX/lib/sneakgate/libonnxruntime.so.ORT_VERSION
#   PREFIX/share/sneakgate/models/{app}/     every models/{app}/manifest.yaml's directory
#                                            (not models/train, tools, examples, build.sh)
#   PREFIX/share/doc/sneakgate/              README.md, LICENSE, THIRD_PARTY.md, docs/,
#                                            models/README.md
#   /etc/sneakgate/sneakgate.yaml, mosquitto.conf, mosquitto.acl
#   UNITDIR/sneakgate.service
#
# The unit and configs/sneakgate.yaml name /usr/local/ (the default PREFIX): the
# installed copies name PREFIX/ instead. Configuration is the operator's: a file under
# /etc/sneakgate is written only when absent or equal to the new default; an existing,
# different one is kept and the new default goes beside it as FILE.dist.
#
# Builds and downloads nothing: a missing BIN or ORT_LIB stops it with the make target
# that makes it. Everything lands under DESTDIR (for packaging and the tests).
set -euo pipefail

die() { echo "install: $*" >&2; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/usr/local}"
UNITDIR="${UNITDIR:-/etc/systemd/system}"
ORT_VERSION="${ORT_VERSION:-1.30.0}"
BIN="${BIN:-bin/sneakgate}"
ORT_LIB="${ORT_LIB:-.cache/onnxruntime/libonnxruntime.so.${ORT_VERSION}}"

PREFIX="${PREFIX%/}"
[[ "$PREFIX" == /* && "$PREFIX" != *[\|\&\\]* ]] ||
  die "PREFIX must be an absolute path without |, & or \\ (got '$PREFIX')"
[[ "$UNITDIR" == /* ]] || die "UNITDIR must be an absolute path (got '$UNITDIR')"

[[ -x "$BIN" ]] || die "$BIN is missing: run \`make build\` first (as yourself), then \`sudo make install\`"
[[ -f "$ORT_LIB" ]] || die "$ORT_LIB is missing: run \`make ort\` (or \`make build\`) first, then \`sudo make install\`"

apps=()
for m in models/*/manifest.yaml; do
  [[ -e "$m" ]] && apps+=("$(basename "$(dirname "$m")")")
done
[[ ${#apps[@]} -gt 0 ]] || die "no models/*/manifest.yaml to install"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# PREFIX-dependent copy of a file that names /usr/local/.
for_prefix() { sed -e "s|/usr/local/|${PREFIX}/|g" "$1" >"$2"; }

# install_config SRC DEST: DEST is written only when absent (or already equal to SRC);
# an existing, different DEST is kept and SRC goes beside it as DEST.dist.
install_config() {
  if [[ -e "$2" ]] && ! cmp -s "$1" "$2"; then
    install -m 0644 "$1" "$2.dist"
    echo "install: kept $2 (it differs from the default); the new default is $2.dist"
  else
    install -D -m 0644 "$1" "$2"
    rm -f "$2.dist"
  fi
}

# copy_tree SRC DEST: DEST becomes a world-readable copy of SRC (whatever the umask:
# the service's dynamic user reads the models).
copy_tree() {
  rm -rf "$2"
  mkdir -p "$(dirname "$2")"
  cp -R "$1" "$2"
  chmod -R u=rwX,go=rX "$2"
}

share="${DESTDIR}${PREFIX}/share/sneakgate"
doc="${DESTDIR}${PREFIX}/share/doc/sneakgate"

install -D -m 0755 "$BIN" "${DESTDIR}${PREFIX}/bin/sneakgate"
install -D -m 0644 "$ORT_LIB" "${DESTDIR}${PREFIX}/lib/sneakgate/libonnxruntime.so.${ORT_VERSION}"

for app in "${apps[@]}"; do
  copy_tree "models/$app" "$share/models/$app"
done
# Earlier versions installed the whole models/ directory: its build sources go.
rm -rf "$share/models/train" "$share/models/tools" "$share/models/examples" \
  "$share/models/build.sh" "$share/models/README.md"

for f in README.md LICENSE THIRD_PARTY.md; do
  install -D -m 0644 "$f" "$doc/$f"
done
install -D -m 0644 models/README.md "$doc/models/README.md"
copy_tree docs "$doc/docs"

mkdir -p "${DESTDIR}/etc/sneakgate"
for f in sneakgate.yaml mosquitto.conf mosquitto.acl; do
  for_prefix "configs/$f" "$tmp/$f"
  install_config "$tmp/$f" "${DESTDIR}/etc/sneakgate/$f"
done

for_prefix systemd/sneakgate.service "$tmp/sneakgate.service"
install -D -m 0644 "$tmp/sneakgate.service" "${DESTDIR}${UNITDIR}/sneakgate.service"

echo "installed under ${DESTDIR:-/} (PREFIX $PREFIX); start with: systemctl daemon-reload && systemctl enable --now sneakgate"
echo "broker: ${PREFIX}/share/doc/sneakgate/docs/deployment.md (cp /etc/sneakgate/mosquitto.conf /etc/mosquitto/conf.d/sneakgate.conf)"
