#!/usr/bin/env bash
# Installs the Debian packages sneakgate needs to run and test: the Mosquitto broker
# and clients (integration tests, operators' tools), and python3-paho-mqtt for the
# Python device example's integration test. The tests replay the samples and
# validation splits committed under models/; `--models` adds what retraining needs.
# Idempotent: installs only what is missing, runs apt-get update at most once.
set -euo pipefail

pkgs=(mosquitto mosquitto-clients python3-paho-mqtt)
# `make models` needs more (training): see models/README.md.
if [[ "${1:-}" == "--models" ]]; then
  pkgs+=(dataset-fashion-mnist python3-torch python3-sklearn python3-onnx python3-rdata
         python3-yaml r-cran-mlbench pocketsphinx-testdata klettres-data sonic-pi-samples
         sox libsox-fmt-base)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Installing the mosquitto package starts its system-wide broker on :1883, which
# would clash with the gateway's embedded broker in `make run` (tests start their
# own brokers): stop and disable that service, only when this run installed the
# package. A Mosquitto that was already installed may be a box's production broker:
# it is left alone, as is any other mosquitto process.
if [[ " ${missing[*]} " == *" mosquitto "* ]] &&
  command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
  $sudo systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
