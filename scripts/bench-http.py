#!/usr/bin/env python3
"""The proxy's HTTP path against HAProxy's, side by side (part of `make bench-proxy`).

wrk sends `GET /api/match/status` through each forwarder to the same backend: on kept-alive
connections, and with a new connection per request (`Connection: close`), plain and over TLS.
Each window reads the forwarder's CPU time from /proc before and after, so a row gives CPU
per forwarded request (and, for new TLS connections, handshakes per CPU-second) beside the
requests per second. The forwarders alternate within each round; each row is the median of
the rounds, and the ratio is matchplane's proxy over HAProxy (below 1.0: the proxy is
cheaper).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; after the command's ")" they are 12 and 13.
    return (int(fields[11]) + int(fields[12])) / TICKS


def wrk(url, seconds, connections, close):
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    if close:
        command += ["-H", "Connection: close"]
    out = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return requests, int(errors.group(1)) if errors else 0, socket_errors.group(1) if socket_errors else ""


def window(url, pid, seconds, connections, close):
    before = cpu_seconds(pid)
    requests, bad, socket_errors = wrk(url, seconds, connections, close)
    cpu = cpu_seconds(pid) - before
    if requests == 0:
        sys.exit(f"bench-http: no request got through {url}")
    if bad:
        sys.exit(f"bench-http: {bad} of {requests} answers through {url} were errors")
    return {"cpu_us_per_request": cpu / requests * 1e6, "requests_per_second": requests / seconds,
            "per_cpu_second": requests / cpu if cpu > 0 else float("inf"), "socket_errors": socket_errors}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--proxy", required=True, help="http://host:port of matchplane's proxy")
    p.add_argument("--proxy-tls", help="https://host:port of matchplane's proxy")
    p.add_argument("--proxy-pid", type=int, required=True)
    p.add_argument("--haproxy", required=True)
    p.add_argument("--haproxy-tls")
    p.add_argument("--haproxy-pid", type=int, required=True)
    p.add_argument("--path", default="/api/match/status?player_id=bench")
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--json")
    a = p.parse_args()

    kinds = [("http, kept-alive", "", False), ("http, a new connection per request", "", True)]
    if a.proxy_tls and a.haproxy_tls:
        kinds += [("https, kept-alive", "tls", False), ("https, a new connection per request", "tls", True)]
    results = {}
    for name, tls, close in kinds:
        sides = {
            "proxy": (a.proxy_tls if tls else a.proxy, a.proxy_pid),
            "haproxy": (a.haproxy_tls if tls else a.haproxy, a.haproxy_pid),
        }
        # A short warm-up of each, then the rounds, alternating which goes first.
        for base, pid in sides.values():
            window(base + a.path, pid, 1, a.connections, close)
        rounds = {side: [] for side in sides}
        for r in range(a.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                base, pid = sides[side]
                rounds[side].append(window(base + a.path, pid, a.seconds, a.connections, close))
        row = {}
        for side, runs in rounds.items():
            row[side] = {k: statistics.median(run[k] for run in runs)
                         for k in ("cpu_us_per_request", "requests_per_second", "per_cpu_second")}
        row["ratio_cpu"] = row["proxy"]["cpu_us_per_request"] / row["haproxy"]["cpu_us_per_request"]
        results[name] = row
        extra = ""
        if tls and close:
            extra = (f"; handshakes per CPU-second {row['proxy']['per_cpu_second']:,.0f} vs "
                     f"{row['haproxy']['per_cpu_second']:,.0f}")
        print(f"{name:<38} CPU per request: proxy {row['proxy']['cpu_us_per_request']:6.1f} µs, "
              f"HAProxy {row['haproxy']['cpu_us_per_request']:6.1f} µs (×{row['ratio_cpu']:.2f}); "
              f"requests/s {row['proxy']['requests_per_second']:,.0f} vs "
              f"{row['haproxy']['requests_per_second']:,.0f}{extra}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"connections": a.connections, "seconds": a.seconds, "rounds": a.rounds,
                       "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
