#!/usr/bin/env python3
"""Measures the game-server binary: time from exec to its LISTENING line (median of N starts)
and the idle memory of one process: its resident set, and the anonymous part of it (heap and
stacks), which each server has to itself; the rest is the binary's and libraries' file pages,
which every game server on a host shares.
Usage: measure-game-server.py [BINARY] [N]; BINARY empty or left out: the release build under
CARGO_TARGET_DIR (default: target/ of this clone), or the shared dev build with
BUILD_PROFILE=dev."""
import os, statistics, subprocess, sys, time

target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target")
profile = os.environ.get("BUILD_PROFILE") or "release"
if profile not in ("dev", "release"):
    sys.exit(f"BUILD_PROFILE must be dev (the shared build) or release, got '{profile}'.")
build = {"dev": ("debug", "make build"), "release": ("release", "make release")}[profile]
binary = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else os.path.join(target, build[0], "game-server")
if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
    sys.exit(f"measure-game-server: no game-server binary at {binary}: build it with '{build[1]}' first")
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
env = dict(os.environ, SESSION_ID="measure", PLAYERS=",".join(f"p{i}" for i in range(12)),
           TICKET_SECRET="measure-secret", RUST_LOG="warn")
starts, rss, anon = [], [], []
for _ in range(runs):
    t0 = time.perf_counter()
    p = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", "0"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline()
    starts.append((time.perf_counter() - t0) * 1000)
    assert line.startswith(b"LISTENING "), line
    time.sleep(0.2)
    with open(f"/proc/{p.pid}/smaps_rollup") as f:
        kib = {l.split(":")[0]: int(l.split()[1]) for l in f if l.split(":")[0] in ("Rss", "Anonymous")}
    rss.append(kib["Rss"])
    anon.append(kib["Anonymous"])
    p.terminate()
    p.wait(timeout=15)
print(f"exec to LISTENING: median {statistics.median(starts):.2f} ms, "
      f"min {min(starts):.2f} ms, max {max(starts):.2f} ms over {runs} starts")
print(f"idle RSS: median {statistics.median(rss) / 1024:.2f} MiB, max {max(rss) / 1024:.2f} MiB; "
      f"anonymous (each server's own; the rest is shared file pages): median {statistics.median(anon) / 1024:.2f} MiB, "
      f"max {max(anon) / 1024:.2f} MiB")
