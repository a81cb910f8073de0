#!/usr/bin/env bash
# `make bench-time-to-play`: the time from "play" to a running match, cold and warm, on the
# local runtime and on kube-sim with simulated Pod starts, side by side in one run on one
# build. Each of the four runs is the demo's whole stack and swarm (`make demo`,
# `make demo-kubernetes`) with CLIENTS players joining at once; the table gives the swarm's
# p50/p99 per phase and the listen-queue overflows the kernel counted during the run
# (/proc/net/netstat ListenOverflows: connections dropped at a full accept queue), and how busy
# this machine's CPUs were from the first join to the last match running (/proc/stat; near 100%
# means the run was bound by the CPU the stack shares with its players).
# Beside them, in the same run, the floor: the same number of players on a fresh local stack,
# each asking once for its status through the proxy (nothing queued; `loadgen floor`), three
# bursts 6 s apart (the proxy's idle backend connections gone in between, as on a fresh
# stack); the median burst's p99 is the baseline each run's p99 join → matched is divided by.
# The two warm runs (processes and Pods) are run WARM_ROUNDS times, alternated, since one run
# of either moves by a third between runs of the same build: their rows are the median round's
# (by p99 join → matched), and warm Pods are compared with warm processes round by round, the
# median of the rounds' ratios kept.
# CLIENTS (1200), MATCH_DURATION (10 s), WARM_POOL_MIN (100 for the warm runs),
# POD_START_DELAY_MS (2000), WARM_ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
. scripts/services.sh

clients=${CLIENTS:-1200}
duration=${MATCH_DURATION:-10}
warm=${WARM_POOL_MIN:-100}
delay=${POD_START_DELAY_MS:-2000}
rounds=${WARM_ROUNDS:-3}
[[ "$warm" =~ ^0*[1-9][0-9]*$ ]] || mp_die "WARM_POOL_MIN must be above 0 for the warm runs, got '$warm'."
[[ "$rounds" =~ ^0*[1-9][0-9]*$ ]] || mp_die "WARM_ROUNDS must be a whole number above 0, got '$rounds'."
out=.run/bench-time-to-play
rm -rf "$out"
mkdir -p "$out"

overflows() {
  awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) n[i] = $i; h = 1 } else { for (i = 1; i <= NF; i++) if (n[i] == "ListenOverflows") print $i } }' /proc/net/netstat
}

# run NAME SCRIPT SUMMARY [VAR=VALUE...]: one demo run, its summary kept as $out/NAME.json.
run() {
  local name=$1 script=$2 summary=$3 before after
  shift 3
  echo "== $name: $clients players at once, $duration s matches${*:+ ($*)} =="
  before=$(overflows)
  if ! env -u WARM_POOL_MIN -u WARM_POOL_MAX "$@" CLIENTS="$clients" MATCH_DURATION="$duration" SPAWN_RATE=0 \
    "$script" >"$out/$name.log" 2>&1; then
    tail -n 30 "$out/$name.log" >&2
    mp_die "bench-time-to-play: the $name run failed; its log is $out/$name.log"
  fi
  after=$(overflows)
  python3 - "$summary" "$out/$name.json" "$((after - before))" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
summary["listen_overflows"] = int(sys.argv[3])
json.dump(summary, open(sys.argv[2], "w"), indent=1)
PY
  grep -E '^(warm pool|warm pods|API calls|sessions:)' "$out/$name.log" || true
}

# floor: the baseline, on a fresh local stack of its own.
floor() {
  echo "== floor: $clients players at once, one status request each, 3 bursts =="
  mp_build_release >"$out/floor-build.log" 2>&1 || { tail -n 30 "$out/floor-build.log" >&2; mp_die "bench-time-to-play: the build failed"; }
  (
    # shellcheck source=scripts/stack.sh
    . scripts/stack.sh
    RUST_LOG=warn mp_start_stack "$out/floor-stack"
    for i in 1 2 3; do
      [ "$i" = 1 ] || sleep 6
      "${CARGO_TARGET_DIR:-target}/release/loadgen" floor --target-url "$MP_PROXY_URL" --clients "$clients" \
        --player-token-secret "$MP_PLAYER_TOKEN_SECRET" --json "$out/floor-$i.json"
    done
  ) >"$out/floor.log" 2>&1 || { tail -n 30 "$out/floor.log" >&2; mp_die "bench-time-to-play: the floor run failed; its log is $out/floor.log"; }
  grep '^floor:' "$out/floor.log"
}

# The demos below run on the release build, as every benchmark does.
export BUILD_PROFILE=release
floor
run local-cold scripts/demo.sh .run/demo/summary.json
# kube-sim's NetworkPolicy relay (a /proc lookup per connection) is a test bed's stand-in for a
# network plugin's filter in the kernel: timed without it.
run kube-sim-cold scripts/demo-kubernetes.sh .run/demo-kubernetes/summary.json POD_START_DELAY_MS="$delay" NETWORK_POLICY=off
for round in $(seq 1 "$rounds"); do
  run "local-warm-$round" scripts/demo.sh .run/demo/summary.json WARM_POOL_MIN="$warm"
  run "kube-sim-warm-$round" scripts/demo-kubernetes.sh .run/demo-kubernetes/summary.json POD_START_DELAY_MS="$delay" WARM_POOL_MIN="$warm" NETWORK_POLICY=off
done

