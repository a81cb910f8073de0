#!/usr/bin/env bash
# `make up-local` / `make down-local`: the demo's stack kept running for hands-on play.
#   scripts/local.sh up     builds, starts the stack in the background, prints how to reach it
#   scripts/local.sh down   stops it (servers drain, services stop, nothing is left)
#   scripts/local.sh hold   (internal) runs the stack until SIGTERM
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh
state=.run/local

# The holder's pid, when holder.pid names a live process that is this clone's holder: a pid
# left behind may have been handed to any other process since, which must never be signalled.
holder() {
  local pid args
  pid=$(cat "$state/holder.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  args=$(ps -o args= -p "$pid" 2>/dev/null) || return 1
  case $args in
    *"$(pwd)/scripts/local.sh hold"*) echo "$pid" ;;
    *) return 1 ;;
  esac
}

case "${1:-}" in
  hold)
    # shellcheck source=scripts/stack.sh
    . scripts/stack.sh
    mp_start_stack "$state/stack"
    printf 'MP_PROXY_URL=%s\nMP_BACKEND_URL=%s\nMP_ADMIN_TOKEN=%s\nMP_SERVICE_TOKEN=%s\nMP_PLAYER_TOKEN_SECRET=%s\nMP_STACK_DIR=%s\n' \
      "$MP_PROXY_URL" "$MP_BACKEND_URL" "$MP_ADMIN_TOKEN" "$MP_SERVICE_TOKEN" "$MP_PLAYER_TOKEN_SECRET" "$MP_STACK_DIR" \
      >"$state/env.tmp"
    mv "$state/env.tmp" "$state/env"
    trap 'exit 0' TERM INT HUP
    while kill -0 "$MP_BACKEND_PID" 2>/dev/null && kill -0 "$MP_PROXY_PID" 2>/dev/null; do sleep 1; done
    echo "a component exited; stopping the stack" >&2
    ;;
  up)
    if holder >/dev/null; then
      echo "the local stack is already running; its settings are in $state/env"; exit 0
    fi
    command -v curl >/dev/null 2>&1 || { echo "make up-local needs curl: install it with 'sudo apt-get install -y curl' and run this again." >&2; exit 1; }
    mp_build
    rm -rf "$state"; mkdir -p "$state"
    # The holder runs by its absolute path, which is how `holder` knows it for this clone's.
    setsid "$(pwd)/scripts/local.sh" hold >"$state/holder.log" 2>&1 < /dev/null &
    started=$!
    echo "$started" >"$state/holder.pid"
    for _ in $(seq 1 300); do
      [ -f "$state/env" ] && break
      if ! kill -0 "$started" 2>/dev/null; then
        rm -f "$state/holder.pid"
        cat "$state/holder.log" >&2
        exit 1
      fi
      sleep 0.1
    done
    if [ ! -f "$state/env" ]; then
      kill -TERM "$started" 2>/dev/null || true
      rm -f "$state/holder.pid"
      echo "the stack did not start; see $state/holder.log" >&2
      exit 1
    fi
    # shellcheck disable=SC1091
    . "$state/env"
    echo "matchplane is running: proxy $MP_PROXY_URL (API under /api), backend $MP_BACKEND_URL"
    echo "admin token: $MP_ADMIN_TOKEN   service token: $MP_SERVICE_TOKEN"
    echo "operator console: $MP_BACKEND_URL/console/ (sign in with the admin token)"
    echo "logs: $MP_STACK_DIR/*.log   settings: $state/env   stop with: make down-local"
    if [ "${PLAYER_AUTH:-jwt}" = none ]; then
      echo "player endpoints are open (PLAYER_AUTH=none): join and poll without a token"
      exit 0
    fi
    # Ready-made player tokens (valid 1 h) for the hand-played session in the README, as the
    # studio's identity service would issue them; more with
    # PLAYER_TOKEN_SECRET="$MP_PLAYER_TOKEN_SECRET" target/debug/loadgen token --player NAME
    for player in alice bob; do
      token=$(PLAYER_TOKEN_SECRET="$MP_PLAYER_TOKEN_SECRET" "$MP_BIN/loadgen" token --player "$player")
      name="MP_$(echo "$player" | tr '[:lower:]' '[:upper:]')_TOKEN"
      echo "$name=$token" >>"$state/env"
      echo "player token for $player (\$$name): $token"
    done
    ;;
  down)
    if pid=$(holder); then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$state/holder.pid" "$state/env"
      echo "the local stack is stopped"
    else
      rm -f "$state/holder.pid" "$state/env"
      echo "no local stack is running"
    fi
    ;;
  *) echo "usage: scripts/local.sh up|down" >&2; exit 2 ;;
esac
