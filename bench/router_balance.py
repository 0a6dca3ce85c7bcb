"""How evenly the router spreads a pool's requests over its endpoints, how soon a new endpoint gets
its share, and what that costs the router per request.

Three pools of four endpoints each (twelve vLLM-shaped upstreams in one process, each answer naming
the endpoint that served it), a routing table splitting every request 50/30/20 over the pools, and
a load generator with 24 connections. Measured: per pool, the most and fewest requests one endpoint
served (least requests in flight, ties drawn at random); the router's requests per CPU second; then
a fifth endpoint added to the first pool (the table rewritten, as discovery would add it) and the
time until it serves at least 80% of its fair share (1/5 of the pool) over half a second of load.

Then, in the same run and on the same twelve upstreams, the router's cost against older versions of
itself: each version's router (this tree's, and by default main's and the one before issue 22's
router work, commit 6381855^, whose `--table` mode is the static-URL router the issue started from)
runs as its own process from a `git archive` of its commit, reading the same table file; for plain and
streaming completions (16 text events, usage asked for and hidden) it gets `--load-requests` requests
over 32 connections (router req/s per CPU second of the router process) and 300 one-at-a-time
requests for the p50 latency, against the same requests sent straight to one upstream (added p50).
The versions take turns, `--rounds` times; the medians are printed.

Usage: python bench/router_balance.py [--requests 6000] [--baseline REV ...] [--rounds 3] [--load-requests 3000]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from common import ROOT, cpu_seconds, print_table

from melange.operator.router.proxy import Router, serve
from melange.testing.openai_upstream import upstream_app
from melange.testing.ports import free_port, wait_for_port

POOLS = {"a": 0.5, "b": 0.3, "c": 0.2}
ENDPOINTS = 4
CONCURRENCY = 24
TEXT_EVENTS = 16  # per streamed answer, as bench/router_overhead.py
BASELINES = ("6381855^", "main")  # before issue 22's router work (static table URLs); main
# Runs one tree's router on a table file, with this interpreter's packages but that tree's code: the
# editable install's finder is taken out and a folder whose melange/ links to the tree goes first.
BOOTSTRAP = """
import sys
shim, port, table = sys.argv[1:4]
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, '__module__', '').startswith('__editable__')]
sys.path_importer_cache.clear()
sys.path.insert(0, shim)
from pathlib import Path
from melange.operator.router import proxy
print('router from', proxy.__file__, file=sys.stderr, flush=True)
proxy.serve(proxy.Router(Path(table), 'bench'), '127.0.0.1', int(port))
"""


def run_upstreams(ports: dict[str, int]) -> None:
    """Serve one upstream per name on its port, all in this process, until killed."""
    async def serve_all() -> None:
        for name, port in ports.items():
            runner = web.AppRunner(upstream_app(name, chunks=TEXT_EVENTS), access_log=None, handler_cancellation=True)
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


def shim_for(tree: Path, folder: Path) -> Path:
    """A folder whose melange/{solver,operator,testing} link to `tree`'s folders."""
    package = folder / "melange"
    package.mkdir(parents=True)
    for name in ("solver", "operator", "testing"):
        (package / name).symlink_to(tree / name)
    return folder


