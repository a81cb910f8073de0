#!/usr/bin/env bash
# The whole matchplane stack on this machine: ephemeral Redis and PostgreSQL, the backend
# (RUNTIME=local, one game-server process per session) and the proxy, on free loopback ports.
# Source it, then:
#   mp_start_stack DIR   # (with MATCHMAKING_CONFIG, WARM_POOL_MIN, WARM_POOL_MAX when set) exports MP_PROXY_URL, MP_BACKEND_URL, MP_ADMIN_TOKEN, MP_SERVICE_TOKEN,
#                        # MP_PLAYER_TOKEN_SECRET (the HS256 key player tokens are minted with),
#                        # MP_TICKET_SECRET (the game tickets' and report tokens' key)
#                        # With MP_TLS=1 the proxy also speaks TLS on a port of its own, with a
#                        # certificate of a throwaway CA made for the run, and the backend sends
#                        # players there (PUBLIC_TLS): exports MP_PROXY_TLS_URL, MP_TLS_CA (the CA's
#                        # PEM) and MP_TLS_SPKI (the certificate key's SHA-256, base64). The proxy
#                        # gets MP_ALLOWED_ORIGINS as its ALLOWED_ORIGINS when set, and serves the
#                        # console under /api/console/ with MP_PROXY_CONSOLE=1.
#   mp_stop_stack        # SIGTERM the proxy, then the backend (servers drain), then the services
#   mp_wait_warm URL     # with WARM_POOL_MIN > 0: waits (up to 60 s) until the backend at URL
#                        # reports WARM_POOL_MIN idle warm servers, and says how long it took
# shellcheck source=scripts/services.sh
. "$(dirname "${BASH_SOURCE[0]}")/services.sh"

# mp_sim_refused URL: fails, naming each one, when kube-sim at URL refused any Kubernetes call
# under the Role it enforces (deploy/backend/rbac.yaml), as a real API server would have, or
# any connection to a Pod under the NetworkPolicy it enforces, as a cluster's CNI would have.
mp_sim_refused() {
  local status=0
  curl -fsS "$1/sim/calls" | python3 -c 'import json,sys; bad = [c for c in json.load(sys.stdin) if c["forbidden"]]; [print("kubernetes call refused by deploy/backend/rbac.yaml: " + c["verb"] + " " + c["resource"] + " (" + str(c["forbidden"]) + " times)") for c in bad]; sys.exit(1 if bad else 0)' || status=1
  curl -fsS "$1/sim/network" | python3 -c 'import json,sys; bad = [f for f in json.load(sys.stdin) if f["denied"]]; [print("connection refused by NetworkPolicy: " + f["from"] + " -> " + f["to"] + ":" + str(f["port"]) + " (" + str(f["denied"]) + " times)") for f in bad]; sys.exit(1 if bad else 0)' || status=1
  return "$status"
}

# mp_sim_network_flags BIN: kube-sim's flags enforcing deploy/'s game-server NetworkPolicy,
# with the backend and proxy binaries under BIN seen as their Pods, one per line.
mp_sim_network_flags() {
  printf '%s\n' --network-policy deploy/backend/game-servers-networkpolicy.yaml \
    --host-workload "app.kubernetes.io/name=matchplane-backend@$1/backend" \
    --host-workload "app.kubernetes.io/name=matchplane-proxy@$1/proxy"
}

mp_wait_http() {
  local url=$1 what=$2 pid=$3 log=${4:-$MP_STACK_DIR/$2.log} reason
  for _ in $(seq 1 150); do
    curl -fsS "$url" >/dev/null 2>&1 && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      # A binary that refuses its settings says why in one line, its last.
      reason=$(tail -n 1 "$log" 2>/dev/null || true)
      mp_die "$what exited during start-up${reason:+: $reason} (its log: $log)"
    fi
    sleep 0.1
  done
  mp_die "$what did not become healthy in 15 s; see its log under $MP_STACK_DIR"
}

