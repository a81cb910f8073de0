#!/usr/bin/env bash
# `make api-check`: property-based tests of the HTTP API against its OpenAPI document,
# docs/openapi.yaml. The whole local stack runs (ephemeral Redis and PostgreSQL, the backend
# with RUNTIME=local and the example queues, the proxy). schemathesis then sends
# schema-driven and malformed requests, directly and through the proxy under /api, as an
# operator, as a player, and as a session's game server, and checks every answer: never a
# 5xx, status, content type, headers and body as the document says, no endpoint open without
# its token, nothing slower than 5 s but a long poll. Afterwards the backend and the proxy
# must still be ready and have logged no panic.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${MAX_EXAMPLES:-40}
SEED=${SEED:-1}
[[ "$MAX_EXAMPLES" =~ ^[1-9][0-9]*$ ]] || mp_die "MAX_EXAMPLES must be a whole number above 0, got '$MAX_EXAMPLES'."
[[ "$SEED" =~ ^[0-9]+$ ]] || mp_die "SEED must be a whole number, got '$SEED'."

venv=${MP_RUN_DIR:-.run}/venv-api
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv" >/dev/null 2>&1 ||
    mp_die "python3 cannot make a virtual environment: install python3-venv (apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
mp_build

run_dir=${MP_RUN_DIR:-.run}/api-check-$$
# The document itself first: YAML lets a mapping repeat a key (a second "429" under one
# operation was once read as the first's), which every reader takes differently. None may.
"$venv/bin/python" - docs/openapi.yaml <<'PY' || mp_die "api-check: docs/openapi.yaml repeats a key (above)"
import sys
import yaml


class Strict(yaml.SafeLoader):
    pass


def mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            sys.exit(f"{sys.argv[1]}:{key_node.start_mark.line + 1}: the key {key!r} appears twice in one mapping")
        seen.add(key)
    return loader.construct_mapping(node, deep)


Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
yaml.load(open(sys.argv[1]), Strict)
PY
MATCHMAKING_CONFIG=examples/queues.yaml mp_start_stack "$run_dir"
bin=$MP_BIN

# A live session to test against: twelve players joined by the studio's service form it, and
# its game server waits for them (up to 60 s), so one is seeded before each run below.
seed() {
  local name=$1 i session=
  for i in $(seq 1 12); do
    curl -fsS -o /dev/null -H "Authorization: Bearer $MP_SERVICE_TOKEN" -H 'Content-Type: application/json' \
      -d "{\"player_id\": \"seed-$name-$i\"}" "$MP_BACKEND_URL/match/join"
  done
  for _ in $(seq 1 100); do
    session=$(curl -fsS -H "Authorization: Bearer $MP_SERVICE_TOKEN" "$MP_BACKEND_URL/match/status?player_id=seed-$name-1" |
      python3 -c 'import json, sys; b = json.load(sys.stdin); print(b["session_id"] if b["status"] == "matched" else "")')
    [ -z "$session" ] || break
    sleep 0.1
  done
  [ -n "$session" ] || mp_die "the seeded session never became matched; see $MP_STACK_DIR/backend.log"
  echo "$session"
}

