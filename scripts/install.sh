#!/usr/bin/env bash
# Installs what `make build` and `make ort` have built: `make install` runs it.
#
#   [DESTDIR=...] [PREFIX=/usr/local] [UNITDIR=/etc/systemd/system] [WITH_GPL_DATA=1] scripts/install.sh
#
# BIN (bin/sneakgate) and ORT_LIB (.cache/onnxruntime/libonnxruntime.so.1.30.0) name the
# built files; ORT_VERSION names the installed library. Installs:
#
#   PREFIX/bin/sneakgate
#   PREFIX/lib/sneakgate/libonnxruntime.so.ORT_VERSION
#   PREFIX/share/sneakgate/models/{app}/     every models/{app}/manifest.yaml's directory
#                                            (not models/train, tools, examples, build.sh),
#                                            less the GPL-derived data (below)
#   PREFIX/share/doc/sneakgate/              README.md, LICENSE, THIRD_PARTY.md, docs/,
#                                            models/README.md
#   /etc/sneakgate/sneakgate.yaml, mosquitto.conf, mosquitto.acl
#   UNITDIR/sneakgate.service
#
# The unit and configs/sneakgate.yaml name /usr/local/ (the default PREFIX): the
# installed copies name PREFIX/ instead. Configuration is the operator's: a file under
# /etc/sneakgate is written only when absent or equal to the new default; an existing,
# different one is kept and the new default goes beside it as FILE.dist. Directories
# are made 0755 and files 0644 (the binary 0755) whatever the umask (make_dir below).
#
# GPL-derived data (THIRD_PARTY.md): sneakgate is Apache-2.0, and some bundled data
# comes from GPL-2 Debian packages. By default none of it is installed:
#   - the satellite app, all of models/satellite/ (UCI Statlog rows read from
#     r-cran-mlbench, GPL-2; its kNN estimator holds the rows themselves): not
#     installed, and its line in the installed sneakgate.yaml is commented out;
#   - models/vad/samples.sgs and data/validation.sgs (audio windows, partly cut from
#     klettres-data recordings, GPL-2+): the vad app is installed without them. The
#     gateway serves vad without them; devsim/eval on vad, apps[].label_shift and
#     scheduler.policy cascade read them and fail naming the missing file.
# WITH_GPL_DATA=1 installs them too (and the config names satellite): the installation
# then carries GPL-2 material, to be passed on under the GPL's terms. A default install
# over a GPL one removes them, and stops (installing nothing) when the kept
# /etc/sneakgate/sneakgate.yaml still serves satellite.
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
WITH_GPL_DATA="${WITH_GPL_DATA:-}"

case "$WITH_GPL_DATA" in
  1 | yes | true) with_gpl=1 ;;
  "" | 0 | no | false) with_gpl= ;;
  *) die "WITH_GPL_DATA must be 1 (install the GPL-derived data) or empty/0 (got '$WITH_GPL_DATA')" ;;
esac

# The GPL-derived data (THIRD_PARTY.md, "What make install ships"): whole apps, and
# files of apps installed without them.
gpl_apps=(satellite)
gpl_files=(vad/samples.sgs vad/data/validation.sgs)

