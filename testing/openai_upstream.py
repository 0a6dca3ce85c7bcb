"""A vLLM-shaped OpenAI-compatible upstream for router tests and benchmarks: answers completions and
chat completions (streamed or not) at once, `/v1/models`, and `/tokenize` (one token per word).

Its token counts are known from the request alone: the prompt has one token per word (of the prompt,
or of the messages' contents) and the answer has `max_tokens` tokens (COMPLETION_TOKENS without
one), so a test knows each request's size from what it sent. Streams are shaped like vLLM's
(`vllm/entrypoints/openai/serving_completion.py`, `serving_chat.py`): compact JSON events, a
usage-only event (`"choices": []`) before `data: [DONE]` only when `stream_options.include_usage`
asks for it (vLLM treats `stream_options: {}` as asking), `"usage": null` on every completion
event, and on the chat events only when usage was asked for (the OpenAI API's documented shape).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

COMPLETION_TOKENS = 30
SLOW_PROMPT = "slow"  # a request with this prompt takes SLOW_SECONDS, and reports its cancellation
SLOW_SECONDS = 5.0
STARTED, CANCELLED, FINISHED = "started", "cancelled", "finished"  # what a slow request reports


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """The request's prompt tokens as this upstream counts them: one per word."""
    if isinstance(body.get("messages"), list):
        return sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    return len(str(body.get("prompt", "")).split())


def completion_tokens(body: Mapping[str, Any]) -> int:
    """The tokens this upstream generates: `max_tokens` when given, COMPLETION_TOKENS otherwise."""
    value = body.get("max_tokens")
    return value if isinstance(value, int) and value > 0 else COMPLETION_TOKENS


def usage_asked(body: Mapping[str, Any]) -> bool:
    """Whether a streamed request asked for usage, as vLLM reads `stream_options` (include_usage
    defaults to true once the options are given)."""
    options = body.get("stream_options")
    return isinstance(options, Mapping) and bool(options.get("include_usage", True))


def _event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def stream_events(body: Mapping[str, Any], count: int = 20) -> list[bytes]:
    """The SSE events of one streamed answer to `body`: `count` text events, the usage event when
    asked for, `[DONE]`."""
    chat = "messages" in body
    with_usage = usage_asked(body)
    head = {"id": "chatcmpl-1" if chat else "cmpl-1", "object": "chat.completion.chunk" if chat
            else "text_completion", "created": 1700000000, "model": "m"}
    events = []
    for k in range(count):
        finish = "length" if k == count - 1 else None
        if chat:
            delta = {"role": "assistant", "content": ""} if k == 0 else {"content": f"tok{k} é"}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": f"tok{k} é", "logprobs": None, "finish_reason": finish,
                      "stop_reason": None}
        event: dict[str, Any] = {**head, "choices": [choice]}
        if with_usage or not chat:
            event["usage"] = None
        events.append(_event(event))
    if with_usage:
        prompt, completion = prompt_tokens(body), completion_tokens(body)
        events.append(_event({**head, "choices": [], "usage": {"prompt_tokens": prompt,
                                                              "total_tokens": prompt + completion,
                                                              "completion_tokens": completion}}))
    return events + [b"data: [DONE]\n\n"]


def whole_answer(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A non-streamed answer to `body`, shaped like vLLM's, carrying `served_by: name`."""
    prompt, completion = prompt_tokens(body), completion_tokens(body)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if "messages" in body:
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "logprobs": None,
                  "finish_reason": "length"}
        return {"id": f"chatcmpl-{name}", "object": "chat.completion", "created": 1700000000, "model": "m",
                "served_by": name, "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": "ok", "logprobs": None, "finish_reason": "length"}
    return {"id": f"cmpl-{name}", "object": "text_completion", "created": 1700000000, "model": "m",
            "served_by": name, "choices": [choice], "usage": usage}


def upstream_app(name: str, slow_requests: asyncio.Queue | None = None, chunks: int = 20,
                 tokenize: bool = True, tail_pause_s: float = 0.0) -> web.Application:
    """The app of one upstream called `name` (whole answers carry `served_by: name`); each slow
    request puts `(name, STARTED)` on `slow_requests` when it begins, then `(name, CANCELLED)` when
    its caller goes away or `(name, FINISHED)` when it runs to its end. A stream's body ends
    `tail_pause_s` after its `data: [DONE]` (a loaded server's last write can lag). Serve it with handler_cancellation
    on, as the router is, so that a caller leaving cancels the handler."""

    def report(outcome: str) -> None:
        if slow_requests is not None:
            slow_requests.put_nowait((name, outcome))

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        slow = body.get("prompt") == SLOW_PROMPT
        if slow:
            report(STARTED)
        try:
            if body.get("stream"):
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                if slow:  # a long generation: text events as fast as the caller takes them, for 5 s
                    event = stream_events(body, 2)[0]
                    deadline = time.monotonic() + SLOW_SECONDS
                    while time.monotonic() < deadline:
                        await response.write(event)
                        await asyncio.sleep(0)
                for event in stream_events(body, chunks):
                    await response.write(event)
                if tail_pause_s:
                    await asyncio.sleep(tail_pause_s)
                await response.write_eof()
            else:
                if slow:
                    await asyncio.sleep(SLOW_SECONDS)
                response = web.json_response(whole_answer(body, name))
        except (asyncio.CancelledError, ConnectionError):  # the caller went away
            if slow:
                report(CANCELLED)
            raise
        if slow:
            report(FINISHED)
        return response

    async def list_models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    async def count_tokens(request: web.Request) -> web.Response:  # one token per word, unlike the estimate
        body = await request.json()
        return web.json_response({"count": prompt_tokens(body), "max_model_len": 4096, "tokens": []})

    app = web.Application()
    if tokenize:
        app.router.add_post("/tokenize", count_tokens)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_get("/v1/models", list_models)
    return app


async def serve_app(app: web.Application, **runner_options) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free loopback port in this event loop; the runner (to clean up) and its URL."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def run_upstream(port: int, chunks: int = 16) -> None:
    """Serve one upstream on `port` until killed (for a separate process)."""
    web.run_app(upstream_app("upstream", chunks=chunks), host="127.0.0.1", port=port, access_log=None, print=None,
                handler_cancellation=True)
