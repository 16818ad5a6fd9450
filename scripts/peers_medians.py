#!/usr/bin/env python3
"""Medians over rounds of scripts/bench_peers.sh outputs, with ratios to
uWebSockets.js and write syscalls per delivery.
Usage: scripts/peers_medians.py N DIR1 DIR2 ... (each an $OUT of bench_peers.sh)"""
import json, statistics, sys

n, dirs = int(sys.argv[1]), sys.argv[2:]
servers = ["volley", "volley1", "uws", "nats", "tokio"]


def load(d, s, r):
    try:
        return json.load(open(f"{d}/{s}-{r}.json"))
    except OSError:
        return None


def writes(d, s, r):
    try:
        rows = [l.split(",") for l in open(f"{d}/{s}-{r}.perf") if l.count(",") >= 2 and not l.startswith("#")]
    except OSError:
        return None
    c = {row[2]: int(row[0]) for row in rows if row[0].isdigit()}
    return sum(v for k, v in c.items() if not k.endswith("io_uring_enter")), c.get("syscalls:sys_enter_io_uring_enter", 0)


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


rates = sorted({int(f.split("-")[1].split(".")[0]) for d in dirs for f in __import__("os").listdir(d) if f.endswith(".json")})
print(f"{n} WebSocket subscribers, 64 B, medians of {len(dirs)} rounds (lost: every round)")
print("| rate | server | deliveries/s | lost | server CPU/delivery | vs uWS.js | p50 | p99 | RSS/conn | deliveries per write | io_uring_enter per write |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rates:
    cpu = {}
    for s in servers:
        runs = [(load(d, s, r), writes(d, s, r)) for d in dirs]
        runs = [(j, w) for j, w in runs if j]
        if not runs:
            continue
        cpu[s] = med([j["server_cpu_us_per_delivery"] for j, _ in runs])
    for s in servers:
        runs = [(load(d, s, r), writes(d, s, r)) for d in dirs]
        runs = [(j, w) for j, w in runs if j]
        if not runs:
            continue
        dps = med([j["deliveries_per_sec"] for j, _ in runs])
        lost = " / ".join(str(j["lost"]) for j, _ in runs)
        p50 = med([j["latency_us"]["p50"] / 1000 for j, _ in runs])
        p99 = med([j["latency_us"]["p99"] / 1000 for j, _ in runs])
        rss = med([j["memory"]["server_rss_per_conn_bytes"] for j, _ in runs])
        dpw = med([j["received"] / max(w[0] - n, 1) for j, w in runs if w])
        upw = med([w[1] / max(w[0] - n, 1) for j, w in runs if w])
        ratio = f"{cpu[s] / cpu['uws']:.2f}x" if cpu.get("uws") and cpu.get(s) else "-"
        print(f"| {r} | {s} | {dps:,.0f} | {lost} | {cpu[s]:.2f} µs | {ratio} | {p50:,.0f} ms | {p99:,.0f} ms | "
              f"{rss:,.0f} B | {dpw:.2f} | {upw:.2f} |")
