#!/usr/bin/env bash
# Brings up the edgeguard demo on this machine and prints requests to try. Ctrl-C stops it.
# Ports (override with the environment): Envoy 10000, admin 9901, echo upstream 18080.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ENVOY=${EDGEGUARD_ENVOY:-$ROOT/.tools/venv/lib/python3.11/site-packages/envoy/_bin/envoy}
WASM_DIR=${EDGEGUARD_WASM_DIR:-$ROOT/target/wasm32-wasip1/release}
BIN=${EDGEGUARD_BIN:-$ROOT/target/release/edgeguard}
PORT=${EDGEGUARD_DEMO_PORT:-10000}
ADMIN_PORT=${EDGEGUARD_DEMO_ADMIN_PORT:-9901}
ECHO_PORT=${EDGEGUARD_DEMO_ECHO_PORT:-18080}
RUN_DIR=${EDGEGUARD_DEMO_DIR:-$ROOT/.run}

for f in "$ENVOY" "$BIN" "$WASM_DIR/jwt_shape.wasm"; do
  [ -e "$f" ] || { echo "missing $f: run 'make run' (it installs and builds everything)"; exit 1; }
done
mkdir -p "$RUN_DIR"

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "edgeguard demo stopped."
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

python3 envoy/render.py envoy/demo/envoy.yaml \
  PORT="$PORT" ADMIN_PORT="$ADMIN_PORT" ECHO_PORT="$ECHO_PORT" WASM_DIR="$WASM_DIR" \
  JWT_SHAPE_CONFIG=@envoy/demo/jwt-shape.json > "$RUN_DIR/envoy.yaml"

"$BIN" echo --listen "127.0.0.1:$ECHO_PORT" > "$RUN_DIR/echo.log" 2>&1 &
pids+=($!)
"$ENVOY" -c "$RUN_DIR/envoy.yaml" --disable-hot-restart --concurrency 2 -l info > "$RUN_DIR/envoy.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 150); do
  if curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" 2>/dev/null | grep -q LIVE; then break; fi
  if ! kill -0 "${pids[1]}" 2>/dev/null; then echo "Envoy exited; see $RUN_DIR/envoy.log:"; tail -20 "$RUN_DIR/envoy.log"; exit 1; fi
  sleep 0.2
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" >/dev/null || { echo "Envoy is not ready; see $RUN_DIR/envoy.log"; exit 1; }

TOKEN=$("$BIN" token --table items --sub demo-user --ttl 1h)
BASE="http://127.0.0.1:$PORT"
cat <<TXT

edgeguard demo is up (logs in $RUN_DIR). Try:

  # 200: the token's shape claim covers table=items (the echo shows what Electric would get:
  #      client secrets stripped, the Electric secret injected, claims stamped)
  curl -s -H "Authorization: Bearer $TOKEN" '$BASE/v1/shape?table=items&offset=-1'

  # 401: no token (or an invalid one)
  curl -si '$BASE/v1/shape?table=items&offset=-1'

  # 403: a valid token, but not for this shape
  curl -si -H "Authorization: Bearer $TOKEN" '$BASE/v1/shape?table=secrets&offset=-1'

  # mint other tokens:  $BIN token --table todos --where 'owner = \$1' --params 1=alice --columns id,title
  # metrics:            curl -s http://127.0.0.1:$ADMIN_PORT/stats/prometheus | grep edgeguard

Ctrl-C stops everything.
TXT
echo "ready"
wait -n "${pids[@]}" || true
echo "a demo process exited; see $RUN_DIR/*.log"
