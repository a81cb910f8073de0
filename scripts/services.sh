#!/usr/bin/env bash
# Ephemeral Redis and PostgreSQL for tests and the local demo, on free loopback ports under a
# run directory. Source this file, then:
#   mp_start_services DIR   # exports MP_REDIS_URL and MP_DATABASE_URL
#   mp_stop_services        # also runs by itself when the calling shell exits or dies
# Missing servers are installed through apt when running as root; otherwise one sentence says
# what to install, and the caller stops.

mp_die() { echo "$*" >&2; exit 1; }
# mp_random: a random secret (48 hex digits), long enough for every secret matchplane checks.
mp_random() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }

# One build for every entry point but the benchmarks: make demo, make test, up-local, the demos
# and the checks all build every binary of the workspace in the dev profile (testkit, part of
# that set, names the tests' features in shared dependencies), so whichever runs first builds
# for all the others, and the tests reuse what the demo built. The benchmarks build the same
# set in release, and run the demos on it: BUILD_PROFILE=release does that for any entry
# point. The release build leaves testkit out: it carries the tests' features (tokio's
# test-util).
mp_build_release() { cargo build --release --locked --workspace --exclude testkit --bins; }
case ${BUILD_PROFILE:-dev} in
  dev | release) ;;
  *) mp_die "BUILD_PROFILE must be dev (the shared build) or release, got '${BUILD_PROFILE}'." ;;
esac
if [ "${BUILD_PROFILE:-dev}" = release ]; then
  MP_BIN=${CARGO_TARGET_DIR:-target}/release
  mp_build() { mp_build_release; }
else
  MP_BIN=${CARGO_TARGET_DIR:-target}/debug
  mp_build() {
    if [ ! -x "$MP_BIN/backend" ]; then
      echo "the first build takes about 2 minutes on 2 cores, after the crates are downloaded once (later ones take seconds); cargo shows its progress"
    fi
    cargo build --locked --workspace --bins
  }
fi

# A terminal's ctrl-c goes to its whole foreground process group. The services and the stack
# run in sessions of their own (setsid, where there is one), so that ctrl-c reaches only the
# script and its swarm, and the script stops the rest in order: the swarm, the proxy, the
# backend (which stops its servers), then Redis and PostgreSQL. Used as a command prefix,
# "${MP_DETACH[@]}" PROGRAM ... &, so that $! is the program's own pid.
if command -v setsid >/dev/null 2>&1; then MP_DETACH=(setsid); else MP_DETACH=(); fi

# mp_free_ports N: prints N different loopback ports free now, for servers started next.
# They are taken below the kernel's ephemeral range (ip_local_port_range) where there is room:
# a port the kernel handed out for port 0 could be handed out again, to an outgoing connection
# or a game server listening on port 0, before the server it was meant for binds it (seen: a
# proxy that could not bind, its port taken by one of 100 warm game servers). Ports for
# servers started together are asked for in one call, so that they differ.
mp_free_ports() {
  python3 - "$1" <<'PY' || mp_die "mp_free_ports: found no free loopback port"
import random, socket, sys

wanted = int(sys.argv[1])
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
except (OSError, ValueError, IndexError):
    ephemeral = 0


def bound(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]
    except OSError:
        return None
    finally:
        s.close()


ports = []
for _ in range(1000 * wanted):
    if len(ports) == wanted:
        break
    port = bound(random.randrange(10000, ephemeral) if ephemeral > 11000 else 0)
    if port and port not in ports:
        ports.append(port)
if len(ports) < wanted:
    sys.exit("no free loopback port")
print(*ports)
PY
}

mp_apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    return 1
  fi
  echo "installing $* through apt ..." >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >/dev/null 2>&1
}

mp_need_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  mp_apt_install redis-server && command -v redis-server >/dev/null 2>&1 && return 0
  mp_die "matchplane needs redis-server: install it with 'sudo apt-get install -y redis-server' and run this again."
}

