"""The router against local OpenAI-compatible upstreams on 127.0.0.1."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from melange.operator.router import proxy as proxy_module
from melange.operator.router.proxy import SERVER_OPTIONS, Router, build_app
from melange.testing.openai_upstream import CANCELLED, SLOW_PROMPT, STARTED, serve_app, stream_events, upstream_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    return await serve_app(app, **SERVER_OPTIONS)


def table(urls: dict[str, str], input_weights: list[dict[str, float]]) -> dict:
    return {"grid": {"input_edges": [100, 1000], "output_edges": [100, 1000]},
            "pools": {name: {"urls": [url]} for name, url in urls.items()}, "input_weights": input_weights}


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition` to hold, checking between event-loop turns (the bound only keeps a
    broken router from hanging the suite)."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def total(counter) -> float:
    """A counter's value summed over its labels."""
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def reloads(router: Router, result: str) -> float:
    return router.metrics.reloads.labels(result)._value.get()


@pytest_asyncio.fixture
async def cluster(tmp_path):
    runners, urls = [], {}
    slow_requests: asyncio.Queue = asyncio.Queue()
    for name in ("a", "b"):
        runner, url = await serve(upstream_app(name, slow_requests))
        runners.append(runner)
        urls[name] = url
    urls["down"] = "http://127.0.0.1:9"  # discard port: nothing listens
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(table(urls, [{"a": 0.7, "b": 0.3}, {"down": 0.5, "b": 0.5}])))
    router = Router(path, model_name="m", seed=1)
    runner, router_url = await serve(build_app(router, reload_interval_s=0.05))
    runners.append(runner)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        session.slow_requests = slow_requests
        yield router, router_url, urls, path, session
    for runner in runners:
        await runner.cleanup()


async def send_many(session, url: str, count: int, prompt: str = "hi") -> list[tuple[int, str]]:
    semaphore = asyncio.Semaphore(64)

    async def one():
        async with semaphore:
            async with session.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 5}) as response:
                data = await response.json()
                return response.status, data.get("served_by", "")
    return await asyncio.gather(*(one() for _ in range(count)))


async def test_shares_follow_the_table(cluster):
    router, url, _, _, session = cluster
    results = await send_many(session, url, 10_000)
    assert all(status == 200 for status, _ in results)
    shares = Counter(name for _, name in results)
    assert shares["a"] / 10_000 == pytest.approx(0.7, abs=0.02)
    assert shares["b"] / 10_000 == pytest.approx(0.3, abs=0.02)
    # sizes from each `usage`: "hi" is 1 token to the upstream, max_tokens 5
    assert router.metrics.joint.labels("m", "1", "5")._value.get() == 10_000


