"""The router driven by the official `openai` client, as users drive it, to healthy local upstreams:
no pool errors, pool shares as the table says, every completed request counted once by size, usage
only for the clients that ask for it, and streams the client aborts cancelled upstream.

The synchronous `OpenAI` client is used (in threads): it closes the connection as soon as it has
read `data: [DONE]`, often before the router's last write, which is the case to survive.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import aiohttp
import pytest
import pytest_asyncio
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from melange.operator.router.proxy import SERVER_OPTIONS, Router, build_app
from melange.testing.openai_upstream import CANCELLED, FINGERPRINT, SLOW_PROMPT, STARTED, serve_app, upstream_app

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

WEIGHTS = [{"a": 0.6, "b": 0.4}, {"b": 0.25, "c": 0.75}]  # per input bucket: <= 100, <= 1000 tokens
# Request sizes (prompt words, max_tokens): the fake upstream reports one token per word and
# max_tokens output tokens. The router estimates "w w ... w" at 2 characters per word / 3.9 per
# token: 10 words -> 5 tokens (bucket 0), 400 words -> 205 tokens (bucket 1). The joint counter's
# cells, by hand from its edges (..., 10, 16, 20, 25, 32, 50, 64, 100, ..., 256, 500, ...):
SIZES = {(10, 20): (0, ("10", "20")), (400, 60): (1, ("500", "64"))}
# (endpoint, streamed, stream_options): every way a client asks
KINDS = [("completions", False, None), ("completions", True, None), ("completions", True, {"include_usage": True}),
         ("chat", False, None), ("chat", True, None), ("chat", True, {"include_usage": True}),
         ("chat", True, {})]  # vLLM 0.34 reads empty stream_options as include_usage: false
PER_KIND_AND_SIZE = 150  # 2,100 requests in all
TEXT_EVENTS = 4  # text events per stream (few: the client parses each one)
# The upstreams end each stream's body this long after its `data: [DONE]`, so the client has nearly
# always closed the connection before the router's last write.
TAIL_PAUSE_S = 0.005


@pytest_asyncio.fixture
async def pools_up(tmp_path):
    """Three healthy upstreams a, b, c behind a router; yields the router's URL and the queue
    where upstreams report how their slow requests went."""
    runners, urls = [], {}
    slow_requests: asyncio.Queue = asyncio.Queue()
    for name in ("a", "b", "c"):
        app = upstream_app(name, slow_requests, chunks=TEXT_EVENTS, tail_pause_s=TAIL_PAUSE_S)
        runner, urls[name] = await serve_app(app, **SERVER_OPTIONS)
        runners.append(runner)
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"grid": {"input_edges": [100, 1000], "output_edges": [100, 1000]},
                                "pools": {name: {"urls": [url]} for name, url in urls.items()},
                                "input_weights": WEIGHTS}))
    runner, router_url = await serve_app(build_app(Router(path, model_name="m", seed=7)), **SERVER_OPTIONS)
    runners.append(runner)
    yield router_url, slow_requests
    for runner in runners:
        await runner.cleanup()


async def scrape(router_url: str) -> dict[tuple[str, frozenset], float]:
    """The router's /metrics as {(sample name, labels): value}."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{router_url}/metrics") as response:
            text = await response.text()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(metrics: dict, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in metrics.items()
               if sample == name and wanted <= sample_labels)


def openai_client(router_url: str) -> OpenAI:
    # No retries: a failed request must show, not be sent again.
    return OpenAI(base_url=f"{router_url}/v1", api_key="unused", max_retries=0, timeout=30)