def checkout(rev: str, folder: Path) -> tuple[str, Path]:
    """`rev`'s code (git archive, no worktree), its short commit and the shim running it."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    tree = folder / f"tree-{commit}"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit, "solver", "operator", "testing"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return commit, shim_for(tree, folder / f"shim-{commit}")


def start_router(shim: Path, port: int, path: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:  # cwd: the shim (the repository root's operator/ would shadow the stdlib)
        process = subprocess.Popen([sys.executable, "-c", BOOTSTRAP, str(shim), str(port), str(path)], cwd=shim,
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""})
    wait_for_port(port)
    source = log.read_text().splitlines()[0]
    assert source.startswith(f"router from {shim}/melange/operator/router/"), source  # that tree's code runs
    return process


async def loaded(url: str, count: int, stream: bool, concurrency: int = 32) -> float:
    """`count` requests, `concurrency` at a time: the seconds they took."""
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one() -> None:
            async with semaphore:
                async with session.post(f"{url}/v1/completions",
                                        json={"prompt": "hello", "max_tokens": 4, "stream": stream}) as reply:
                    assert reply.status == 200, await reply.text()
                    await reply.read()
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return time.perf_counter() - started


async def p50_ms(url: str, count: int, stream: bool) -> float:
    """Median latency of `count` requests sent one at a time (after 20 to warm up), in ms."""
    latencies = []
    async with aiohttp.ClientSession() as session:
        for k in range(count + 20):
            started = time.perf_counter()
            async with session.post(f"{url}/v1/completions",
                                    json={"prompt": "hello", "max_tokens": 4, "stream": stream}) as reply:
                await reply.read()
            if k >= 20:
                latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1000


def compare(baselines: list[str], path: Path, direct: str, folder: Path, rounds: int, count: int) -> None:
    """Each router version's req/s per core and added p50, plain and streaming, on the same upstreams."""
    versions = [(f"{rev} ({commit})", shim) for rev in baselines for commit, shim in [checkout(rev, folder)]]
    versions.append(("this tree", shim_for(ROOT, folder / "shim-this")))
    results: dict[tuple[str, bool], dict[str, list[float]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for _ in range(rounds):
        for name, shim in versions:
            port = free_port()
            router = start_router(shim, port, path, folder / f"router-{port}.log")
            url = f"http://127.0.0.1:{port}"
            try:
                for stream in (False, True):
                    asyncio.run(loaded(url, 200, stream))  # warm up
                    cpu = cpu_seconds(router.pid)
                    elapsed = asyncio.run(loaded(url, count, stream))
                    cpu = cpu_seconds(router.pid) - cpu
                    row = results[(name, stream)]
                    row["per core"].append(count / cpu)
                    row["end to end"].append(count / elapsed)
                    row["direct p50"].append(asyncio.run(p50_ms(direct, 300, stream)))
                    row["routed p50"].append(asyncio.run(p50_ms(url, 300, stream)))
            finally:
                router.terminate()
                router.wait(10)
    rows = []
    for stream in (False, True):
        for name, _ in versions:
            row = {key: statistics.median(values) for key, values in results[(name, stream)].items()}
            spread = results[(name, stream)]["per core"]
            rows.append([f"streaming ({TEXT_EVENTS} events)" if stream else "plain", name, f"{row['per core']:.0f}",
                         f"{min(spread):.0f}-{max(spread):.0f}", f"{row['end to end']:.0f}",
                         f"{row['direct p50']:.2f}", f"{row['routed p50']:.2f}",
                         f"{row['routed p50'] - row['direct p50']:+.2f}"])
    print(f"\nrouter versions, 3 pools x {ENDPOINTS} endpoints, median of {rounds} rounds of {count} requests "
          f"(32 connections) each:")
    print_table(["requests", "router", "req/s per core", "range", "end-to-end req/s", "direct p50 ms",
                 "routed p50 ms", "added p50 ms"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000, help="requests in the spread measurement")
    parser.add_argument("--baseline", action="append", metavar="REV",
                        help=f"a git revision whose router to compare with this tree's (repeatable; default: "
                             f"{', '.join(BASELINES)}; 'none' for no comparison)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each router version takes in the comparison")
    parser.add_argument("--load-requests", type=int, default=3000, help="requests per load measurement")
    args = parser.parse_args()
    baselines = [b for b in (args.baseline or BASELINES) if b != "none"]
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
        router.terminate()
        urls["a"].pop()
        path.write_text(json.dumps(table(urls)))
        if baselines is not None:
            compare(baselines, path, urls["a"][0], folder, args.rounds, args.load_requests)
    finally:
        router.terminate()
        upstreams.terminate()


if __name__ == "__main__":
    main()
