#!/usr/bin/env bash
# The API contract: schemathesis (pinned below) generates requests from the appliance's own
# OpenAPI document and checks every answer against it (--checks all: status codes, content
# types, headers and bodies as documented, schema-violating requests refused, schema-valid ones
# accepted, no 5xx, auth enforced, deleted things gone), against a real appliance over HTTPS
# on loopback with a fresh SQLite store. Any failure fails the run.
#
#   scripts/api-contract.sh [path/to/edgelb]      (default: target/release/edgelb)
set -euo pipefail
cd "$(dirname "$0")/.."

EDGELB=${1:-target/release/edgelb}
SCHEMATHESIS_VERSION=4.32.5
VENV=target/schemathesis-venv
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$EDGELB" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --dataplane none >"$WORK/serve.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do
    curl -skf "https://127.0.0.1:$PORT/healthz" >/dev/null && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/serve.log"; echo "the appliance did not start" >&2; exit 1; }
    sleep 0.1
done
TOKEN=$(sed -n 's/^export EDGELB_TOKEN=//p' "$WORK/serve.log")
[ -n "$TOKEN" ] || { cat "$WORK/serve.log"; echo "no admin token in the first start's output" >&2; exit 1; }
# elb_<12 hex digits of id>_<secret>
EDGELB_CONTRACT_TOKEN_ID=$(printf '%s' "$TOKEN" | sed 's/^elb_\([0-9a-f]\{12\}\)_.*/\1/')
export EDGELB_CONTRACT_TOKEN_ID

status=0
SCHEMATHESIS_HOOKS=hooks PYTHONPATH=scripts/schemathesis PYTHONDONTWRITEBYTECODE=1 \
    "$VENV/bin/schemathesis" --config-file scripts/schemathesis/schemathesis.toml \
    run "https://127.0.0.1:$PORT/api/v1/openapi.json" \
    --header "Authorization: Bearer $TOKEN" --tls-verify false \
    --checks all --seed "${EDGELB_CONTRACT_SEED:-20261207}" --no-color --continue-on-failure \
    || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- appliance log (last 40 lines)"
    tail -n 40 "$WORK/serve.log"
fi
exit "$status"