mp_wait_warm() {
  local url=$1 idle=0 began
  [ "${WARM_POOL_MIN:-0}" -gt 0 ] || return 0
  began=$(date +%s.%N)
  for _ in $(seq 1 600); do
    idle=$(curl -fsS "$url/health" | python3 -c 'import json,sys; print((json.load(sys.stdin).get("warm_servers") or {}).get("idle", 0))')
    [ "$idle" -ge "$WARM_POOL_MIN" ] && break
    sleep 0.1
  done
  echo "warm pool: $idle servers ready in $(python3 -c "import time; print(f'{time.time() - $began:.1f}')") s"
}

# mp_make_tls DIR: a throwaway CA and an ECDSA P-256 certificate it signs for 127.0.0.1 and
# localhost, valid two days: DIR/ca.pem, DIR/tls.pem, DIR/tls.key, DIR/spki (for browsers told
# to trust exactly this key).
mp_make_tls() {
  local dir=$1
  command -v openssl >/dev/null 2>&1 || mp_apt_install openssl \
    || mp_die "matchplane's TLS runs need openssl: install it with 'sudo apt-get install -y openssl' and run this again."
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=matchplane throwaway CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out tls.key 2>/dev/null
    openssl req -new -key tls.key -subj "/CN=localhost" -out tls.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >tls.ext
    openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 -extfile tls.ext -out tls.pem 2>/dev/null
    openssl x509 -in tls.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | openssl base64 -A >spki
    rm -f tls.csr tls.ext ca.srl
  ) || mp_die "could not make the run's throwaway CA with openssl"
}

# mp_need_browser_tools TARGET WHAT [chromium]: what a browser check or demo needs, installed
# when missing or named in one sentence: cargo, curl, Node.js 20 or later with npm, and with
# `chromium` Debian's Chromium. TARGET names the entry point (`make demo-web`), WHAT what needs
# Node.js ("the web example").
mp_need_browser_tools() {
  local target=$1 what=$2 browser=${3:-}
  command -v cargo >/dev/null 2>&1 || mp_die "$target needs the Rust toolchain (cargo): install it from rustup.rs and run this again."
  command -v curl >/dev/null 2>&1 || mp_apt_install curl || mp_die "$target needs curl: install it with 'sudo apt-get install -y curl' and run this again."
  command -v npm >/dev/null 2>&1 || mp_apt_install nodejs npm \
    || mp_die "$what needs Node.js 20 or later and npm: install them with 'sudo apt-get install -y nodejs npm' and run this again."
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
    || mp_die "$what needs Node.js 20 or later (this is $(node --version)): install a newer one and run this again."
  if [ "$browser" = chromium ]; then
    command -v chromium >/dev/null 2>&1 || mp_apt_install chromium \
      || mp_die "the browser test needs Debian's chromium: install it with 'sudo apt-get install -y chromium' and run this again."
  fi
}

