#!/usr/bin/env bash
# Brings up the edgeguard demo on this machine and prints requests to try. Ctrl-C stops it.
#   Envoy          127.0.0.1:10000 (jwt-shape on /v1/shape, portal-auth + local_ratelimit on /v1/<app>),
#                  the filters as native dynamic modules (EDGEGUARD_FLAVOUR=wasm: proxy-wasm)
#                  127.0.0.1:10002 (/v1/<app> through ext_authz → edgeguard authz)
#   Envoy admin    127.0.0.1:9901
#   edgeguard authz 127.0.0.1:10001 (gRPC ext_authz), 127.0.0.1:9090 (/metrics, store endpoint);
#                  DB-less: apps from envoy/demo/portal-apps.yaml (edit it: hot-reloaded)
#   edgeguard echo 127.0.0.1:18080 (the upstream: answers with what it received)
#   edgeguard gatekeeper 127.0.0.1:10003 (POST /gatekeeper/<table> answers a shape token, ES256
#                  keys in $RUN_DIR/gatekeeper-keys published at /.well-known/jwks.json; policy
#                  envoy/demo/gatekeeper-policy.yaml, hot-reloaded; DEV MODE: everyone is demo-user)
#   Envoy          127.0.0.1:10004 (/v1/shape for gatekeeper tokens: jwt-shape's remote_jwks is the
#                  gatekeeper's JWKS; /gatekeeper/ and /.well-known/ proxied to the gatekeeper)
#   edgeguard enroll 127.0.0.1:10005 (device enrollment: CSR + one-time token → a certificate
#                  from a demo fleet CA made in $RUN_DIR; DB-less registry $RUN_DIR/devices.yaml,
#                  which edgeguard authz watches too: devices reach every filter through the store)
#   Envoy          127.0.0.1:10443 (mutual TLS, client certificates of the fleet CA required:
#                  /v1/<app> as a device through portal-auth; /gatekeeper/ with the certificate
#                  forwarded in x-forwarded-client-cert, so the gatekeeper mints bound tokens)
# Every port can be overridden with the environment (EDGEGUARD_DEMO_*).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

ENVOY=${EDGEGUARD_ENVOY:-$ROOT/.tools/venv/lib/python3.11/site-packages/envoy/_bin/envoy}
WASM_DIR=${EDGEGUARD_WASM_DIR:-$ROOT/target/wasm32-wasip1/release}
BIN=${EDGEGUARD_BIN:-$ROOT/target/release/edgeguard}
PORT=${EDGEGUARD_DEMO_PORT:-10000}
EXT_AUTHZ_PORT=${EDGEGUARD_DEMO_EXT_AUTHZ_PORT:-10002}
ADMIN_PORT=${EDGEGUARD_DEMO_ADMIN_PORT:-9901}
AUTHZ_PORT=${EDGEGUARD_DEMO_AUTHZ_PORT:-10001}
AUTHZ_HTTP_PORT=${EDGEGUARD_DEMO_AUTHZ_HTTP_PORT:-9090}
ECHO_PORT=${EDGEGUARD_DEMO_ECHO_PORT:-18080}
GATEKEEPER_PORT=${EDGEGUARD_DEMO_GATEKEEPER_PORT:-10003}
GATEKEEPER_SHAPE_PORT=${EDGEGUARD_DEMO_GATEKEEPER_SHAPE_PORT:-10004}
GATEKEEPER_POLICY=${EDGEGUARD_DEMO_GATEKEEPER_POLICY:-$ROOT/envoy/demo/gatekeeper-policy.yaml}
GATEKEEPER_TOKEN_TTL=${EDGEGUARD_DEMO_GATEKEEPER_TOKEN_TTL:-1h}
ENROLL_PORT=${EDGEGUARD_DEMO_ENROLL_PORT:-10005}
DEVICE_PORT=${EDGEGUARD_DEMO_DEVICE_PORT:-10443}
# what plays Electric behind /v1/shape: the echo (default), or a real Electric on this port
ELECTRIC_PORT=${EDGEGUARD_DEMO_ELECTRIC_PORT:-$ECHO_PORT}
FREE_PLAN_BURST=${EDGEGUARD_DEMO_FREE_PLAN_BURST:-5}
# origins whose pages may call the demo (RE2, whole-origin match): local dev servers by default
CORS_ORIGIN_REGEX=${EDGEGUARD_DEMO_CORS_ORIGIN_REGEX:-'https?://(localhost|127\.0\.0\.1)(:[0-9]+)?'}
APPS_FILE=${EDGEGUARD_DEMO_APPS_FILE:-$ROOT/envoy/demo/portal-apps.yaml}
RUN_DIR=${EDGEGUARD_DEMO_DIR:-$ROOT/.run}
# which build of the filters Envoy loads: native (dynamic modules, line rate) or wasm (proxy-wasm)
FLAVOUR=${EDGEGUARD_FLAVOUR:-native}
NATIVE_DIR=${EDGEGUARD_NATIVE_DIR:-$ROOT/target/native}
# the store endpoint's bearer token, shared by edgeguard authz and portal-auth (a fresh one per run)
EDGEGUARD_STORE_TOKEN=${EDGEGUARD_STORE_TOKEN:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}
export EDGEGUARD_STORE_TOKEN
# edgeguard enroll's admin token (a fresh one per run)
ENROLL_ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

