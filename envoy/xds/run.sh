#!/usr/bin/env bash
# `make run-xds`: the edgeguard demo with Envoy configured over ADS by `edgeguard xds`.
# Starts the echo upstream, `edgeguard xds --config envoy/xds/demo.yaml` and Envoy from the tiny
# xDS bootstrap, then prints requests to try. Edit envoy/xds/demo.yaml while it runs: changes
# are live within a second. Ctrl-C stops everything.
# Ports (override with the environment): Envoy 10000, admin 9901, echo upstream 18080,
# ADS 18000, xds metrics 18001.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ENVOY=${EDGEGUARD_ENVOY:-$ROOT/.tools/venv/lib/python3.11/site-packages/envoy/_bin/envoy}
WASM_DIR=${EDGEGUARD_WASM_DIR:-$ROOT/target/wasm32-wasip1/release}
# `runtime: native` filters: Envoy loads lib<module>.so from here (`make build` puts them there)
NATIVE_DIR=${EDGEGUARD_NATIVE_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/native}
BIN=${EDGEGUARD_BIN:-$ROOT/target/release/edgeguard}
CONFIG=${EDGEGUARD_XDS_CONFIG:-$ROOT/envoy/xds/demo.yaml}
export EDGEGUARD_DEMO_PORT=${EDGEGUARD_DEMO_PORT:-10000}
export EDGEGUARD_DEMO_ECHO_PORT=${EDGEGUARD_DEMO_ECHO_PORT:-18080}
export EDGEGUARD_WASM_DIR=$WASM_DIR
export EDGEGUARD_NATIVE_DIR=$NATIVE_DIR
ADMIN_PORT=${EDGEGUARD_DEMO_ADMIN_PORT:-9901}
XDS_PORT=${EDGEGUARD_XDS_PORT:-18000}
METRICS_PORT=${EDGEGUARD_XDS_METRICS_PORT:-18001}
NODE_ID=${EDGEGUARD_NODE_ID:-edgeguard-demo}
NODE_CLUSTER=${EDGEGUARD_NODE_CLUSTER:-edgeguard}
RUN_DIR=${EDGEGUARD_DEMO_DIR:-$ROOT/.run}

for f in "$ENVOY" "$BIN" "$WASM_DIR/jwt_shape.wasm" "$CONFIG"; do
  [ -e "$f" ] || { echo "missing $f: run 'make run-xds' (it installs and builds everything)"; exit 1; }
done
mkdir -p "$RUN_DIR"

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "edgeguard xds demo stopped."
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

python3 envoy/render.py envoy/xds/bootstrap.yaml \
  NODE_ID="$NODE_ID" NODE_CLUSTER="$NODE_CLUSTER" ADMIN_PORT="$ADMIN_PORT" XDS_PORT="$XDS_PORT" \
  > "$RUN_DIR/envoy-xds.yaml"

"$BIN" echo --listen "127.0.0.1:$EDGEGUARD_DEMO_ECHO_PORT" > "$RUN_DIR/echo.log" 2>&1 &
pids+=($!)
"$BIN" xds --config "$CONFIG" --port "$XDS_PORT" --metrics-port "$METRICS_PORT" > "$RUN_DIR/xds.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  if curl -fs "http://127.0.0.1:$METRICS_PORT/healthz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "${pids[1]}" 2>/dev/null; then echo "edgeguard xds exited; see $RUN_DIR/xds.log:"; tail -5 "$RUN_DIR/xds.log"; exit 1; fi
  sleep 0.1
done
ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$NATIVE_DIR "$ENVOY" -c "$RUN_DIR/envoy-xds.yaml" --disable-hot-restart --concurrency 2 -l info > "$RUN_DIR/envoy.log" 2>&1 &
pids+=($!)

# ready = the listener delivered over LDS answers (the filter's config arrives over ECDS)
for _ in $(seq 1 150); do
  if curl -s -o /dev/null "http://127.0.0.1:$EDGEGUARD_DEMO_PORT/v1/shape" 2>/dev/null; then break; fi
  if ! kill -0 "${pids[2]}" 2>/dev/null; then echo "Envoy exited; see $RUN_DIR/envoy.log:"; tail -20 "$RUN_DIR/envoy.log"; exit 1; fi
  sleep 0.2
done
curl -s -o /dev/null "http://127.0.0.1:$EDGEGUARD_DEMO_PORT/v1/shape" || { echo "Envoy got no listener from edgeguard xds; see $RUN_DIR/*.log"; exit 1; }

TOKEN=$("$BIN" token --table items --sub demo-user --ttl 1h)
BASE="http://127.0.0.1:$EDGEGUARD_DEMO_PORT"
cat <<TXT

edgeguard xds demo is up: Envoy (node $NODE_ID) got its listener, route, cluster, endpoints and
the jwt-shape filter from edgeguard xds serving $CONFIG (logs in $RUN_DIR). Try:

  # 200: the token's shape claim covers table=items
  curl -s -H "Authorization: Bearer $TOKEN" '$BASE/v1/shape?table=items&offset=-1'

  # 401: no token (or an invalid one)
  curl -si '$BASE/v1/shape?table=items&offset=-1'

  # 403: a valid token, but not for this shape
  curl -si -H "Authorization: Bearer $TOKEN" '$BASE/v1/shape?table=secrets&offset=-1'

  # control plane: versions, streams, pushes, NACKs, reloads
  curl -s http://127.0.0.1:$METRICS_PORT/status
  curl -s http://127.0.0.1:$METRICS_PORT/metrics | grep edgeguard_xds
  # what Envoy runs:  curl -s http://127.0.0.1:$ADMIN_PORT/config_dump

Edit $CONFIG and save: the change is pushed at once (a file that does not validate is refused,
see $RUN_DIR/xds.log). Ctrl-C stops everything.
TXT
echo "ready"
wait -n "${pids[@]}" || true
echo "a demo process exited; see $RUN_DIR/*.log"