async def test_streaming_passes_through_byte_for_byte(cluster):
    router, url, _, _, session = cluster
    body = {"prompt": "hi", "stream": True}
    async with session.post(f"{url}/v1/completions", json=body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        received = await response.read()
    assert received == b"".join(stream_events(body))  # what the upstream sends a client that did not ask for usage
    # the router asked for usage all the same: 1 prompt token ("hi"), 30 (no max_tokens) generated
    assert router.metrics.joint.labels("m", "1", "32")._value.get() == 1


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_a_stream_is_what_the_upstream_sends_for_the_clients_own_request(cluster, path):
    router, url, urls, _, session = cluster
    prompt = {"prompt": "one two three"} if path == "/v1/completions" else {
        "messages": [{"role": "user", "content": "one two three"}]}
    for options in (None, {"include_usage": False}, {"include_usage": True}, {}):
        body = {**prompt, "max_tokens": 7, "stream": True}
        if options is not None:
            body["stream_options"] = options
        async with session.post(urls["a"] + path, json=body) as direct:
            expected = await direct.read()
        async with session.post(url + path, json=body) as routed:
            received = await routed.read()
        assert received == expected, options
        asked = options is not None and options.get("include_usage", False)  # vLLM 0.34's default
        assert (b'"usage":{' in received) == asked and (b'"choices":[]' in received) == asked
    # all four counted, by the upstream's usage: 3 prompt tokens, 7 generated
    assert router.metrics.joint.labels("m", "5", "10")._value.get() == 4


async def test_reload_under_load_loses_nothing(cluster):
    router, url, urls, path, session = cluster
    load = asyncio.create_task(send_many(session, url, 3000))
    await until(lambda: total(router.metrics.requests) >= 300, "the load under way")
    path.write_text(json.dumps(table(urls, [{"b": 1.0}, {"b": 1.0}])) + " ")
    await until(lambda: reloads(router, "ok") == 1, "the table reloaded")
    results = await load
    assert all(status == 200 for status, _ in results)
    after = await send_many(session, url, 200)
    assert {name for _, name in after} == {"b"}


async def test_bad_table_keeps_the_last_good_one(cluster):
    router, url, urls, path, session = cluster
    path.write_text(json.dumps(table(urls, [{"nope": 1.0}, {"b": 1.0}])))
    await until(lambda: reloads(router, "rejected") == 1, "the bad table rejected")
    results = await send_many(session, url, 50)
    assert {name for _, name in results} <= {"a", "b"} and all(s == 200 for s, _ in results)


async def test_down_pool_is_skipped_before_any_byte(cluster):
    router, url, _, _, session = cluster
    results = await send_many(session, url, 200, prompt="x" * 1200)  # ~300 tokens: bucket 1 (down or b)
    assert all(status == 200 for status, _ in results)
    assert {name for _, name in results} == {"b"}
    assert router.metrics.errors.labels("down")._value.get() >= 1


async def test_bad_input(cluster):
    router, url, urls, path, session = cluster
    async with session.post(f"{url}/v1/completions", data=b"{not json") as response:
        assert response.status == 400 and "JSON" in (await response.json())["error"]["message"]
    async with session.post(f"{url}/v1/completions", data=b"x" * (9 * 1024 * 1024)) as response:
        assert response.status == 413
    path.write_text(json.dumps(table(urls, [{"a": 1.0}, {}])))
    await until(lambda: reloads(router, "ok") == 1, "the table reloaded")
    async with session.post(f"{url}/v1/completions", json={"prompt": "y" * 1200}) as response:
        assert response.status == 503 and (await response.json())["error"]["type"] == "no_pool_available"
    async with session.get(f"{url}/v1/models") as response:
        assert response.status == 200


async def test_client_disconnect_cancels_the_upstream_request(cluster):
    router, url, _, _, session = cluster
    async def send(stream: bool) -> None:
        async with session.post(f"{url}/v1/completions", json={"prompt": SLOW_PROMPT, "stream": stream}) as response:
            await response.read()

    for stream in (False, True):
        client = asyncio.create_task(send(stream))
        pool, outcome = await session.slow_requests.get()
        assert outcome == STARTED
        client.cancel()  # the client leaves while the upstream works
        with contextlib.suppress(asyncio.CancelledError):
            await client
        # the upstream would run 5 s and then report FINISHED: it sees its caller leave first
        assert await session.slow_requests.get() == (pool, CANCELLED)
    await until(lambda: sum(sum(state.outstanding.values()) for state in router.pools.values()) == 0,
                "no request outstanding")


async def routed_by(router_url: str, session, prompt: str, count: int) -> Counter:
    results = await send_many(session, router_url, count, prompt=prompt)
    assert all(status == 200 for status, _ in results)
    return Counter(name for _, name in results)


async def test_exact_counting_through_tokenize(cluster, tmp_path):
    _, url, urls, path, session = cluster
    prompt = "word " * 90  # 90 tokens by /tokenize (bucket 0: a or b), ~115 estimated (bucket 1: b only)
    assert set(await routed_by(url, session, prompt, 100)) == {"b"}
    exact = Router(path, model_name="m", seed=2, tokenize=True)
    runner, exact_url = await serve(build_app(exact))
    try:
        shares = await routed_by(exact_url, session, prompt, 400)
        assert shares["a"] / 400 == pytest.approx(0.7, abs=0.1)
        assert exact.metrics.tokenize_fallbacks._value.get() == 0
    finally:
        await runner.cleanup()


async def test_tokenize_falls_back_to_the_estimate(cluster, tmp_path):
    _, _, _, _, session = cluster
    upstream, upstream_url = await serve(upstream_app("no-tokenize", tokenize=False))
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(table({"no-tokenize": upstream_url}, [{"no-tokenize": 1.0}, {"no-tokenize": 1.0}])))
    router = Router(path, tokenize=True)
    runner, url = await serve(build_app(router))
    try:
        assert set(await routed_by(url, session, "word " * 90, 20)) == {"no-tokenize"}
        assert router.metrics.tokenize_fallbacks._value.get() == 20
    finally:
        await runner.cleanup()
        await upstream.cleanup()


