"""How evenly the router spreads a pool's requests over its endpoints, how soon a new endpoint gets
its share, and what that costs the router per request.

Three pools of four endpoints each (twelve vLLM-shaped upstreams in one process, each answer naming
the endpoint that served it), a routing table splitting every request 50/30/20 over the pools, and
a load generator with 24 connections. Measured: per pool, the most and fewest requests one endpoint
served (least requests in flight, ties drawn at random); the router's requests per CPU second; then
a fifth endpoint added to the first pool (the table rewritten, as discovery would add it) and the
time until it serves at least 80% of its fair share (1/5 of the pool) over half a second of load.

Usage: python bench/router_balance.py [--requests 6000]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from common import cpu_seconds, print_table

from melange.operator.router.proxy import Router, serve
from melange.testing.openai_upstream import upstream_app
from melange.testing.ports import free_port, wait_for_port

POOLS = {"a": 0.5, "b": 0.3, "c": 0.2}
ENDPOINTS = 4
CONCURRENCY = 24


def run_upstreams(ports: dict[str, int]) -> None:
    """Serve one upstream per name on its port, all in this process, until killed."""
    async def serve_all() -> None:
        for name, port in ports.items():
            runner = web.AppRunner(upstream_app(name), access_log=None, handler_cancellation=True)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()
    asyncio.run(serve_all())


def table(urls: dict[str, list[str]]) -> dict:
    return {"grid": {"input_edges": [100000], "output_edges": [100000]},
            "pools": {pool: {"urls": list(found)} for pool, found in urls.items()},
            "input_weights": [dict(POOLS)], "version": str(sum(len(u) for u in urls.values()))}


def run_router(port: int, path: str) -> None:
    serve(Router(Path(path), "bench"), "127.0.0.1", port)


async def load(url: str, count: int) -> collections.Counter:
    """`count` short completions through the router, CONCURRENCY at a time; who served each."""
    served: collections.Counter = collections.Counter()
    semaphore = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def one() -> None:
            async with semaphore:
                async with session.post(f"{url}/v1/completions", json={"prompt": "hello", "max_tokens": 4}) as reply:
                    served[(await reply.json())["served_by"]] += 1
        await asyncio.gather(*(one() for _ in range(count)))
    return served


async def time_to_share(url: str, newcomer: str, pool_size: int) -> float:
    """Seconds until `newcomer` serves >= 80% of its fair share of its pool over half a second of load."""
    started = time.monotonic()
    while time.monotonic() - started < 30:
        served = await load(url, 400)
        pool = sum(n for name, n in served.items() if name.startswith(newcomer.split("-")[0]))
        if pool and served[newcomer] >= 0.8 * pool / pool_size:
            return time.monotonic() - started
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000, help="requests in the spread measurement")
    args = parser.parse_args()
    names = [f"{pool}-{k}" for pool in POOLS for k in range(ENDPOINTS + 1)]
    ports = {name: free_port() for name in names}
    urls = {pool: [f"http://127.0.0.1:{ports[f'{pool}-{k}']}" for k in range(ENDPOINTS)] for pool in POOLS}
    folder = Path(tempfile.mkdtemp())
    path = folder / "routing.json"
    path.write_text(json.dumps(table(urls)))
    router_port = free_port()
    upstreams = multiprocessing.Process(target=run_upstreams, args=(ports,), daemon=True)
    router = multiprocessing.Process(target=run_router, args=(router_port, str(path)), daemon=True)
    upstreams.start()
    router.start()
    for port in [*ports.values(), router_port]:
        wait_for_port(port)
    url = f"http://127.0.0.1:{router_port}"
    try:
        asyncio.run(load(url, 200))  # warm up
        cpu_before, started = cpu_seconds(router.pid), time.perf_counter()
        served = asyncio.run(load(url, args.requests))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(router.pid) - cpu_before
        rows = []
        for pool, share in POOLS.items():
            counts = [served[f"{pool}-{k}"] for k in range(ENDPOINTS)]
            total = sum(counts)
            rows.append([pool, f"{share:.0%}", f"{total / args.requests:.1%}", total, max(counts), min(counts),
                         f"{(max(counts) - min(counts)) / (total / ENDPOINTS):.1%}"])
        print_table(["pool", "table share", "served share", "requests", "most per endpoint",
                     "fewest per endpoint", "(most - fewest) / mean"], rows)
        print(f"\nrouter: {args.requests / cpu:.0f} req/s per CPU second, {args.requests / elapsed:.0f} req/s end to "
              f"end ({CONCURRENCY} connections, 3 processes on this machine's cores)")
        urls["a"].append(f"http://127.0.0.1:{ports['a-4']}")
        path.write_text(json.dumps(table(urls)))
        seconds = asyncio.run(time_to_share(url, "a-4", ENDPOINTS + 1))
        print(f"a fifth endpoint in pool a serves >= 80% of its fair share {seconds:.1f} s after the table names it "
              f"(the file is polled each second; in a cluster the EndpointSlice watch brings it)")
    finally:
        router.terminate()
        upstreams.terminate()


if __name__ == "__main__":
    main()
