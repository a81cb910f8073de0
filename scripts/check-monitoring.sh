#!/usr/bin/env bash
# `make monitoring-check` (CI runs it): deploy/monitoring holds up against promtool and against
# a real Prometheus (Debian's) scraping a live local stack. See docs/monitoring.md.
#  1. promtool checks the rules and runs their unit tests; the PrometheusRule holds the same
#     groups as rules.yaml; the dashboard's queries are all there.
#  2. Prometheus scrapes the stack every second and evaluates rules.yaml with every `for` cut to
#     3 s and every rate window to 20 s (30 s for 15 m) while a swarm plays: every recording
#     rule and every dashboard query returns data, and no alert fires.
#  3. Server starts fail (players in a queue whose server exits at once): the start-failure
#     and sessions-failing alerts fire, and clear once they leave. Redis is paused: the Redis
#     alert fires for the backend and the proxy. PostgreSQL is paused: its alert fires. The
#     backend is paused: the proxy's backend alert, the replica-gone and no-replica alerts
#     fire. Forged tickets arrive: the proxy-refusals alert fires. Each clears once undone,
#     and nothing fires at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
. scripts/stack.sh
dir=deploy/monitoring

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  mp_apt_install --no-install-recommends prometheus \
    || mp_die "monitoring-check needs Prometheus: install it with 'sudo apt-get install -y --no-install-recommends prometheus' and run this again."
fi
command -v curl >/dev/null 2>&1 || mp_apt_install curl || mp_die "monitoring-check needs curl: install it with 'sudo apt-get install -y curl' and run this again."
venv=${MP_RUN_DIR:-.run}/venv
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'PyYAML==6.0.2'
fi
py=$venv/bin/python

# 1. promtool, and the files agreeing with each other.
promtool check rules "$dir/rules.yaml"
(cd "$dir" && promtool test rules rules.test.yaml)
"$py" - "$dir" <<'PY'
import json, sys, yaml
d = sys.argv[1]
rules = yaml.safe_load(open(f"{d}/rules.yaml"))
wrapped = yaml.safe_load(open(f"{d}/prometheusrule.yaml"))
if wrapped.get("kind") != "PrometheusRule" or wrapped.get("spec") != rules:
    sys.exit("monitoring-check: prometheusrule.yaml does not hold the groups of rules.yaml: write it again from them")
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
tests = open(f"{d}/rules.test.yaml").read()
untested = [a for a in alerts if f"alertname: {a}\n" not in tests]
if untested:
    sys.exit(f"monitoring-check: alerts without a unit test: {', '.join(untested)}")
docs = open("docs/monitoring.md").read()
missing = [a for a in alerts if f"### {a}\n" not in docs]
if missing:
    sys.exit(f"monitoring-check: alerts without a runbook in docs/monitoring.md: {', '.join(missing)}")
for g in rules["groups"]:
    for r in g["rules"]:
        if "alert" in r and r["annotations"].get("runbook") != f"docs/monitoring.md#{r['alert'].lower()}":
            sys.exit(f"monitoring-check: {r['alert']}'s runbook annotation does not point at its section")
dashboard = json.load(open(f"{d}/dashboard.json"))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
if not exprs:
    sys.exit("monitoring-check: the dashboard has no queries")
scrape = yaml.safe_load(open(f"{d}/scrape-config.yaml"))
jobs = sorted(j["job_name"] for j in scrape["scrape_configs"])
if jobs != ["matchplane-backend", "matchplane-proxy"]:
    sys.exit(f"monitoring-check: scrape-config.yaml's jobs are {jobs}")
print(f"monitoring-check: {len(alerts)} alerts, each unit-tested with a runbook; the PrometheusRule matches; {len(exprs)} dashboard queries")
PY
command -v kubectl >/dev/null 2>&1 || mp_die "monitoring-check needs kubectl (for kustomize): install it and run this again."
kubectl kustomize "$dir" >/dev/null || mp_die "monitoring-check: deploy/monitoring does not render with kustomize"

# 2. A live stack and Prometheus.
mp_need_redis
mp_need_postgres
mp_build
bin=$MP_BIN
run=$(mkdir -p .run && cd .run && pwd)/monitoring-check-$$
mkdir -p "$run"
cat >"$run/queues.yaml" <<'YAML'
servers:
  broken:                    # exits at once: every start fails
    command: ["/bin/false"]
    ports: [{name: game, protocol: tcp}]
    ready: port
    identity: none
queues:
  - {name: default, session_size: 4}
  - {name: broken, session_size: 1, server: broken}