async def test_the_output_bucket_decides_the_pool(cluster, tmp_path):
    """With joint weights, a request's `max_tokens` picks the column: the same prompt goes to `a`
    for short answers and to `b` for long ones; without `max_tokens` the input weights decide."""
    _, _, urls, _, session = cluster
    path = tmp_path / "joint.json"
    document = table({"a": urls["a"], "b": urls["b"]}, [{"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5}])
    document["joint_weights"] = [[{"a": 1.0}, {"b": 1.0}], [{"a": 1.0}, {"b": 1.0}]]
    path.write_text(json.dumps(document))
    router = Router(path, seed=3)
    runner, router_url = await serve(build_app(router))
    try:
        served = {}
        for max_tokens in (5, 500, None):
            body = {"prompt": "hi", **({"max_tokens": max_tokens} if max_tokens else {})}
            names = Counter()
            for _ in range(40):
                async with session.post(f"{router_url}/v1/completions", json=body) as response:
                    names[(await response.json())["served_by"]] += 1
            served[max_tokens] = names
        assert served[5] == {"a": 40} and served[500] == {"b": 40}
        assert set(served[None]) == {"a", "b"}  # 40 draws at 0.5 each: both, but for 2 in 10^12
    finally:
        await runner.cleanup()


async def test_a_failed_pool_is_skipped_for_the_health_window(cluster, tmp_path, monkeypatch):
    """After a pool fails once, the next requests go straight to the others for the health window:
    the failed pool sees no further connection, and its share comes back once the window is over."""
    _, _, urls, _, session = cluster
    monkeypatch.setattr(proxy_module, "UNHEALTHY_BACKOFF_S", 3600.0)  # the window outlasts the test
    attempts = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    broken = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    broken_url = f"http://127.0.0.1:{broken.sockets[0].getsockname()[1]}"
    path = tmp_path / "broken.json"
    # `broken` is drawn first for nearly every request (weight 1 against 0.001)
    path.write_text(json.dumps(table({"broken": broken_url, "b": urls["b"]},
                                     [{"broken": 1.0, "b": 0.001}, {"broken": 1.0, "b": 0.001}])))
    router = Router(path, seed=4)
    runner, router_url = await serve(build_app(router))

    async def served_by() -> str:
        async with session.post(f"{router_url}/v1/completions", json={"prompt": "hi"}) as response:
            assert response.status == 200
            return (await response.json())["served_by"]

    try:
        assert await served_by() == "b"  # broken first, then the retry on b
        assert attempts == 1
        for _ in range(20):  # one after another, inside the health window
            assert await served_by() == "b"
        assert attempts == 1
        assert router.metrics.requests.labels("broken")._value.get() == 1
        assert router.metrics.errors.labels("broken")._value.get() == 1
        router.pools["broken"].unhealthy_until = 0.0  # the window is over
        assert await served_by() == "b"
        assert attempts == 2
    finally:
        await runner.cleanup()
        broken.close()
        await broken.wait_closed()


async def test_requests_in_flight_per_pool_also_to_a_pool_the_table_dropped(cluster):
    """`/routing` and the `melange_router_pool_in_flight` gauge count each pool's requests in flight; a
    request sent before a new table dropped its pool still counts, and when it finishes the router tells
    its acknowledger that none is left (the operator's drain waits for that)."""
    router, url, urls, path, session = cluster
    reports = []

    class Recorder:  # the acknowledger's side the router calls
        def report(self, counts):
            reports.append(dict(counts))

    router.acknowledger = Recorder()

    async def slow():
        async with session.post(f"{url}/v1/completions", json={"prompt": SLOW_PROMPT}) as response:
            return response.status, await response.json()

    async def in_flight():
        async with session.get(f"{url}/routing") as response:
            return (await response.json())["in_flight"]

    async def gauge(pool):
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
        return float(text.split(f'melange_router_pool_in_flight{{pool="{pool}"}} ')[1].split()[0])

    client = asyncio.create_task(slow())
    pool, outcome = await session.slow_requests.get()  # the upstream is named as its pool
    assert outcome == STARTED
    other = "b" if pool == "a" else "a"
    assert (await in_flight())[pool] == 1 and (await in_flight())[other] == 0
    assert await gauge(pool) == 1
    path.write_text(json.dumps(table({other: urls[other]}, [{other: 1.0}, {other: 1.0}])))
    await until(lambda: pool not in router.table.pools, "the table without the busy pool")
    assert await in_flight() == {other: 0, pool: 1}
    assert router.in_flight_elsewhere() == {pool: 1}
    assert reports == []  # nothing finished yet
    status, answer = await client
    assert status == 200 and answer["served_by"] == pool  # not cut
    assert reports == [{}]  # none left: the last report
    assert await in_flight() == {other: 0} and await gauge(pool) == 0