python3 - "$out" "$clients" "$warm" "$delay" "$rounds" <<'PY'
import json, sys
out, clients, warm, delay, rounds = sys.argv[1:]
rounds = int(rounds)


def p99_of(summary, key="join_to_matched"):
    return ((summary["latency_ms"].get(key) or {}).get("p99_ms")) or 0


# The warm runs: each kind's median round (by p99 join → matched) is its row.
for kind in ("local-warm", "kube-sim-warm"):
    runs = sorted(range(1, rounds + 1), key=lambda r: p99_of(json.load(open(f"{out}/{kind}-{r}.json"))))
    json.dump(json.load(open(f"{out}/{kind}-{runs[(rounds - 1) // 2]}.json")), open(f"{out}/{kind}.json", "w"), indent=1)
bursts = sorted((json.load(open(f"{out}/floor-{i}.json")) for i in (1, 2, 3)), key=lambda b: b["latency_ms"]["p99_ms"])
floor = bursts[1]
floor_p99 = floor["latency_ms"]["p99_ms"]
rows = [
    ("local, cold", "local-cold"),
    (f"local, warm ({warm})", "local-warm"),
    (f"kube-sim {int(delay) / 1000:g} s pods, cold", "kube-sim-cold"),
    (f"kube-sim {int(delay) / 1000:g} s pods, warm ({warm})", "kube-sim-warm"),
]
phases = [("join_to_matched", "join → matched"), ("matched_to_connected", "matched → connected"),
          ("connected_to_running", "connected → running"), ("join_to_running", "join → running")]
head = ["run", "ok"] + [f"{label} p50 / p99 ms" for _, label in phases] + [
    "p99 join → matched ÷ floor", "CPUs busy to the last running", "listen overflows"]


def busy(cpu):
    """This machine's CPUs over the burst, e.g. "97% of 2 over 0.43 s"."""
    return f"{cpu['busy']:.0%} of {cpu['cpus']} over {cpu['seconds']:.2f} s" if cpu else "-"


lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
fl = floor["latency_ms"]
lines.append("| " + " | ".join(
    ["floor: one status request each", f"{floor['ok']}/{floor['clients']}", f"{fl['p50_ms']:,.0f} / {fl['p99_ms']:,.0f}"]
    + ["-"] * (len(phases) - 1) + ["×1.0", busy(floor.get("cpu_busy")), "-"]) + " |")
table = {"floor": {"request": fl, "ok": floor["ok"], "bursts_p99_ms": [b["latency_ms"]["p99_ms"] for b in bursts],
                   "cpu_busy": floor.get("cpu_busy")}}
for label, name in rows:
    s = json.load(open(f"{out}/{name}.json"))
    lat = s["latency_ms"]
    cells = [label, f"{s['ok']}/{s['clients']}"]
    for key, _ in phases:
        p = lat.get(key) or {}
        cells.append(f"{p.get('p50_ms', 0):,.0f} / {p.get('p99_ms', 0):,.0f}" if p else "-")
    ratio = (lat.get("join_to_matched") or {}).get("p99_ms", 0) / floor_p99 if floor_p99 else 0
    cells.append(f"×{ratio:.1f}")
    cells.append(busy(s.get("cpu_busy_to_last_running")))
    cells.append(str(s["listen_overflows"]))
    table[name] = {key: lat.get(key) for key, _ in phases} | {
        "ok": s["ok"], "listen_overflows": s["listen_overflows"], "join_to_matched_p99_over_floor": round(ratio, 2),
        "cpu_busy_to_last_running": s.get("cpu_busy_to_last_running")}
    lines.append("| " + " | ".join(cells) + " |")
print(f"== time to play: {clients} players joining at once ==")
print("\n".join(lines))
def p99(name, key="join_to_matched"):
    return (table[name].get(key) or {}).get("p99_ms") or 0


# Warm Pods against warm processes, round by round (each pair run one after the other).
ratios = {}
for key in ("join_to_matched", "join_to_running"):
    pairs = [(p99_of(json.load(open(f"{out}/kube-sim-warm-{r}.json")), key), p99_of(json.load(open(f"{out}/local-warm-{r}.json")), key))
             for r in range(1, rounds + 1)]
    ratios[key] = {"rounds": [{"kube_sim_warm_p99_ms": k, "local_warm_p99_ms": l, "ratio": round(k / l, 2) if l else None} for k, l in pairs]}
    each = sorted(k / l for k, l in pairs if l)
    ratios[key]["median"] = round(each[(len(each) - 1) // 2], 2) if each else None
table["kube_sim_warm_over_local_warm"] = ratios


def rounds_line(key, label):
    r = ratios[key]
    each = ", ".join(f"{x['kube_sim_warm_p99_ms']:,.0f}/{x['local_warm_p99_ms']:,.0f} ms ×{x['ratio']:.2f}" for x in r["rounds"] if x["ratio"])
    return f"  p99 {label}: median ×{r['median']:.2f} ({each})"


if ratios["join_to_matched"]["median"]:
    print(f"warm Pods against warm processes, {rounds} alternated round(s), Pods/processes:")
    print(rounds_line("join_to_matched", "join → matched"))
    print(rounds_line("join_to_running", "join → running"))
print(f"floor: the median of three bursts by p99 (p99s {', '.join(f'{b:,.0f}' for b in table['floor']['bursts_p99_ms'])} ms)")
json.dump(table, open(f"{out}/table.json", "w"), indent=1)
print(f"bench-time-to-play: table at {out}/table.json, each run's log and summary beside it")
PY