mp_pg_bindir() {
  local dir
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"
    return 0
  fi
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

mp_need_postgres() {
  MP_PG_BIN=$(mp_pg_bindir) && return 0
  mp_apt_install postgresql && MP_PG_BIN=$(mp_pg_bindir) && return 0
  mp_die "matchplane needs the PostgreSQL server binaries (initdb, pg_ctl): install them with 'sudo apt-get install -y postgresql' and run this again."
}

# Runs a PostgreSQL tool as an unprivileged user when we are root (initdb refuses root).
mp_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$MP_PG_USER" -- "$@"
  else
    "$@"
  fi
}

# mp_redis_server [PORT DIR]: redis-server on PORT (MP_REDIS_PORT) under DIR
# (MP_SERVICES_DIR/redis), in the background, its pid in DIR/redis.pid; with MP_REDIS_AOF=1
# every write is in its append-only file before it is answered, so a SIGKILL and a restart
# (mp_restart_redis) lose nothing.
mp_redis_server() {
  local port=${1:-$MP_REDIS_PORT} dir=${2:-$MP_SERVICES_DIR/redis}
  local persistence=(--appendonly no)
  [ "${MP_REDIS_AOF:-0}" != 1 ] || persistence=(--appendonly yes --appendfsync always)
  mkdir -p "$dir"
  "${MP_DETACH[@]}" redis-server --bind 127.0.0.1 --port "$port" --save '' "${persistence[@]}" \
    --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" \
    --maxclients 10000 --daemonize no &
}

# With MP_REDIS_SENTINELS=1 before mp_start_services, Redis is a primary (MP_REDIS_PORT), one
# replica and three Sentinels watching them as MP_REDIS_SENTINEL_MASTER (mymaster), quick to
# fail over (the primary is down after 2 s without an answer); MP_REDIS_SENTINEL_ADDRS is
# exported (host:port,... for REDIS_SENTINELS). Each Redis node is known by its port: the
# primary can move, and mp_redis_primary_port says where it is now.
MP_REDIS_SENTINEL_MASTER=${MP_REDIS_SENTINEL_MASTER:-mymaster}
declare -gA MP_REDIS_NODE_PID=()
MP_REDIS_SENTINEL_PIDS=()
MP_REDIS_SENTINEL_PORTS=()