YAML
MATCHMAKING_CONFIG=$run/queues.yaml mp_start_stack "$run/stack"
prometheus_pid=
pg_pids=()
backend_paused=
# shellcheck disable=SC2317  # run by the EXIT trap
finish() {
  [ -z "$prometheus_pid" ] || { kill "$prometheus_pid" 2>/dev/null; wait "$prometheus_pid" 2>/dev/null || true; }
  [ -z "${MP_REDIS_PID:-}" ] || kill -CONT "$MP_REDIS_PID" 2>/dev/null || true
  [ "${#pg_pids[@]}" = 0 ] || kill -CONT "${pg_pids[@]}" 2>/dev/null || true
  [ -z "${backend_paused:-}" ] || kill -CONT "$MP_BACKEND_PID" 2>/dev/null || true
  mp_stop_stack
  [ "${MP_KEEP_RUN_DIR:-0}" = 1 ] || rm -rf "$run"
}
trap finish EXIT
trap 'exit 130' INT TERM
# The rules as shipped, with every `for` and rate window scaled down.
sed -e 's/\[1m\]/[10s]/g; s/\[5m\]/[20s]/g; s/\[15m\]/[30s]/g; s/for: [0-9]*m$/for: 3s/' "$dir/rules.yaml" >"$run/rules.yaml"
read -r prom_port < <(mp_free_ports 1)
cat >"$run/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [$run/rules.yaml]
scrape_configs:
  - job_name: matchplane-backend
    static_configs: [{targets: ["${MP_BACKEND_URL#http://}"]}]
  - job_name: matchplane-proxy
    static_configs: [{targets: ["${MP_PROXY_URL#http://}"]}]
YAML
promtool check config "$run/prometheus.yml" >/dev/null
prometheus --config.file "$run/prometheus.yml" --storage.tsdb.path "$run/tsdb" \
  --web.listen-address "127.0.0.1:$prom_port" >"$run/prometheus.log" 2>&1 &
prometheus_pid=$!
prom=http://127.0.0.1:$prom_port
mp_wait_http "$prom/-/ready" prometheus "$prometheus_pid" "$run/prometheus.log"

# query EXPR: the number of series the instant query returns.
query() {
  curl -fsS --get --data-urlencode "query=$1" "$prom/api/v1/query" \
    | "$py" -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(len(r))'
}
# firing NAME: the number of firing alerts named NAME.
firing() { query "ALERTS{alertname=\"$1\", alertstate=\"firing\"}"; }
# wait_for WHAT SECONDS CONDITION...: runs CONDITION every second until it holds.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  for _ in $(seq 1 "$seconds"); do
    if "$@"; then return 0; fi
    sleep 1
  done
  echo "monitoring-check FAILED: $what within $seconds s" >&2
  exit 1
}
scraped() { [ "$(query 'up{job=~"matchplane-(backend|proxy)"} == 1')" = 2 ]; }
wait_for "Prometheus scraping the backend and the proxy" 30 scraped

PLAYER_TOKEN_SECRET=$MP_PLAYER_TOKEN_SECRET "$bin/loadgen" swarm --target-url "$MP_PROXY_URL" --clients 24 \
  --session-size 4 --match-duration 2 --spawn-rate 0 >"$run/swarm.log" 2>&1 \
  || { tail -n 20 "$run/swarm.log" >&2; mp_die "monitoring-check: the swarm failed"; }
