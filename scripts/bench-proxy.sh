#!/usr/bin/env bash
# `make bench-proxy`: a TCP echo server reached directly, through matchplane's proxy and
# through HAProxy in TCP mode (as configured by default, and with splice(2) forced on), measured
# side by side by `loadgen bench-proxy`, in ROUNDS rounds (default 3) of SECONDS_PER_RUN-second windows.
# Then the HTTP path (scripts/bench-http.py): wrk's GET /api/match/status through the proxy and
# through HAProxy in `mode http` to the same backend (RUNTIME=none), kept-alive and a new
# connection per request, plain and over TLS (one ECDSA P-256 certificate for both): CPU per
# forwarded request of each, handshakes per CPU-second, requests/s.
# CPU_SPLIT=1 runs each forwarder (matchplane's proxy, HAProxy) on a CPU of its own and the
# clients and echo server on the others, as in a deployment, where a proxy does not share its
# cores with the load it forwards; by default every process may run on every CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh

# CPU placement, checked before anything is installed or started: taskset prefixes for the
# forwarders and for the clients and echo server.
middle=()
load=()
case "${CPU_SPLIT:-0}" in
  0) placement="shared: every process may run on every CPU" ;;
  1)
    command -v taskset >/dev/null 2>&1 ||
      mp_die "CPU_SPLIT=1 needs taskset: install it with 'sudo apt-get install -y util-linux' and run this again."
    mapfile -t cpus < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)), sep="\n")')
    [ "${#cpus[@]}" -ge 2 ] || mp_die "CPU_SPLIT=1 needs at least 2 CPUs; this process may use ${#cpus[@]}."
    own=${cpus[-1]}
    rest=$(IFS=,; echo "${cpus[*]:0:${#cpus[@]}-1}")
    middle=(taskset -c "$own")
    load=(taskset -c "$rest")
    placement="split (CPU_SPLIT=1): the proxy and HAProxy on CPU $own, the clients and echo server on CPU $rest"
    ;;
  *) mp_die "CPU_SPLIT must be 0 or 1, got '${CPU_SPLIT}'." ;;
esac
if ! command -v haproxy >/dev/null 2>&1; then
  mp_apt_install haproxy || mp_die "bench-proxy needs haproxy: install it with 'sudo apt-get install -y haproxy' and run this again."
fi
if ! command -v wrk >/dev/null 2>&1; then
  mp_apt_install wrk || mp_die "bench-proxy needs wrk: install it with 'sudo apt-get install -y wrk' and run this again."
fi
mp_build_release
run_dir=${MP_RUN_DIR:-.run}/bench-proxy-$$
mp_start_services "$run_dir"
mp_make_tls "$run_dir/tls"
cat "$run_dir/tls/tls.pem" "$run_dir/tls/tls.key" >"$run_dir/tls/haproxy.pem"
secret=$(mp_random)
read -r echo_port proxy_port haproxy_port haproxy_splice_port backend_port proxy_tls_port haproxy_http_port haproxy_https_port \
  < <(mp_free_ports 8)
# The backend every HTTP path forwards to; open player endpoints, so that neither forwarder
# verifies a token.
# Its keys apart from the sessions the echo rows write, its log in the run directory.
RUST_LOG=warn RUNTIME=none PLAYER_AUTH=none BIND=127.0.0.1:$backend_port REDIS_URL=$MP_REDIS_URL REDIS_KEY_PREFIX=bench-http \
  DATABASE_URL=$MP_DATABASE_URL TICKET_SECRET=$secret INSTANCE_ID=bench "${CARGO_TARGET_DIR:-target}/release/backend" \
  >"$run_dir/backend.log" 2>&1 &
backend_pid=$!

cat >"$run_dir/haproxy.cfg" <<CFG
global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen plain
  bind 127.0.0.1:$haproxy_port
  server echo 127.0.0.1:$echo_port
listen splice
  bind 127.0.0.1:$haproxy_splice_port
  option splice-request
  option splice-response
  server echo 127.0.0.1:$echo_port
# The proxy's HTTP path, as HAProxy does it: /api stripped, kept-alive to the backend.
listen http
  mode http
  bind 127.0.0.1:$haproxy_http_port
  bind 127.0.0.1:$haproxy_https_port ssl crt $run_dir/tls/haproxy.pem alpn http/1.1
  http-request replace-path /api(/.*) \1
  server backend 127.0.0.1:$backend_port
CFG
"${middle[@]}" haproxy -f "$run_dir/haproxy.cfg" -db >"$run_dir/haproxy.log" 2>&1 &
haproxy_pid=$!
RUST_LOG=warn BIND=127.0.0.1:$proxy_port BACKEND_URL=http://127.0.0.1:$backend_port REDIS_URL=$MP_REDIS_URL \
  TLS_BIND=127.0.0.1:$proxy_tls_port TLS_CERT_FILE=$run_dir/tls/tls.pem TLS_KEY_FILE=$run_dir/tls/tls.key \
  TICKET_SECRET=$secret PLAYER_TOKEN_SECRET="$secret-player-tokens-$RANDOM$RANDOM$RANDOM" RATE_LIMIT_PER_SECOND=0 \
  "${middle[@]}" "${CARGO_TARGET_DIR:-target}/release/proxy" &
proxy_pid=$!
trap 'kill $proxy_pid $haproxy_pid $backend_pid 2>/dev/null; wait $proxy_pid $haproxy_pid $backend_pid 2>/dev/null || true; mp_stop_services' EXIT
sleep 0.5
mp_wait_http "http://127.0.0.1:$backend_port/health" backend "$backend_pid" "$run_dir/backend.log"
kill -0 "$haproxy_pid" 2>/dev/null || mp_die "haproxy did not start; see $run_dir/haproxy.log"
kill -0 "$proxy_pid" 2>/dev/null || mp_die "the proxy did not start"

# Every path's figures depend on where the processes may run and on the kernel's TCP congestion
# control (BBR paces even loopback traffic with a timer per socket), so the run says both.
echo "bench-proxy: CPU placement $placement" >&2
echo "bench-proxy: TCP congestion control $(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo unknown) (net.ipv4.tcp_congestion_control)" >&2
"${load[@]}" "${CARGO_TARGET_DIR:-target}/release/loadgen" bench-proxy --echo-port "$echo_port" \
  --proxy-addr "127.0.0.1:$proxy_port" --proxy-pid "$proxy_pid" \
  --haproxy-addr "127.0.0.1:$haproxy_port" --haproxy-splice-addr "127.0.0.1:$haproxy_splice_port" \
  --haproxy-pid "$haproxy_pid" --redis-url "$MP_REDIS_URL" --ticket-secret "$secret" \
  --seconds "${SECONDS_PER_RUN:-4}" --rounds "${ROUNDS:-3}" ${BENCH_JSON:+--json "$BENCH_JSON"} \
  --placement "$placement"
echo "== the HTTP path: GET /api/match/status through each to one backend (wrk, 64 connections; medians of ${ROUNDS:-3} rounds) =="
"${load[@]}" python3 scripts/bench-http.py --proxy "http://127.0.0.1:$proxy_port" --proxy-tls "https://127.0.0.1:$proxy_tls_port" \
  --proxy-pid "$proxy_pid" --haproxy "http://127.0.0.1:$haproxy_http_port" --haproxy-tls "https://127.0.0.1:$haproxy_https_port" \
  --haproxy-pid "$haproxy_pid" --seconds "${SECONDS_PER_RUN:-4}" --rounds "${ROUNDS:-3}" \
  ${BENCH_JSON:+--json "${BENCH_JSON%.json}-http.json"}
