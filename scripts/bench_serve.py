"""Load test of `pantheon.serve` on 127.0.0.1 only: throughput and p50/p99 latency, batching off vs on, one run.

Two servers of the same GAN checkpoint run side by side, `max_batch_size=1` (batching off, the baseline) and
`max_batch_size=32 batch_timeout=0.01` (on). For each concurrency level, each server gets the same fixed number of
requests from that many client threads, off and on alternating so that a change in machine load hits both. It stops
by itself: fixed request counts, a per-request timeout and an overall deadline.

    python scripts/bench_serve.py                          # = make bench-serve
    python scripts/bench_serve.py --levels 1 8 32 --requests 300 --n 1
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pantheon.serving.launch import HOST, get, scrape, serving

ASSET = Path(__file__).resolve().parents[1] / "tests" / "assets" / "serving" / "gan_mnist.ckpt"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_level(url: str, concurrency: int, requests: int, n: int, deadline: float) -> dict:
    """`requests` POSTs from `concurrency` threads (one keep-alive connection each); latencies in seconds."""
    port = int(url.rsplit(":", 1)[1])
    per_thread = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]

    def client(index: int) -> list[float]:
        connection, latencies = http.client.HTTPConnection(HOST, port, timeout=60), []
        for k in range(per_thread[index]):
            if time.monotonic() > deadline:
                break
            body = json.dumps(
                {"digit": (index + k) % 10, "n": n, "seed": index * 100_000 + k, "format": "npy"}
            )
            start = time.perf_counter()
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status} from {url}")
            latencies.append(time.perf_counter() - start)
        connection.close()
        return latencies

    before = scrape(get(f"{url}/metrics")[1].decode())
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for thread in pool.map(client, range(concurrency)) for t in thread]
    seconds = time.perf_counter() - start
    after = scrape(get(f"{url}/metrics")[1].decode())
    delta = lambda key: after.get(key, 0.0) - before.get(key, 0.0)  # noqa: E731
    calls = delta("pantheon_batch_requests_count")
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "rps": len(latencies) / seconds,
        "p50": percentile(latencies, 0.5) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "mean": statistics.fmean(latencies) * 1000,
        "batch": (after["pantheon_batch_requests_sum"] - before["pantheon_batch_requests_sum"])
        / max(calls, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(ASSET))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=300, help="per level and mode")
    parser.add_argument("--n", type=int, default=1, help="digits per request")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1, help="model threads per server (both get the same)")
    parser.add_argument(
        "--max-seconds", type=float, default=240, help="overall deadline for the measurements"
    )
    args = parser.parse_args()

    common = [f"ckpt={args.ckpt}", f"threads={args.threads}", f"max_n={max(args.n, 1)}"]
    modes = {
        "off": [*common, "max_batch_size=1"],
        "on": [*common, f"max_batch_size={args.max_batch_size}", f"batch_timeout={args.batch_timeout}"],
    }
    print(f"before: {load()}", flush=True)
    rows = []
    with (
        tempfile.TemporaryDirectory() as logs,
        serving(modes["off"], Path(logs) / "off.log") as off,
        serving(modes["on"], Path(logs) / "on.log") as on,
    ):
        urls = {"off": off, "on": on}
        for url in urls.values():  # warm the HTTP path and the model once
            run_level(url, 4, 40, args.n, time.monotonic() + 60)
        deadline = time.monotonic() + args.max_seconds
        for concurrency in args.levels:
            for mode in ("off", "on"):
                result = run_level(urls[mode], concurrency, args.requests, args.n, deadline)
                rows.append((mode, concurrency, result))
                print(f"  measured batching {mode} at concurrency {concurrency}; {load()}", flush=True)
    print(f"after: {load()}\n")
    print(
        f"GAN {Path(args.ckpt).name}, ONNX on CPU, {args.n} digit(s) per request, batching on = max_batch_size="
        f"{args.max_batch_size} batch_timeout={args.batch_timeout}s, model threads {args.threads}"
    )
    print("| batching | concurrency | requests | req/s | p50 ms | p99 ms | mean requests per model call |")
    print("|---|---|---|---|---|---|---|")
    for mode, concurrency, r in rows:
        print(
            f"| {mode} | {concurrency} | {r['requests']} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
            f"{r['batch']:.2f} |"
        )
    for concurrency in args.levels:
        off, on = (next(r for m, c, r in rows if m == mode and c == concurrency) for mode in ("off", "on"))
        print(f"concurrency {concurrency}: batching on / off throughput = {on['rps'] / off['rps']:.2f}x")


if __name__ == "__main__":
    main()
