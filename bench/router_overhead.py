"""Latency the router adds (p50, p99) and the highest request rate through it versus direct to an
upstream, for short non-streaming and streaming completions, on this machine.

The upstream and the router run in separate processes; the load generator is a third process with
32 concurrent connections. On a 2-core machine the three share the cores, so the end-to-end rate is
bounded by the machine; "router req/s per core" is the request count over the CPU seconds the router
process itself spent (from /proc), which is what one router core sustains.

Usage: python bench/router_overhead.py [--requests 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from common import cpu_seconds, print_table

from melange.operator.router.proxy import Router, serve
from melange.testing.openai_upstream import run_upstream
from melange.testing.ports import wait_for_port

TEXT_EVENTS = 16  # per streamed answer; the router asks for usage and hides the usage event from the client


def run_router(port: int, table: str) -> None:
    serve(Router(Path(table), "bench"), "127.0.0.1", port)


async def measure(url: str, count: int, stream: bool, concurrency: int) -> tuple[float, float, float]:
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one() -> None:
            async with semaphore:
                started = time.perf_counter()
                async with session.post(f"{url}/v1/completions", json={"prompt": "hello", "max_tokens": 4,
                                                                      "stream": stream}) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
        await asyncio.gather(*(one() for _ in range(50)))  # warm up
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return statistics.median(latencies) * 1000, latencies[int(0.99 * len(latencies))] * 1000, count / elapsed


async def serial_latency(url: str, count: int, stream: bool) -> tuple[float, float]:
    latencies = []
    async with aiohttp.ClientSession() as session:
        for k in range(count + 20):
            started = time.perf_counter()
            async with session.post(f"{url}/v1/completions", json={"prompt": "hello", "stream": stream}) as response:
                await response.read()
            if k >= 20:
                latencies.append(time.perf_counter() - started)
    latencies.sort()
    return statistics.median(latencies) * 1000, latencies[int(0.99 * len(latencies))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    args = parser.parse_args()
    upstream_port, router_port = 18091, 18092
    table = Path(tempfile.mkdtemp()) / "routing.json"
    table.write_text(json.dumps({"grid": {"input_edges": [100000], "output_edges": [100000]},
                                 "pools": {"p": {"urls": [f"http://127.0.0.1:{upstream_port}"]}},
                                 "input_weights": [{"p": 1.0}]}))
    processes = [multiprocessing.Process(target=run_upstream, args=(upstream_port, TEXT_EVENTS), daemon=True),
                 multiprocessing.Process(target=run_router, args=(router_port, str(table)), daemon=True)]
    for process in processes:
        process.start()
    wait_for_port(upstream_port)
    wait_for_port(router_port)
    rows = []
    try:
        for stream in (False, True):
            kind = f"streaming ({TEXT_EVENTS} text events, usage hidden)" if stream else "non-streaming"
            direct = asyncio.run(serial_latency(f"http://127.0.0.1:{upstream_port}", 500, stream))
            routed = asyncio.run(serial_latency(f"http://127.0.0.1:{router_port}", 500, stream))
            direct_load = asyncio.run(measure(f"http://127.0.0.1:{upstream_port}", args.requests, stream, 32))
            router_cpu = cpu_seconds(processes[1].pid)
            routed_load = asyncio.run(measure(f"http://127.0.0.1:{router_port}", args.requests, stream, 32))
            # the 50 warm-up requests ran in the same window
            per_core = (args.requests + 50) / (cpu_seconds(processes[1].pid) - router_cpu)
            rows.append([kind, f"{direct[0]:.2f}", f"{routed[0]:.2f}", f"{routed[0] - direct[0]:+.2f}",
                         f"{direct[1]:.2f}", f"{routed[1]:.2f}", f"{routed[1] - direct[1]:+.2f}",
                         f"{direct_load[2]:.0f}", f"{routed_load[2]:.0f}", f"{per_core:.0f}"])
    finally:
        for process in processes:
            process.terminate()
    print_table(["requests", "direct p50 ms", "routed p50 ms", "added p50", "direct p99 ms", "routed p99 ms",
                 "added p99", "direct req/s", "routed req/s", "router req/s per core"], rows)


if __name__ == "__main__":
    main()
