"""A vLLM-shaped OpenAI-compatible upstream for router tests and benchmarks: answers completions and
chat completions (streamed or not) at once, `/v1/models`, and `/tokenize` (one token per word)."""
from __future__ import annotations

import asyncio

from aiohttp import web

PROMPT_TOKENS, COMPLETION_TOKENS = 12, 30
SLOW_PROMPT = "slow"  # a request with this prompt takes 5 s, and reports its cancellation


def stream_chunks(count: int = 20) -> list[bytes]:
    """The SSE events of one streamed answer: `count` text chunks, a usage chunk, `[DONE]`."""
    return [f'data: {{"id": "x", "choices": [{{"text": "tok{k} é"}}]}}\n\n'.encode() for k in range(count)] + [
        b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 20}}\n\n',
        b"data: [DONE]\n\n"]


def upstream_app(name: str, disconnects: asyncio.Queue | None = None, chunks: int = 20,
                 tokenize: bool = True) -> web.Application:
    """The app of one upstream called `name` (answers carry `served_by: name`); cancelled slow
    requests put `name` on `disconnects`."""
    events = stream_chunks(chunks)

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("prompt") == SLOW_PROMPT:  # a long generation: report when the caller goes away
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:  # served with handler_cancellation: the caller went away
                if disconnects is not None:
                    disconnects.put_nowait(name)
                raise
            return web.json_response({"served_by": name})
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in events:
                await response.write(event)
            await response.write_eof()
            return response
        return web.json_response({"id": "cmpl-1", "served_by": name,  # shaped like vLLM's answer
                                  "choices": [{"index": 0, "text": "ok", "logprobs": None, "finish_reason": "length"}],
                                  "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                                            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}})

    async def list_models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    async def count_tokens(request: web.Request) -> web.Response:  # one token per word, unlike the estimate
        body = await request.json()
        text = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
        return web.json_response({"count": len(text.split()), "max_model_len": 4096, "tokens": []})

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
    web.run_app(upstream_app("upstream", chunks=chunks), host="127.0.0.1", port=port, access_log=None, print=None)