mp_start_stack() {
  local dir=$1 bin=${MP_BIN_DIR:-$MP_BIN}
  mkdir -p "$dir"
  MP_STACK_DIR=$(cd "$dir" && pwd)
  # Everything started so far is stopped however start-up ends (a failed initdb, a backend
  # or proxy that never becomes healthy): the trap is in place before anything starts.
  MP_OWN_TRAP=1
  trap mp_stop_stack EXIT
  mp_start_services "$MP_STACK_DIR/services"
  local backend_port proxy_port tls_port secret public_port
  read -r backend_port proxy_port tls_port < <(mp_free_ports 3)
  public_port=$proxy_port
  local tls_backend=() tls_proxy=()
  if [ "${MP_TLS:-0}" = 1 ]; then
    mp_make_tls "$MP_STACK_DIR/tls"
    public_port=$tls_port
    tls_backend=(PUBLIC_TLS=true)
    tls_proxy=(TLS_CERT_FILE="$MP_STACK_DIR/tls/tls.pem" TLS_KEY_FILE="$MP_STACK_DIR/tls/tls.key" TLS_BIND="127.0.0.1:$tls_port")
  fi
  [ -z "${MP_ALLOWED_ORIGINS:-}" ] || tls_proxy+=(ALLOWED_ORIGINS="$MP_ALLOWED_ORIGINS")
  [ "${MP_PROXY_CONSOLE:-0}" != 1 ] || tls_proxy+=(PROXY_CONSOLE=true)
  secret=$(mp_random)
  MP_TICKET_SECRET=$secret
  MP_ADMIN_TOKEN=$(mp_random)
  MP_SERVICE_TOKEN=$(mp_random)
  # The studio's identity service is played by this key: loadgen (and `loadgen token`) mint
  # player tokens with it; backend and proxy verify them (PLAYER_AUTH=jwt, the default).
  MP_PLAYER_TOKEN_SECRET=$(mp_random)
  # A queue file and warm pool bounds, when the caller sets them.
  local extra=() name
  for name in MATCHMAKING_CONFIG WARM_POOL_MIN WARM_POOL_MAX; do
    [ -z "${!name:-}" ] || extra+=("$name=${!name}")
  done
  # The demo's stop comes after its matches ended, or on ctrl-c: a second's grace for what
  # still runs (SHUTDOWN_GRACE_SECONDS, DRAIN_SECONDS), so that everything is gone within 3 s.
  "${MP_DETACH[@]}" env "${extra[@]}" "${tls_backend[@]}" RUST_LOG="${RUST_LOG:-info}" BIND="127.0.0.1:$backend_port" REDIS_URL="$MP_REDIS_URL" \
    DATABASE_URL="$MP_DATABASE_URL" TICKET_SECRET="$secret" ADMIN_TOKEN="$MP_ADMIN_TOKEN" RUNTIME=local \
    SERVICE_TOKEN="$MP_SERVICE_TOKEN" PLAYER_TOKEN_SECRET="$MP_PLAYER_TOKEN_SECRET" \
    GAME_SERVER_BIN="$bin/game-server" SESSION_SIZE="${SESSION_SIZE:-12}" \
    PUBLIC_HOST=127.0.0.1 PUBLIC_PORT="$public_port" INSTANCE_ID="local-$$" SHUTDOWN_GRACE_SECONDS=1 \
    "$bin/backend" >"$MP_STACK_DIR/backend.log" 2>&1 &
  MP_BACKEND_PID=$!
  mp_wait_http "http://127.0.0.1:$backend_port/health" backend "$MP_BACKEND_PID"
  "${MP_DETACH[@]}" env "${tls_proxy[@]}" RUST_LOG="${RUST_LOG:-info}" BIND="127.0.0.1:$proxy_port" BACKEND_URL="http://127.0.0.1:$backend_port" \
    REDIS_URL="$MP_REDIS_URL" TICKET_SECRET="$secret" PLAYER_TOKEN_SECRET="$MP_PLAYER_TOKEN_SECRET" \
    RATE_LIMIT_PER_SECOND=0 DRAIN_SECONDS=1 \
    "$bin/proxy" >"$MP_STACK_DIR/proxy.log" 2>&1 &
  MP_PROXY_PID=$!
  mp_wait_http "http://127.0.0.1:$proxy_port/health" proxy "$MP_PROXY_PID"
  export MP_PROXY_URL="http://127.0.0.1:$proxy_port" MP_BACKEND_URL="http://127.0.0.1:$backend_port"
  if [ "${MP_TLS:-0}" = 1 ]; then
    export MP_PROXY_TLS_URL="https://127.0.0.1:$tls_port" MP_TLS_CA="$MP_STACK_DIR/tls/ca.pem"
    MP_TLS_SPKI=$(cat "$MP_STACK_DIR/tls/spki")
    export MP_TLS_SPKI
    curl -fsS --cacert "$MP_TLS_CA" "$MP_PROXY_TLS_URL/health" >/dev/null \
      || mp_die "the proxy does not answer over TLS at $MP_PROXY_TLS_URL; see its log under $MP_STACK_DIR"
  fi
  export MP_ADMIN_TOKEN MP_SERVICE_TOKEN MP_PLAYER_TOKEN_SECRET MP_TICKET_SECRET MP_BACKEND_PID MP_PROXY_PID MP_STACK_DIR
}

mp_stop_stack() {
  local pid
  # In order: the proxy (no new players; its spliced matches drain), then the backend (which
  # ends its sessions and stops their servers while Redis and PostgreSQL still answer), then
  # the services.
  for pid in ${MP_PROXY_PID:-} ${MP_BACKEND_PID:-}; do
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  MP_PROXY_PID='' MP_BACKEND_PID=''
  mp_stop_services
}