sleep 3
"$py" - "$dir" "$prom" <<'PY'
import json, sys, urllib.parse, urllib.request, yaml
d, prom = sys.argv[1], sys.argv[2]
def count(expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.load(urllib.request.urlopen(url, timeout=10))
    if answer["status"] != "success":
        sys.exit(f"monitoring-check: {expr}: {answer}")
    return len(answer["data"]["result"])
rules = yaml.safe_load(open(f"{d}/rules.yaml"))
records = [r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r]
dashboard = json.load(open(f"{d}/dashboard.json"))
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
empty = [e for e in records + exprs if count(e) == 0]
if empty:
    sys.exit("monitoring-check FAILED: no data for: " + "; ".join(empty))
print(f"monitoring-check: all {len(records)} recording rules and {len(exprs)} dashboard queries return data from the live stack")
PY
healthy() { [ "$(query 'ALERTS{alertstate="firing", alertname=~"Matchplane.*"}')" = 0 ]; }
healthy || { curl -fsS "$prom/api/v1/alerts" >&2; mp_die "monitoring-check FAILED: alerts fire on a healthy stack"; }
echo "monitoring-check: no alert fires on the healthy stack"

# 3. Server starts failing, then not.
players=()
for n in 1 2 3; do
  player=broken-$n
  players+=("$player")
  token=$("$bin/loadgen" token --player "$player" --player-token-secret "$MP_PLAYER_TOKEN_SECRET")
  curl -fsS -o /dev/null -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"player_id\":\"$player\",\"queue\":\"broken\"}" "$MP_PROXY_URL/api/match/join"
done
start_failures_fire() { [ "$(firing MatchplaneServerStartFailures)" = 1 ]; }
wait_for "MatchplaneServerStartFailures firing while every start fails" 60 start_failures_fire
echo "monitoring-check: MatchplaneServerStartFailures fires while every start fails"
sessions_failing_fire() { [ "$(firing MatchplaneSessionsFailing)" = 1 ]; }
wait_for "MatchplaneSessionsFailing firing while every session fails" 60 sessions_failing_fire
echo "monitoring-check: MatchplaneSessionsFailing fires while every session fails"
for player in "${players[@]}"; do
  token=$("$bin/loadgen" token --player "$player" --player-token-secret "$MP_PLAYER_TOKEN_SECRET")
  curl -fsS -o /dev/null -X DELETE -H "authorization: Bearer $token" "$MP_PROXY_URL/api/match/join/$player" || true
done
start_failures_clear() { [ "$(firing MatchplaneServerStartFailures)" = 0 ] && [ "$(firing MatchplaneSessionsFailing)" = 0 ]; }
wait_for "MatchplaneServerStartFailures and MatchplaneSessionsFailing clearing once the players left" 90 start_failures_clear
echo "monitoring-check: ... and both clear once its players left"

# Redis paused, then running again.
kill -STOP "$MP_REDIS_PID"
redis_fires() { [ "$(firing MatchplaneRedisDown)" = 2 ]; }
wait_for "MatchplaneRedisDown firing for the backend and the proxy while Redis is paused" 60 redis_fires
echo "monitoring-check: MatchplaneRedisDown fires for the backend and the proxy while Redis is paused"
kill -CONT "$MP_REDIS_PID"
redis_clears() { [ "$(firing MatchplaneRedisDown)" = 0 ]; }
wait_for "MatchplaneRedisDown clearing once Redis runs again" 60 redis_clears
echo "monitoring-check: ... and clears once it runs again"

# PostgreSQL paused (the postmaster and every backend of its), then running again.
postmaster=$(head -n 1 "$MP_PG_DIR/data/postmaster.pid")
mapfile -t pg_pids < <(echo "$postmaster"; pgrep -P "$postmaster")
kill -STOP "${pg_pids[@]}"
postgres_fires() { [ "$(firing MatchplanePostgresDown)" = 1 ]; }
wait_for "MatchplanePostgresDown firing while PostgreSQL is paused" 60 postgres_fires
echo "monitoring-check: MatchplanePostgresDown fires while PostgreSQL is paused"
kill -CONT "${pg_pids[@]}"
pg_pids=()
postgres_clears() { [ "$(firing MatchplanePostgresDown)" = 0 ]; }
wait_for "MatchplanePostgresDown clearing once PostgreSQL runs again" 60 postgres_clears
echo "monitoring-check: ... and clears once it runs again"

# The one backend replica paused: the proxy cannot reach it, Prometheus cannot scrape it.
kill -STOP "$MP_BACKEND_PID"
backend_paused=1
backend_fires() {
  [ "$(firing MatchplaneProxyBackendDown)" = 1 ] && [ "$(firing MatchplaneReplicaGone)" = 1 ] \
    && [ "$(firing MatchplaneNoReplica)" = 1 ]
}
wait_for "MatchplaneProxyBackendDown, MatchplaneReplicaGone and MatchplaneNoReplica firing while the backend is paused" 60 backend_fires
echo "monitoring-check: MatchplaneProxyBackendDown, MatchplaneReplicaGone and MatchplaneNoReplica fire while the backend is paused"
kill -CONT "$MP_BACKEND_PID"
backend_paused=
backend_clears() {
  [ "$(firing MatchplaneProxyBackendDown)" = 0 ] && [ "$(firing MatchplaneReplicaGone)" = 0 ] \
    && [ "$(firing MatchplaneNoReplica)" = 0 ]
}
wait_for "the backend's alerts clearing once it runs again" 60 backend_clears
echo "monitoring-check: ... and clear once it runs again"
# Game connections refused: 30 s of forged tickets on the proxy's port, ten a second.
"$py" - "${MP_PROXY_URL#http://}" >"$run/forged.log" 2>&1 <<'PY' &
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
end = time.monotonic() + 30
while time.monotonic() < end:
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"JOIN not-a-ticket\n")
        s.recv(256)
    time.sleep(0.1)
PY
forged_pid=$!
refusals_fire() { [ "$(firing MatchplaneProxyRefusalsSpiking)" = 1 ]; }
wait_for "MatchplaneProxyRefusalsSpiking firing while forged tickets arrive" 30 refusals_fire
echo "monitoring-check: MatchplaneProxyRefusalsSpiking fires while forged tickets arrive"
wait "$forged_pid" || { cat "$run/forged.log" >&2; mp_die "monitoring-check: the forged tickets' client failed"; }
refusals_clear() { [ "$(firing MatchplaneProxyRefusalsSpiking)" = 0 ]; }
wait_for "MatchplaneProxyRefusalsSpiking clearing once they stop" 60 refusals_clear
echo "monitoring-check: ... and clears once they stop"
healthy || { curl -fsS "$prom/api/v1/alerts" >&2; mp_die "monitoring-check FAILED: alerts still fire at the end"; }
echo "monitoring-check passed"
