#!/usr/bin/env python3
"""`sd-onnx serve` under load (issue 16): requests/s and latency p50/p99 with 1, 4 and 16 concurrent clients,
time outside ONNX Runtime's Session::run per request, RSS after 20 and after 300 requests, and the CLI's
one-process-per-image wall for the same job, all in one run on one machine.

    .venv/bin/python scripts/bench_server.py [--model onnx/sd-emoji] [--requests 48] [--json OUT]

Standard library only. Each job is txt2img 64x64, 8 steps, Euler a, its own seed. The server is started on
127.0.0.1 with an OS-chosen port and the queue sized for 16 clients; timings per request come from the
response's `info.timings` (request_ms: the handler's wall, queue_ms, session_run_ms: inside Session::run,
outside_session_run_ms: request_ms - queue_ms - session_run_ms) and from the client's own clock.
"""
import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "sd-onnx"


def quantile(xs, q):
    xs = sorted(xs)
    i = q * (len(xs) - 1)
    lo = int(i)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def job(seed):
    return {"prompt": "red apple", "seed": seed, "steps": 8, "sampler_name": "Euler a", "width": 64, "height": 64}


def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    wall = (time.perf_counter() - t0) * 1000
    base64.b64decode(out["images"][0])
    return wall, json.loads(out["info"])["timings"]


def start_server(model, queue):
    p = subprocess.Popen([str(BIN), "serve", "-m", model, "--listen", "127.0.0.1:0", "--queue", str(queue)],
                         stderr=subprocess.PIPE, text=True)
    lines = []
    for line in p.stderr:
        lines.append(line)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, int(m.group(1))
    raise SystemExit("server did not start:\n" + "".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="onnx/sd-emoji")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--json")
    a = ap.parse_args()
    os.chdir(ROOT)

    # The CLI, one process per image (what a server saves): start-up, session creation, the run.
    cli = []
    for seed in range(5):
        t0 = time.perf_counter()
        subprocess.run([str(BIN), "txt2img", "-m", a.model, "-p", "red apple", "--seed", str(seed), "--steps", "8",
                        "--scheduler", "Euler a", "-W", "64", "-H", "64", "-q", "--overwrite", "-o",
                        "/tmp/bench-server-cli.png"], check=True)
        cli.append((time.perf_counter() - t0) * 1000)

    p, port = start_server(a.model, queue=16)
    results = {"model": a.model, "job": "txt2img 64x64, 8 steps, Euler a", "cpu_cores": os.cpu_count(),
               "cli_process_per_image_ms_median": statistics.median(cli), "levels": {}}
    try:
        for i in range(4):  # warm-up: first-run allocations
            post(port, job(1000 + i))
        seed = 0
        for clients in (1, 4, 16):
            seeds = list(range(seed, seed + a.requests))
            seed += a.requests
            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                out = list(pool.map(lambda s: post(port, job(s)), seeds))
            elapsed = time.perf_counter() - t0
            walls = [w for w, _ in out]
            outside = [t["outside_session_run_ms"] for _, t in out]
            worker = [t["worker_ms"] for _, t in out]
            level = {"requests": len(out), "requests_per_s": len(out) / elapsed,
                     "latency_ms_p50": quantile(walls, 0.5), "latency_ms_p99": quantile(walls, 0.99),
                     "worker_ms_median": statistics.median(worker),
                     "session_run_ms_median": statistics.median(t["session_run_ms"] for _, t in out),
                     "outside_session_run_ms_median": statistics.median(outside),
                     "outside_session_run_share": sum(outside) / sum(t["request_ms"] - t["queue_ms"] for _, t in out)}
            results["levels"][str(clients)] = level
            print(f"{clients:>2} clients: {level['requests_per_s']:.2f} req/s, p50 {level['latency_ms_p50']:.0f} ms, "
                  f"p99 {level['latency_ms_p99']:.0f} ms, outside Session::run {level['outside_session_run_ms_median']:.1f}"
                  f" ms/request ({100 * level['outside_session_run_share']:.1f}% of the time not queued)", flush=True)
        # RSS after 20 and after 300 requests, on a fresh server.
        p.terminate()
        p.wait(timeout=30)
        p, port = start_server(a.model, queue=16)
        rss = {}
        for i in range(300):
            post(port, job(5000 + i))
            if i + 1 in (20, 300):
                rss[i + 1] = rss_mib(p.pid)
        results["rss_mib_after_20"], results["rss_mib_after_300"] = rss[20], rss[300]
        print(f"RSS after 20 requests {rss[20]:.1f} MiB, after 300 {rss[300]:.1f} MiB", flush=True)
        print(f"CLI, one process per image: median {results['cli_process_per_image_ms_median']:.0f} ms; server at 1 "
              f"client p50 {results['levels']['1']['latency_ms_p50']:.0f} ms "
              f"({results['levels']['1']['latency_ms_p50'] / results['cli_process_per_image_ms_median']:.2f}x)")
    finally:
        p.terminate()
        p.wait(timeout=30)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
