#!/usr/bin/env bash
# `make bench-udp`: game datagrams to a UDP echo server, sent directly and through matchplane's
# proxy, side by side by `loadgen bench-udp` in ROUNDS rounds (default 3) of SECONDS_PER_RUN-second
# windows, with 1 and 64 flows: round trips per second, p50/p99, the latency the proxy adds, and
# the datagrams it relays per second of its own CPU time. Every process shares this machine's CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

mp_build_release
run_dir=${MP_RUN_DIR:-.run}/bench-udp-$$
mp_start_services "$run_dir"
secret=$(mp_random)
read -r proxy_port < <(mp_free_ports 1)
# No per-flow or per-address limit: the bench measures the relay, not its limits.
RUST_LOG=warn BIND=127.0.0.1:$proxy_port BACKEND_URL=http://127.0.0.1:9 REDIS_URL=$MP_REDIS_URL \
  TICKET_SECRET=$secret PLAYER_TOKEN_SECRET="$secret-player-tokens-$RANDOM$RANDOM$RANDOM" RATE_LIMIT_PER_SECOND=0 \
  UDP_FLOW_RATE_PER_SECOND=1000000000 "${CARGO_TARGET_DIR:-target}/release/proxy" &
proxy_pid=$!
trap 'kill $proxy_pid 2>/dev/null; wait $proxy_pid 2>/dev/null || true; mp_stop_services' EXIT
sleep 0.5
kill -0 "$proxy_pid" 2>/dev/null || mp_die "the proxy did not start"
"${CARGO_TARGET_DIR:-target}/release/loadgen" bench-udp --proxy-addr "127.0.0.1:$proxy_port" \
  --proxy-pid "$proxy_pid" --redis-url "$MP_REDIS_URL" --ticket-secret "$secret" \
  --seconds "${SECONDS_PER_RUN:-4}" --rounds "${ROUNDS:-3}"