# mp_redis_wait PORT PID: waits until the Redis on PORT answers; fails when PID exits first.
mp_redis_wait() {
  for _ in $(seq 1 100); do
    redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

mp_start_sentinels() {
  local ports i dir
  read -r -a ports < <(mp_free_ports 4)
  MP_REDIS_REPLICA_PORT=${ports[0]}
  mp_redis_server "$MP_REDIS_REPLICA_PORT" "$MP_SERVICES_DIR/redis-$MP_REDIS_REPLICA_PORT"
  MP_REDIS_NODE_PID[$MP_REDIS_REPLICA_PORT]=$!
  mp_redis_wait "$MP_REDIS_REPLICA_PORT" "$!" || mp_die "the Redis replica did not start; see $MP_SERVICES_DIR/redis-$MP_REDIS_REPLICA_PORT/redis.log"
  # Made a replica after it starts, not on its command line: a node restarted later comes
  # back as it was, and the Sentinels tell it what to be.
  redis-cli -p "$MP_REDIS_REPLICA_PORT" replicaof 127.0.0.1 "$MP_REDIS_PORT" >/dev/null
  MP_REDIS_SENTINEL_PORTS=()
  local addrs=()
  for i in 1 2 3; do
    dir=$MP_SERVICES_DIR/sentinel-$i
    mkdir -p "$dir"
    printf '%s\n' "port ${ports[i]}" "bind 127.0.0.1" "dir $dir" "logfile $dir/sentinel.log" \
      "pidfile $dir/redis.pid" \
      "sentinel monitor $MP_REDIS_SENTINEL_MASTER 127.0.0.1 $MP_REDIS_PORT 2" \
      "sentinel down-after-milliseconds $MP_REDIS_SENTINEL_MASTER 2000" \
      "sentinel failover-timeout $MP_REDIS_SENTINEL_MASTER 10000" \
      "sentinel parallel-syncs $MP_REDIS_SENTINEL_MASTER 1" >"$dir/sentinel.conf"
    "${MP_DETACH[@]}" redis-server "$dir/sentinel.conf" --sentinel --daemonize no &
    MP_REDIS_SENTINEL_PIDS+=($!)
    MP_REDIS_SENTINEL_PORTS+=("${ports[i]}")
    addrs+=("127.0.0.1:${ports[i]}")
  done
  # Every Sentinel knows the replica, in sync, before anyone relies on a failover.
  local port
  for port in "${MP_REDIS_SENTINEL_PORTS[@]}"; do
    for _ in $(seq 1 300); do
      redis-cli -p "$port" sentinel replicas "$MP_REDIS_SENTINEL_MASTER" 2>/dev/null | grep -A1 -x 'master-link-status' | grep -qx ok && break
      sleep 0.1
    done
  done
  MP_REDIS_SENTINEL_ADDRS=$(IFS=,; echo "${addrs[*]}")
  export MP_REDIS_SENTINEL_ADDRS MP_REDIS_SENTINEL_MASTER
}

# mp_redis_primary_port: the port of the Redis that clients write to: MP_REDIS_PORT, or with
# Sentinels the primary they name now.
mp_redis_primary_port() {
  local port answer
  if [ "${#MP_REDIS_SENTINEL_PORTS[@]}" = 0 ]; then echo "$MP_REDIS_PORT"; return 0; fi
  for port in "${MP_REDIS_SENTINEL_PORTS[@]}"; do
    answer=$(redis-cli -p "$port" sentinel get-master-addr-by-name "$MP_REDIS_SENTINEL_MASTER" 2>/dev/null | sed -n 2p)
    [ -z "$answer" ] || { echo "$answer"; return 0; }
  done
  echo "$MP_REDIS_PORT"
}

# mp_redis_in_sync [SECONDS]: waits (30 s by default) until the Sentinels' primary has its
# replica online and acknowledging within the last second, and the replica says its link is
# up with no sync in progress; fails if that does not happen in time. A failover before that
# promotes a replica still loading or far behind: Redis then loses what it acknowledged (a
# rollback).
mp_redis_in_sync() {
  local replica
  for _ in $(seq 1 $((${1:-30} * 10))); do
    replica=$(redis-cli -p "$(mp_redis_primary_port)" info replication 2>/dev/null | tr -d '\r' |
      sed -n 's/^slave0:.*port=\([0-9]*\),state=online,.*lag=[01]$/\1/p')
    if [ -n "$replica" ] && redis-cli -p "$replica" info replication 2>/dev/null | tr -d '\r' |
      grep -c -x -e 'master_link_status:up' -e 'master_sync_in_progress:0' | grep -qx 2; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# mp_redis_kill PORT: SIGKILLs the Redis node on PORT.
mp_redis_kill() {
  local pid=${MP_REDIS_NODE_PID[$1]:-}
  [ "$1" != "$MP_REDIS_PORT" ] || pid=$MP_REDIS_PID
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# mp_redis_start PORT: starts the Redis node on PORT again (on its append-only file with
# MP_REDIS_AOF=1); waits until it answers.
mp_redis_start() {
  local port=$1 dir=$MP_SERVICES_DIR/redis-$1 pid
  [ "$port" != "$MP_REDIS_PORT" ] || dir=$MP_SERVICES_DIR/redis
  for _ in 1 2 3 4 5; do
    mp_redis_server "$port" "$dir"
    pid=$!
    if [ "$port" = "$MP_REDIS_PORT" ]; then MP_REDIS_PID=$pid; else MP_REDIS_NODE_PID[$port]=$pid; fi
    mp_redis_wait "$port" "$pid" && return 0
    sleep 0.5
  done
  mp_die "redis-server did not start again; see $dir/redis.log"
}

# mp_restart_redis: SIGKILLs the primary and starts it again on its port (its AOF, with
# MP_REDIS_AOF=1, brings its data back); waits until it answers.
mp_restart_redis() {
  local port
  port=$(mp_redis_primary_port)
  mp_redis_kill "$port"
  mp_redis_start "$port"
}

# mp_pg_stop / mp_pg_start: PostgreSQL stopped (fast shutdown: its connections are cut) and
# started again on its port.
mp_pg_stop() { mp_pg "$MP_PG_BIN/pg_ctl" -D "$MP_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true; }
mp_pg_start() {
  mp_pg "$MP_PG_BIN/pg_ctl" -D "$MP_PG_DIR/data" -l "$MP_PG_DIR/postgres.log" -w -t 30 \
    -o "-p $MP_PG_PORT -c listen_addresses=127.0.0.1 -k $MP_PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
    start >/dev/null 2>&1
}

mp_start_services() {
  local dir=$1 redis_port pg_port
  mp_need_redis
  mp_need_postgres
  mkdir -p "$dir"
  MP_SERVICES_DIR=$(cd "$dir" && pwd)
  # Who the directory belongs to now: a later run may start in the same directory while this
  # one's watchdog has still to wake, and must not lose its files or PostgreSQL to it.
  MP_SERVICES_OWNER=$$-$RANDOM$RANDOM-$(date +%s%N)
  echo "$MP_SERVICES_OWNER" >"$MP_SERVICES_DIR/owner"
  # Clean up whatever started, however start-up ends: installed before anything starts.
  # (A caller that cleans up more, such as mp_start_stack, sets MP_OWN_TRAP and keeps its own.)
  [ -n "${MP_OWN_TRAP:-}" ] || trap mp_stop_services EXIT

  for _ in 1 2 3 4 5; do
    redis_port=$(mp_free_ports 1)
    MP_REDIS_PORT=$redis_port
    mp_redis_server
    MP_REDIS_PID=$!
    mp_redis_wait "$redis_port" "$MP_REDIS_PID" && break
    kill "$MP_REDIS_PID" 2>/dev/null; wait "$MP_REDIS_PID" 2>/dev/null; MP_REDIS_PID=
  done
  [ -n "${MP_REDIS_PID:-}" ] || mp_die "redis-server did not start; see $MP_SERVICES_DIR/redis/redis.log"
  [ "${MP_REDIS_SENTINELS:-0}" != 1 ] || mp_start_sentinels

  MP_PG_USER=$(id -un)
  MP_PG_DIR=$MP_SERVICES_DIR/pg
  if [ "$(id -u)" = 0 ]; then
    if id postgres >/dev/null 2>&1; then MP_PG_USER=postgres; else MP_PG_USER=nobody; fi
    # PostgreSQL runs as that user, who may not be able to enter the clone (any directory
    # under /root): its files go to a private directory of its own under the temp dir.
    MP_PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/matchplane-pg.XXXXXX")
    chown "$MP_PG_USER" "$MP_PG_DIR"
    ln -sfn "$MP_PG_DIR" "$MP_SERVICES_DIR/pg"
  fi
  mkdir -p "$MP_PG_DIR"
  export MP_PG_DIR
  mp_pg "$MP_PG_BIN/initdb" -D "$MP_PG_DIR/data" -U mp --auth=trust --no-sync -E UTF8 \
    >"$MP_PG_DIR/initdb.log" 2>&1 || mp_die "initdb failed; see $MP_PG_DIR/initdb.log"
  for _ in 1 2 3 4 5; do
    pg_port=$(mp_free_ports 1)
    MP_PG_PORT=$pg_port
    if mp_pg_start; then
      break
    fi
    MP_PG_PORT=
  done
  [ -n "${MP_PG_PORT:-}" ] || mp_die "PostgreSQL did not start; see $MP_PG_DIR/postgres.log"

  export MP_REDIS_URL="redis://127.0.0.1:$redis_port"
  export MP_DATABASE_URL="postgres://mp@127.0.0.1:$MP_PG_PORT/postgres"
  export MP_PG_BIN MP_PG_USER MP_SERVICES_DIR MP_PG_PORT MP_REDIS_PORT

  # Stop by ourselves: on exit of the calling shell (the trap above), and from a watchdog if
  # it is killed.
  local parent=$$
  ( trap '' INT TERM HUP
    while kill -0 "$parent" 2>/dev/null; do sleep 1; done
    mp_stop_services ) >/dev/null 2>&1 &
  MP_SERVICES_WATCHDOG=$!
  disown 2>/dev/null || true
}

# Runs "$@" (a swarm) in the background and waits for it: ctrl-c or SIGTERM stops it at once,
# says so in one line and exits 130, and the caller's EXIT trap stops everything else. Returns
# the command's own exit status otherwise.
mp_run_swarm() {
  local pid status=0
  mp_interrupted=0
  trap 'mp_interrupted=1' INT TERM
  "$@" &
  pid=$!
  wait "$pid" || status=$?
  if [ "$mp_interrupted" = 1 ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "interrupted: stopping everything this run started" >&2
    exit 130
  fi
  trap - INT TERM
  return "$status"
}

mp_stop_services() {
  # Stopped by the caller: the watchdog has nothing left to do (it ignores TERM).
  if [ -n "${MP_SERVICES_WATCHDOG:-}" ]; then
    kill -KILL "$MP_SERVICES_WATCHDOG" 2>/dev/null || true
    MP_SERVICES_WATCHDOG=
  fi
  # Whether the run directory is still this run's: when another run has started in it since
  # (a watchdog waking late), its files and a PostgreSQL kept inside it are that run's.
  local ours=0
  if [ -n "${MP_SERVICES_DIR:-}" ] && [ "$(cat "$MP_SERVICES_DIR/owner" 2>/dev/null)" = "${MP_SERVICES_OWNER:-}" ]; then
    ours=1
  fi
  local pg_inside=0
  [ "${MP_PG_DIR:-}" != "${MP_SERVICES_DIR:-}/pg" ] || pg_inside=1
  if [ -n "${MP_PG_DIR:-}" ] && [ -d "$MP_PG_DIR/data" ] && { [ "$ours" = 1 ] || [ "$pg_inside" = 0 ]; }; then
    mp_pg "$MP_PG_BIN/pg_ctl" -D "$MP_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  # Every Redis node and Sentinel; those restarted since the watchdog started are known by
  # their pid files.
  local pids=("${MP_REDIS_PID:-}" "${MP_REDIS_NODE_PID[@]}" "${MP_REDIS_SENTINEL_PIDS[@]}") pid file
  if [ "$ours" = 1 ]; then
    for file in "$MP_SERVICES_DIR"/redis*/redis.pid "$MP_SERVICES_DIR"/sentinel-*/redis.pid; do
      [ -f "$file" ] && pids+=("$(cat "$file")")
    done
  fi
  for pid in "${pids[@]}"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
    # Gone (and reaped, when it is this shell's child) before the caller returns.
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  done
  MP_REDIS_PID=
  MP_REDIS_NODE_PID=()
  MP_REDIS_SENTINEL_PIDS=()
  # Keep the logs only when asked to (MP_KEEP_RUN_DIR=1), for a post-mortem.
  if [ "${MP_KEEP_RUN_DIR:-0}" != 1 ]; then
    if [ -n "${MP_PG_DIR:-}" ] && [ "$pg_inside" = 0 ]; then
      rm -rf "$MP_PG_DIR"
    fi
    if [ "$ours" = 1 ]; then rm -rf "$MP_SERVICES_DIR"; fi
  fi
}