PREFIX="${PREFIX%/}"
[[ "$PREFIX" == /* && "$PREFIX" != *[\|\&\\]* ]] ||
  die "PREFIX must be an absolute path without |, & or \\ (got '$PREFIX')"
[[ "$UNITDIR" == /* ]] || die "UNITDIR must be an absolute path (got '$UNITDIR')"

[[ -x "$BIN" ]] || die "$BIN is missing: run \`make build\` first (as yourself), then \`sudo make install\`"
[[ -f "$ORT_LIB" ]] || die "$ORT_LIB is missing: run \`make ort\` (or \`make build\`) first, then \`sudo make install\`"

is_gpl_app() {
  local a
  for a in "${gpl_apps[@]}"; do [[ "$a" == "$1" ]] && return 0; done
  return 1
}

apps=()    # installed
skipped=() # left out: GPL-derived
for m in models/*/manifest.yaml; do
  [[ -e "$m" ]] || continue
  app="$(basename "$(dirname "$m")")"
  if [[ -z "$with_gpl" ]] && is_gpl_app "$app"; then
    skipped+=("$app")
  else
    apps+=("$app")
  fi
done
[[ ${#apps[@]} -gt 0 ]] || die "no models/*/manifest.yaml to install"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# PREFIX-dependent copy of a file that names /usr/local/.
for_prefix() { sed -e "s|/usr/local/|${PREFIX}/|g" "$1" >"$2"; }

# install_config FILE: /etc/sneakgate/FILE is written only when absent or unedited
# (equal to the new default, or to the other WITH_GPL_DATA setting's); an edited one
# is kept and the new default goes beside it as FILE.dist.
install_config() {
  if edited "$1"; then
    install -m 0644 "$tmp/$1" "$etc/$1.dist"
    echo "install: kept $etc/$1 (it differs from the default); the new default is $etc/$1.dist"
  else
    install -D -m 0644 "$tmp/$1" "$etc/$1"
    rm -f "$etc/$1.dist"
  fi
}

# Modes are explicit, whatever the caller's umask (027 or 077 on hardened hosts and
# under some sudo setups would make a plain mkdir's directories 0750 or 0700): the
# service's dynamic user reads the configuration, the models and the library, and
# Mosquitto (user mosquitto) reads /etc/sneakgate/mosquitto.acl. Files are installed
# with -m; install -d and install -D create missing parents 0755 (GNU coreutils).
# make_dir DIR...: each DIR exists with mode 0755, an existing one too (an earlier
# install under such a umask left it 0750 or 0700); what is inside keeps its mode
# (/etc/sneakgate/mqtt-password its 0600).
make_dir() { install -d -m 0755 "$@"; }

# copy_tree SRC DEST: DEST becomes a world-readable copy of SRC (the service's
# dynamic user reads the models).
copy_tree() {
  rm -rf "$2"
  make_dir "$(dirname "$2")"
  cp -R "$1" "$2"
  chmod -R u=rwX,go=rX "$2"
}

share="${DESTDIR}${PREFIX}/share/sneakgate"
doc="${DESTDIR}${PREFIX}/share/doc/sneakgate"
etc="${DESTDIR}/etc/sneakgate"

# names_app CONFIG APP: CONFIG lists PREFIX's APP among its apps (a line that is not
# a comment).
names_app() {
  grep -Eq "^[[:space:]]*-?[[:space:]]*manifest:[[:space:]]*[\"']?${PREFIX}/share/sneakgate/models/$2/manifest\.yaml" "$1"
}

# The configuration files, made before anything is installed. sneakgate.yaml lists
# the bundled apps: a line for an app this install leaves out is commented out, and
# every app it still names must be one this install ships. Its default for the other
# WITH_GPL_DATA setting ($tmp/sneakgate.yaml.other) counts as unedited too: switching
# the setting replaces it.
for f in sneakgate.yaml mosquitto.conf mosquitto.acl; do
  for_prefix "configs/$f" "$tmp/$f"
done
# comment_out FILE APP...: FILE's apps line of each APP becomes a comment.
comment_out() {
  local f="$1" app
  shift
  for app in "$@"; do
    sed -i -E "s|^([[:space:]]*)(- manifest:[[:space:]]*[\"']?${PREFIX}/share/sneakgate/models/${app}/manifest\.yaml.*)$|\1# \2  # GPL-derived, not installed: make install WITH_GPL_DATA=1 (THIRD_PARTY.md)|" "$f"
  done
}
if [[ -n "$with_gpl" ]]; then
  cp "$tmp/sneakgate.yaml" "$tmp/sneakgate.yaml.other"
  comment_out "$tmp/sneakgate.yaml.other" "${gpl_apps[@]}"
else
  mv "$tmp/sneakgate.yaml" "$tmp/sneakgate.yaml.other"
  cp "$tmp/sneakgate.yaml.other" "$tmp/sneakgate.yaml"
  comment_out "$tmp/sneakgate.yaml" "${gpl_apps[@]}"
fi
while read -r named; do
  app="${named#"${PREFIX}/share/sneakgate/models/"}"
  app="${app%/manifest.yaml}"
  [[ " ${apps[*]} " == *" $app "* ]] ||
    die "configs/sneakgate.yaml names $named, which this install does not ship"
done < <(grep -v '^[[:space:]]*#' "$tmp/sneakgate.yaml" |
  grep -Eo "${PREFIX}/share/sneakgate/models/[^/]+/manifest\.yaml" || true)

# edited FILE: the operator's /etc/sneakgate/FILE exists and is neither the new default
# nor (sneakgate.yaml) the other setting's: it is kept.
edited() {
  [[ -e "$etc/$1" ]] && ! cmp -s "$tmp/$1" "$etc/$1" &&
    ! { [[ -e "$tmp/$1.other" ]] && cmp -s "$tmp/$1.other" "$etc/$1"; }
}

# An operator's configuration that is kept must not serve an app this install
# removes: stop before installing anything.
if edited sneakgate.yaml; then
  for app in "${skipped[@]}"; do
    if names_app "$etc/sneakgate.yaml" "$app"; then
      die "$etc/sneakgate.yaml serves the $app app, whose GPL-derived data this install leaves out (THIRD_PARTY.md): run \`make install WITH_GPL_DATA=1\`, or remove $app from its apps first; nothing was installed"
    fi
  done
  if [[ -z "$with_gpl" ]] && names_app "$etc/sneakgate.yaml" vad &&
    grep -Eq '^[[:space:]]*(label_shift:[[:space:]]*true|policy:[[:space:]]*["'"'"']?cascade)' "$etc/sneakgate.yaml"; then
    echo "install: warning: $etc/sneakgate.yaml sets label_shift or the cascade policy, which read vad's validation split; it is not installed without WITH_GPL_DATA=1 (THIRD_PARTY.md)" >&2
  fi
fi

install -D -m 0755 "$BIN" "${DESTDIR}${PREFIX}/bin/sneakgate"
make_dir "${DESTDIR}${PREFIX}/lib/sneakgate" "$share" "$share/models" "$doc"
install -D -m 0644 "$ORT_LIB" "${DESTDIR}${PREFIX}/lib/sneakgate/libonnxruntime.so.${ORT_VERSION}"

for app in "${apps[@]}"; do
  copy_tree "models/$app" "$share/models/$app"
done
if [[ -z "$with_gpl" ]]; then
  for app in "${skipped[@]}"; do
    rm -rf "${share:?}/models/$app"
  done
  for f in "${gpl_files[@]}"; do
    rm -f "$share/models/$f"
    rmdir --ignore-fail-on-non-empty "$(dirname "$share/models/$f")"
  done
fi
# Earlier versions installed the whole models/ directory: its build sources go.
rm -rf "$share/models/train" "$share/models/tools" "$share/models/examples" \
  "$share/models/build.sh" "$share/models/README.md"

for f in README.md LICENSE THIRD_PARTY.md; do
  install -D -m 0644 "$f" "$doc/$f"
done
install -D -m 0644 models/README.md "$doc/models/README.md"
copy_tree docs "$doc/docs"

make_dir "$etc"
for f in sneakgate.yaml mosquitto.conf mosquitto.acl; do
  install_config "$f"
done

for_prefix systemd/sneakgate.service "$tmp/sneakgate.service"
install -D -m 0644 "$tmp/sneakgate.service" "${DESTDIR}${UNITDIR}/sneakgate.service"

gpl_list="$(printf 'models/%s/, ' "${gpl_apps[@]}")$(printf 'models/%s, ' "${gpl_files[@]}")"
if [[ -n "$with_gpl" ]]; then
  echo "install: WITH_GPL_DATA=1: installed the GPL-derived data too (${gpl_list%, }): this installation carries GPL-2 material (THIRD_PARTY.md)"
else
  echo "install: left out the GPL-derived data (${gpl_list%, }; THIRD_PARTY.md): make install WITH_GPL_DATA=1 installs it"
fi
echo "installed under ${DESTDIR:-/} (PREFIX $PREFIX); start with: systemctl daemon-reload && systemctl enable --now sneakgate"
echo "broker: ${PREFIX}/share/doc/sneakgate/docs/deployment.md (cp /etc/sneakgate/mosquitto.conf /etc/mosquitto/conf.d/sneakgate.conf)"