case "$FLAVOUR" in
  native) FILTER_FILES=("$NATIVE_DIR/libedgeguard_jwt_shape.so" "$NATIVE_DIR/libedgeguard_portal_auth.so") ;;
  wasm) FILTER_FILES=("$WASM_DIR/jwt_shape.wasm" "$WASM_DIR/portal_auth.wasm") ;;
  *) echo "EDGEGUARD_FLAVOUR must be native or wasm, not '$FLAVOUR'"; exit 1 ;;
esac
for f in "$ENVOY" "$BIN" "${FILTER_FILES[@]}" "$APPS_FILE" "$GATEKEEPER_POLICY"; do
  [ -e "$f" ] || { echo "missing $f: run 'make run' (it installs and builds everything)"; exit 1; }
done
mkdir -p "$RUN_DIR"
# a demo fleet CA (made once per run folder): edgeguard enroll signs device certificates with
# it and Envoy's device listener requires client certificates chaining to it; a second CA, for
# servers only, signs the certificate that listener presents for 127.0.0.1 (a fleet CA that
# also signed servers would make a server certificate pass as a client one)
ca() { # name, subject
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=$2" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$RUN_DIR/$1.key" -out "$RUN_DIR/$1.pem" 2>/dev/null
}
if [ ! -s "$RUN_DIR/fleet-ca.pem" ]; then
  ca fleet-ca "edgeguard demo fleet CA"
fi
if [ ! -s "$RUN_DIR/server-ca.pem" ] || [ ! -s "$RUN_DIR/envoy-server.pem" ]; then
  ca server-ca "edgeguard demo server CA"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$RUN_DIR/envoy-server.key" -out "$RUN_DIR/envoy-server.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$RUN_DIR/envoy-server.ext"
  openssl x509 -req -days 365 -sha256 -in "$RUN_DIR/envoy-server.csr" -CA "$RUN_DIR/server-ca.pem" \
    -CAkey "$RUN_DIR/server-ca.key" -CAcreateserial -extfile "$RUN_DIR/envoy-server.ext" \
    -out "$RUN_DIR/envoy-server.pem" 2>/dev/null
fi

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
  PORT="$PORT" EXT_AUTHZ_PORT="$EXT_AUTHZ_PORT" ADMIN_PORT="$ADMIN_PORT" ECHO_PORT="$ECHO_PORT" ELECTRIC_PORT="$ELECTRIC_PORT" \
  AUTHZ_PORT="$AUTHZ_PORT" AUTHZ_HTTP_PORT="$AUTHZ_HTTP_PORT" WASM_DIR="$WASM_DIR" \
  FREE_PLAN_BURST="$FREE_PLAN_BURST" FLAVOUR="$FLAVOUR" CORS_ORIGIN_REGEX="$CORS_ORIGIN_REGEX" \
  GATEKEEPER_PORT="$GATEKEEPER_PORT" GATEKEEPER_SHAPE_PORT="$GATEKEEPER_SHAPE_PORT" \
  DEVICE_PORT="$DEVICE_PORT" RUN_DIR="$RUN_DIR" \
  JWT_SHAPE_FILTER=@filter:jwt_shape:envoy/demo/jwt-shape.json \
  JWT_SHAPE_GATEKEEPER_FILTER=@filter:jwt_shape:envoy/demo/jwt-shape-gatekeeper.json \
  PORTAL_AUTH_FILTER=@filter:portal_auth:envoy/demo/portal-auth.json:EDGEGUARD_STORE_TOKEN \
  > "$RUN_DIR/envoy.yaml"