# The report token of a session's game server, minted as the backend mints it (HS256 with
# TICKET_SECRET, audience matchplane-report), or with a second argument a warm server's token
# for that server id (audience matchplane-warm).
report_token() {
  python3 - "$MP_TICKET_SECRET" "$1" "${2:-matchplane-report}" <<'PY'
import base64, hashlib, hmac, json, sys, time
secret, session, audience = sys.argv[1:]
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=")
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sid": session, "aud": audience, "iat": now, "exp": now + 3600}).encode())
sig = b64(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
print((head + b"." + body + b"." + sig).decode())
PY
}

# Every check, with these exceptions: a long poll may take its whole wait (up to 30 s); a join
# that fits the document may still be refused by the queue's rules (422: an unknown queue, an
# attribute it does not read, a party too big), and so may a report whose body names another
# session than its path; the result report goes to the seeded session with that session's
# token.
config() {
  local session=$1 wait=$2 poll=
  # A long poll's whole range is tried in the first run; later runs poll for a second, so that
  # their time goes to other cases rather than to waits.
  [ "$wait" = any ] || poll="parameters = { wait = $wait }"
  cat <<TOML
# Nothing kept between runs: a run depends on SEED alone.
[cache]
enabled = false

[checks]
enabled = true
max_response_time = 5.0

[[operations]]
include-operation-id = "join"
checks.max_response_time = 35.0
$poll
checks.positive_data_acceptance.expected-statuses = ["2XX", 401, 403, 404, 409, 422, 429]

[[operations]]
include-operation-id = "status"
checks.max_response_time = 35.0
$poll

TOML
  # The game server's calls, each with the session's report token.
  local op
  for op in resultReport serverReady serverHealth serverBackfill serverRoster; do
    cat <<TOML

[[operations]]
include-operation-id = "$op"
checks.positive_data_acceptance.expected-statuses = ["2XX", 401, 403, 404, 409, 422, 429]
parameters = { session_id = "$session" }
headers = { Authorization = "Bearer $(report_token "$session")" }
TOML
  done
  # A warm server's poll, for a server nobody started (it waits no time: 204).
  cat <<TOML

[[operations]]
include-operation-id = "warmSession"
checks.positive_data_acceptance.expected-statuses = ["2XX", 401, 403, 422]
parameters = { server_id = "api-check-warm", wait = 0 }
headers = { Authorization = "Bearer $(report_token api-check-warm matchplane-warm)" }
TOML
}

player_token=$("$bin/loadgen" token --player alice --player-token-secret "$MP_PLAYER_TOKEN_SECRET")
failed=()
# One worker: with two, hypothesis parses its own sources from two threads at once, which
# Python 3.11 can fail with "AST constructor recursion depth mismatch".
st() {
  local name=$1 url=$2 wait=$3 session
  shift 3
  echo "== schemathesis: $name"
  session=$(seed "$name")
  config "$session" "$wait" >"$run_dir/schemathesis-$name.toml"
  if ! "$venv/bin/st" --config-file "$run_dir/schemathesis-$name.toml" run docs/openapi.yaml --url "$url" \
    --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 1 --request-timeout 45 --no-color \
    --report junit --report-dir "$run_dir/report-$name" "$@"; then
    failed+=("$name")
  fi
}
internal=(--exclude-operation-id resultReport --exclude-operation-id serverReady --exclude-operation-id serverHealth
  --exclude-operation-id serverBackfill --exclude-operation-id serverRoster --exclude-operation-id warmSession)
st operator "$MP_BACKEND_URL" any "${internal[@]}" -H "Authorization: Bearer $MP_ADMIN_TOKEN"
st player "$MP_BACKEND_URL" 1 "${internal[@]}" -H "Authorization: Bearer $player_token"
# (The game server's operations have no links to follow: no stateful phase.)
st game-server "$MP_BACKEND_URL" 1 --include-operation-id resultReport --include-operation-id serverReady \
  --include-operation-id serverHealth --include-operation-id serverBackfill --include-operation-id serverRoster \
  --include-operation-id warmSession --phases examples,coverage,fuzzing
# The proxy serves the same under /api, but not the backend's /internal/* or /metrics.
# (Nor the console, without PROXY_CONSOLE.)
st proxy "$MP_PROXY_URL/api" 1 "${internal[@]}" --exclude-operation-id metrics --exclude-operation-id consolePage \
  --exclude-operation-id consoleLogin --exclude-operation-id consoleSession --exclude-operation-id consoleLogout \
  -H "Authorization: Bearer $MP_ADMIN_TOKEN"

for what in backend proxy; do
  url=$MP_BACKEND_URL
  [ "$what" = backend ] || url=$MP_PROXY_URL
  curl -fsS -o /dev/null "$url/health" || failed+=("$what not ready afterwards")
  ! grep -q 'panicked' "$MP_STACK_DIR/$what.log" || failed+=("$what panicked (see $MP_STACK_DIR/$what.log)")
done
if [ "${#failed[@]}" -gt 0 ]; then
  joined=$(IFS=,; echo "${failed[*]}")
  echo "api-check failed: ${joined//,/, }; reports under $run_dir" >&2
  exit 1
fi
echo "api-check: every answer agreed with docs/openapi.yaml (as operator, player, game server, and through the proxy)"