async def in_threads(calls: list, workers: int) -> None:
    """Run blocking client calls in threads while this event loop serves the router and the
    upstreams; every call finishes (an early failure must not leave the others waiting on a loop
    that no longer runs), then the first failure is raised."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=workers) as threads:
        results = await asyncio.gather(*(loop.run_in_executor(threads, call) for call in calls),
                                       return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        raise failures[0]


def one_request(client: OpenAI, endpoint: str, streamed: bool, options: dict | None,
                words: int, max_tokens: int) -> None:
    """Send one request and check what the client received against what it asked for."""
    prompt = " ".join(["w"] * words)
    extra = {"stream_options": options} if options is not None else {}
    if endpoint == "chat":
        answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, stream=streamed, **extra)
    else:
        answer = client.completions.create(model="m", prompt=prompt, max_tokens=max_tokens, stream=streamed,
                                           **extra)
    if not streamed:
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (words, max_tokens)
        return
    chunks = list(answer)
    text_chunks = [chunk for chunk in chunks if chunk.choices]
    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(text_chunks) == TEXT_EVENTS
    fingerprinted = [chunk for chunk in chunks if chunk.system_fingerprint is not None]
    if not (options or {}).get("include_usage"):  # did not ask: no usage chunk, no usage field vLLM would not send
        assert usage_chunks == [] and len(chunks) == TEXT_EVENTS
        if endpoint == "chat":
            assert not any("usage" in chunk.model_fields_set for chunk in chunks)
        # vLLM puts the fingerprint on the chunk that finishes the choice instead
        assert fingerprinted == [chunks[-1]] and chunks[-1].choices[0].finish_reason == "length"
        assert chunks[-1].system_fingerprint == FINGERPRINT
    else:
        assert usage_chunks == [chunks[-1]] and chunks[-1].choices == []
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (words, max_tokens)
        assert fingerprinted == [chunks[-1]] and chunks[-1].system_fingerprint == FINGERPRINT


async def test_openai_client_traffic_has_no_pool_errors_and_counts_every_request(pools_up, caplog):
    router_url, _ = pools_up
    client = openai_client(router_url)
    sent = [(kind, size) for kind in KINDS for size in SIZES for _ in range(PER_KIND_AND_SIZE)]
    await in_threads([partial(one_request, client, *kind, *size) for kind, size in sent], workers=16)
    client.close()
    metrics = await scrape(router_url)

    assert total(metrics, "melange_router_pool_errors_total") == 0
    assert total(metrics, "melange_router_client_disconnects_total") == 0
    # Each request drew its pool independently with its bucket's weights: per pool a sum of
    # Bernoulli draws, whose count stays within 4 standard deviations of its mean.
    per_bucket = Counter(SIZES[size][0] for _, size in sent)
    for pool in ("a", "b", "c"):
        weights = [WEIGHTS[bucket].get(pool, 0.0) for bucket in range(2)]
        mean = sum(per_bucket[b] * w for b, w in enumerate(weights))
        sigma = math.sqrt(sum(per_bucket[b] * w * (1 - w) for b, w in enumerate(weights)))
        routed = total(metrics, "melange_router_pool_requests_total", pool=pool)
        assert abs(routed - mean) <= 4 * sigma, (pool, routed, mean, sigma)
    # Every request counted once, in the cell of the size it was sent with.
    expected_cells = Counter(SIZES[size][1] for _, size in sent)
    counted = {(dict(labels)["input_le"], dict(labels)["output_le"]): value
               for (name, labels), value in metrics.items() if name == "melange_router_requests_by_size_total"}
    assert {cell: value for cell, value in counted.items() if value} == expected_cells
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def abort_after_two_chunks(client: OpenAI) -> None:
    stream = client.completions.create(model="m", prompt=SLOW_PROMPT, max_tokens=5, stream=True)
    chunks = iter(stream)
    next(chunks)
    next(chunks)
    stream.close()


async def test_streams_aborted_by_the_client_are_cancelled_upstream_not_pool_errors(pools_up, caplog):
    router_url, slow_requests = pools_up
    client = openai_client(router_url)
    aborted = 200
    await in_threads([partial(abort_after_two_chunks, client)] * aborted, workers=25)
    client.close()
    # each upstream stream would run 5 s and then report FINISHED: it sees its caller leave first
    outcomes = Counter([await slow_requests.get() for _ in range(2 * aborted)])
    assert set(outcomes) <= {(pool, outcome) for pool in ("a", "b") for outcome in (STARTED, CANCELLED)}
    assert sum(n for (_, outcome), n in outcomes.items() if outcome == CANCELLED) == aborted
    metrics = await scrape(router_url)
    while total(metrics, "melange_router_pool_in_flight") > 0:  # the last handlers finishing
        await asyncio.sleep(0.05)
        metrics = await scrape(router_url)

    assert total(metrics, "melange_router_pool_requests_total") == aborted
    assert total(metrics, "melange_router_pool_errors_total") == 0
    assert total(metrics, "melange_router_client_disconnects_total") == aborted
    assert total(metrics, "melange_router_requests_by_size_total") == 0  # none completed
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []  # no tracebacks


async def test_openai_client_with_several_sequences_is_counted_per_sequence(pools_up):
    """`n` and a list of prompts through the official client: every choice arrives whole, the
    finishing chunk of each carries the fingerprint, and each sequence is counted with its own
    size (the upstream: a token per id or word, sequence i makes 20 // (i + 1) tokens)."""
    router_url, _ = pools_up
    client = openai_client(router_url)

    def batched() -> None:
        for streamed in (False, True):
            answer = client.completions.create(model="m", prompt=[[5, 6, 7], [8]], n=2, max_tokens=20, stream=streamed)
            chunks = list(answer) if streamed else [answer]
            ends = {c.index: c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason}
            assert ends == {0: "length", 1: "stop", 2: "stop", 3: "stop"}
            if streamed:
                assert all(chunk.usage is None and chunk.choices for chunk in chunks)  # no usage chunk
        chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "w w w"}], n=2,
                                              max_tokens=20, stream=True)
        chunks = list(chat)
        assert {c.index for chunk in chunks for c in chunk.choices} == {0, 1}
        assert all(chunk.system_fingerprint == FINGERPRINT for chunk in chunks
                   if chunk.choices and chunk.choices[0].finish_reason)
        assert all(chunk.usage is None for chunk in chunks)

    await in_threads([batched], workers=1)
    client.close()
    metrics = await scrape(router_url)
    counted = {(dict(labels)["input_le"], dict(labels)["output_le"]): value
               for (name, labels), value in metrics.items() if name == "melange_router_requests_by_size_total"}
    # by hand: completions (3, 20), (3, 10), (1, 6), (1, 5) twice; chat (3, 20), (3, 10) once
    assert {cell: value for cell, value in counted.items() if value} == {
        ("5", "20"): 3, ("5", "10"): 3, ("1", "10"): 2, ("1", "5"): 2}