"$BIN" echo --listen "127.0.0.1:$ECHO_PORT" > "$RUN_DIR/echo.log" 2>&1 &
pids+=($!)
PORTAL_APPS_FILE="$APPS_FILE" EDGEGUARD_DEVICES_FILE="$RUN_DIR/devices.yaml" PORT="$AUTHZ_PORT" METRICS_PORT="$AUTHZ_HTTP_PORT" LISTEN_ADDRESS=127.0.0.1 \
  RATE_LIMIT_HEADERS=true EDGEGUARD_METERING=true EDGEGUARD_METERING_FLUSH_INTERVAL=250ms EDGEGUARD_QUOTA_HEADERS=all LOG_FORMAT=text "$BIN" authz > "$RUN_DIR/authz.log" 2>&1 &
pids+=($!)
# the gatekeeper, in development mode (everyone is demo-user) — never in production; its key
# directory lives in this run's folder (the first key is written at start and signs at once);
# a rotated key is published 2 minutes before it signs (jwt-shape refreshes this JWKS every 60 s)
# a caller that comes with a client certificate (the device listener forwards it in XFCC) gets
# a token bound to it (RFC 8705 cnf.x5t#S256); others get bearer tokens
EDGEGUARD_GATEKEEPER_DEV_ALLOW_ANYONE=true EDGEGUARD_GATEKEEPER_DEV_CLAIMS='{"sub":"demo-user"}' \
  EDGEGUARD_GATEKEEPER_BIND_TOKENS=when-presented \
  "$BIN" gatekeeper --listen "127.0.0.1:$GATEKEEPER_PORT" --policy "$GATEKEEPER_POLICY" \
  --key-dir "$RUN_DIR/gatekeeper-keys" --publish-delay 2m --token-ttl "$GATEKEEPER_TOKEN_TTL" --issuer edgeguard-gatekeeper-demo --audience electric \
  --shape-url "http://127.0.0.1:$GATEKEEPER_SHAPE_PORT/v1/shape" --public-url "http://127.0.0.1:$GATEKEEPER_PORT" \
  --log-format text > "$RUN_DIR/gatekeeper.log" 2>&1 &
pids+=($!)
EDGEGUARD_ENROLL_LISTEN="127.0.0.1:$ENROLL_PORT" EDGEGUARD_ENROLL_ADMIN_TOKEN="$ENROLL_ADMIN_TOKEN" \
  EDGEGUARD_CA_CERT="$RUN_DIR/fleet-ca.pem" EDGEGUARD_CA_KEY="$RUN_DIR/fleet-ca.key" \
  EDGEGUARD_TRUST_DOMAIN=demo.edgeguard EDGEGUARD_DEVICES_FILE="$RUN_DIR/devices.yaml" \
  "$BIN" enroll > "$RUN_DIR/enroll.log" 2>&1 &
pids+=($!)
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$NATIVE_DIR" \
  "$ENVOY" -c "$RUN_DIR/envoy.yaml" --disable-hot-restart --concurrency 2 -l info > "$RUN_DIR/envoy.log" 2>&1 &
pids+=($!)

ready() {
  curl -fs "http://127.0.0.1:$ADMIN_PORT/ready" 2>/dev/null | grep -q LIVE &&
    curl -fs "http://127.0.0.1:$AUTHZ_HTTP_PORT/readyz" >/dev/null 2>&1 &&
    curl -fs "http://127.0.0.1:$GATEKEEPER_PORT/readyz" >/dev/null 2>&1 &&
    curl -fs "http://127.0.0.1:$ENROLL_PORT/readyz" >/dev/null 2>&1
}
for _ in $(seq 1 150); do
  ready && break
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "a demo process exited; see $RUN_DIR/*.log:"; tail -5 "$RUN_DIR"/*.log; exit 1; }
  done
  sleep 0.2
done
ready || { echo "the demo did not get ready; see $RUN_DIR/*.log"; exit 1; }
# portal-auth syncs its store copy within its refresh interval (1 s)
for _ in $(seq 1 50); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v1/no_such_app")" = 404 ] && break
  sleep 0.1
done

TOKEN=$("$BIN" token --table items --sub demo-user --ttl 1h)
BASE="http://127.0.0.1:$PORT"
EXT="http://127.0.0.1:$EXT_AUTHZ_PORT"
GK="http://127.0.0.1:$GATEKEEPER_PORT"
GKSHAPE="http://127.0.0.1:$GATEKEEPER_SHAPE_PORT"
# one answer of the gatekeeper, turned into the request it allows (its `query`, URL-encoded)
GK_ANSWER=$(curl -fs -X POST "$GK/gatekeeper/items?columns=id,title")
GK_TOKEN=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["headers"]["Authorization"].split(" ",1)[1])' <<<"$GK_ANSWER")
GK_QUERY=$(python3 -c 'import json,sys,urllib.parse; print(urllib.parse.urlencode(json.load(sys.stdin)["query"]))' <<<"$GK_ANSWER")
cat <<TXT

edgeguard demo is up ($FLAVOUR filters; logs in $RUN_DIR). Try:

  # jwt-shape, 200: the token's shape claim covers table=items (the echo shows what Electric gets:
  #      client secrets stripped, the Electric secret injected, claims stamped)
  curl -s -H "Authorization: Bearer $TOKEN" '$BASE/v1/shape?table=items&offset=-1'
  # jwt-shape, 401: no token (or an invalid one)
  curl -si '$BASE/v1/shape?table=items&offset=-1'
  # jwt-shape, 403: a valid token, but not for this shape
  curl -si -H "Authorization: Bearer $TOKEN" '$BASE/v1/shape?table=secrets&offset=-1'

  # portal-auth, 200: a keyed app; Portal-* and Rl-* headers stamped (spoofed ones replaced)
  curl -s -H 'Authorization: Bearer demo-secret-key-0001' -H 'Portal-Account-ID: spoofed' '$BASE/v1/demo_keyed'
  # portal-auth, 401 / 404 / 429 (wrong key, unknown app, account over its monthly quota)
  curl -si -H 'Authorization: wrong' '$BASE/v1/demo_keyed'
  curl -si '$BASE/v1/no_such_app'
  curl -si '$BASE/v1/demo_over_quota'
  # local_ratelimit on the stamped Rl-Plan-Free header: $FREE_PLAN_BURST requests a minute per account, then 429
  for i in \$(seq 1 $((FREE_PLAN_BURST + 1))); do curl -s -o /dev/null -w '%{http_code} ' '$BASE/v1/demo_public'; done; echo

  # usage metering: every allowed request is counted (portal-auth reports to edgeguard authz every
  # 250 ms here, authz counts its own Checks); demo_quota's account may make 5 relays a month, so
  # requests turn into 429 once the counts are in (~1-2 s), with Retry-After and RateLimit headers
  for i in \$(seq 1 10); do curl -s -o /dev/null -w '%{http_code} ' '$BASE/v1/demo_quota'; sleep 0.5; done; echo
  curl -si '$BASE/v1/demo_quota' | grep -i -E '^HTTP|^retry-after|^ratelimit'
  # how much the account used this month (the store feed's token)
  curl -s -H "Authorization: Bearer $EDGEGUARD_STORE_TOKEN" 'http://127.0.0.1:$AUTHZ_HTTP_PORT/usage/v1/accounts/acct_quota'

  # the same verdicts through ext_authz → edgeguard authz (PEAS's deployment)
  curl -s -H 'Authorization: demo-secret-key-0001' '$EXT/v1/demo_keyed'
  # PEAS's grpcurl check against edgeguard authz (reflection: no .proto files needed)
  make grpcurl-check PORTAL_APP_ID=demo_keyed API_KEY=demo-secret-key-0001 AUTHZ_ADDR=127.0.0.1:$AUTHZ_PORT

  # edgeguard gatekeeper (dev mode: everyone is demo-user; policy envoy/demo/gatekeeper-policy.yaml):
  # 200, a token for demo-user's own items with two columns, and the exact where/params/columns to send
  curl -s -X POST '$GK/gatekeeper/items?columns=id,title'
  # ... used through Envoy (jwt-shape verifies it with the gatekeeper's JWKS and binds every parameter): 200
  curl -s -H "Authorization: Bearer $GK_TOKEN" '$GKSHAPE/v1/shape?offset=-1&$GK_QUERY'
  # 403 from the gatekeeper: a column the policy does not allow
  curl -si -X POST '$GK/gatekeeper/items?columns=id,secret'
  # the public keys jwt-shape fetches; rotate with: $BIN gatekeeper rotate --key-dir $RUN_DIR/gatekeeper-keys --publish-delay 2m
  curl -s '$GK/.well-known/jwks.json'

  # edgeguard enroll (device identity): the operator makes a one-use enrollment token for an
  # account (admin token of this run); a device makes its key and CSR (the key never leaves it)
  # and trades the CSR and the token for its certificate (CN and SPIFFE id assigned by edgeguard)
  curl -s -X POST -H 'Authorization: Bearer $ENROLL_ADMIN_TOKEN' -d '{"account_id": "acct_team", "ttl_seconds": 600, "uses": 1}' 'http://127.0.0.1:$ENROLL_PORT/admin/v1/enrollment-tokens'
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=my-kiosk -keyout $RUN_DIR/device.key -out $RUN_DIR/device.csr
  curl -sf -H "Authorization: Bearer <the token above>" -H 'Content-Type: application/pkcs10' --data-binary @$RUN_DIR/device.csr -o $RUN_DIR/device.pem 'http://127.0.0.1:$ENROLL_PORT/enroll/v1'
  openssl verify -CAfile $RUN_DIR/fleet-ca.pem $RUN_DIR/device.pem
  # the fleet as the registry holds it ($RUN_DIR/devices.yaml; last_seen_at is written by
  # heartbeats with a Postgres registry, so it stays empty in this DB-less demo)
  curl -s -H 'Authorization: Bearer $ENROLL_ADMIN_TOKEN' 'http://127.0.0.1:$ENROLL_PORT/admin/v1/devices'
  # call as the device over mutual TLS (demo_device takes device certificates of acct_team only):
  # 200, with Portal-Device-ID / Portal-Account-ID stamped for the upstream
  curl -s --cacert $RUN_DIR/server-ca.pem --cert $RUN_DIR/device.pem --key $RUN_DIR/device.key 'https://127.0.0.1:$DEVICE_PORT/v1/demo_device'
  # without a certificate the TLS handshake is refused (curl: exit 56)
  curl -s --cacert $RUN_DIR/server-ca.pem 'https://127.0.0.1:$DEVICE_PORT/v1/demo_device'
  # the gatekeeper, reached with the certificate: its token is bound to it (cnf.x5t#S256, RFC 8705)
  curl -s --cacert $RUN_DIR/server-ca.pem --cert $RUN_DIR/device.pem --key $RUN_DIR/device.key -X POST 'https://127.0.0.1:$DEVICE_PORT/gatekeeper/items'
  # revoke the device (id from the list above): the same call as the device gets 401 within 2 s
  curl -s -X POST -H 'Authorization: Bearer $ENROLL_ADMIN_TOKEN' 'http://127.0.0.1:$ENROLL_PORT/admin/v1/devices/<device id>/revoke'

  # mint other tokens:  $BIN token --table todos --where 'owner = \$1' --params 1=alice --columns id,title
  # metrics:            curl -s http://127.0.0.1:$ADMIN_PORT/stats/prometheus | grep edgeguard
  #                     curl -s http://127.0.0.1:$AUTHZ_HTTP_PORT/metrics | grep peas_

Ctrl-C stops everything.
TXT
echo "ready"
wait -n "${pids[@]}" || true
echo "a demo process exited; see $RUN_DIR/*.log"
