"""A vLLM-shaped OpenAI-compatible upstream for router tests and benchmarks: answers completions and
chat completions (streamed or not) at once, `/v1/models`, and `/tokenize` (one token per word).

Its token counts are known from the request alone. Each prompt has one token per word (of the
prompt, or of the messages' contents), or one per id for token-id prompts. vLLM runs `n` sequences
per prompt (a completions `prompt` list is one prompt per item); the sequence with choice index i
(`prompt_index * n + k`, as vLLM numbers them) generates `max(1, base // (i + 1))` tokens, where
base is `max_tokens` (COMPLETION_TOKENS without one), and finishes with "length" when that is base,
"stop" otherwise. Each generated token is TOKEN_TEXT. So a test knows every sequence's size from
what it sent.

Requests are read with pydantic models holding vLLM's own field types (lax `bool | None` for
`stream` and `stream_options.include_usage`, `int` for `n`) and refused with a 400 where vLLM's
would be. Answers are shaped like vLLM 0.34.0's
(`vllm/entrypoints/openai/completion/serving.py`, `chat_completion/serving.py`, models in
`completion/protocol.py`, `chat_completion/protocol.py`): compact JSON events with the fields
pydantic writes under `exclude_unset`, in their declared order; `include_usage` defaults to false;
with it, a usage-only event (`"choices": []`, `usage`, `system_fingerprint`, and `metrics` for a
single sequence when given) before `data: [DONE]`; without it, `system_fingerprint` on each event
that finishes a choice instead.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

COMPLETION_TOKENS = 30
TOKEN_TEXT = "é "  # the text of every generated token
FINGERPRINT = "vllm-0.34.0-fake0000"  # the default `system_fingerprint` (vLLM's --fingerprint-mode full)
SLOW_PROMPT = "slow"  # a request with this prompt (or one that starts "slow ") takes SLOW_SECONDS, and reports its
# cancellation
SLOW_SECONDS = 5.0
STARTED, CANCELLED, FINISHED = "started", "cancelled", "finished"  # what a slow request reports


class StreamOptions(BaseModel):
    """vLLM's `StreamOptions` (vllm/entrypoints/generate/base/protocol.py)."""

    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class RequestFields(BaseModel):
    """The fields of vLLM's `CompletionRequest` / `ChatCompletionRequest` this upstream acts on, with
    vLLM's types (chat's `n` is `int | None`; completions' is `int`)."""

    model_config = ConfigDict(extra="allow")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = 1
    max_tokens: int | None = None
    return_token_ids: bool | None = False

    @model_validator(mode="before")
    @classmethod
    def stream_options_need_stream(cls, data: Any) -> Any:
        # vLLM's `validate_stream_options`, on the raw values
        if isinstance(data, dict) and data.get("stream_options") and not data.get("stream"):
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return data


def read_request(body: Any, chat: bool) -> RequestFields:
    """`body` read as vLLM reads it; ValueError where vLLM answers 400."""
    try:
        fields = RequestFields.model_validate(body)
    except ValidationError as error:
        raise ValueError(str(error)) from None
    if (fields.n is None and not chat) or (fields.n is not None and fields.n < 1):
        raise ValueError("n must be at least 1")
    return fields


def prompt_token_counts(body: Mapping[str, Any]) -> list[int]:
    """The tokens of each prompt of the request as this upstream counts them: one per word, or one
    per id; a chat request has one prompt."""
    if isinstance(body.get("messages"), list):
        return [sum(len(str(m.get("content", "")).split()) for m in body["messages"])]
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [len(prompt)]
    if isinstance(prompt, list) and prompt:
        return [len(p) if isinstance(p, list) else len(str(p).split()) for p in prompt]
    return [len(str(prompt).split())]


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """The request's prompt tokens (`usage.prompt_tokens`): each prompt once, whatever `n`."""
    return sum(prompt_token_counts(body))


def completion_tokens(body: Mapping[str, Any]) -> int:
    """The tokens of the first sequence: `max_tokens` when given, COMPLETION_TOKENS otherwise."""
    value = body.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else COMPLETION_TOKENS


def sequence_tokens(body: Mapping[str, Any], index: int) -> int:
    """The tokens the sequence with choice `index` generates."""
    return max(1, completion_tokens(body) // (index + 1))


def sequence_count(body: Mapping[str, Any]) -> int:
    """How many sequences vLLM runs for the request: n per prompt."""
    fields = read_request(body, "messages" in body)
    return (fields.n or 1) * len(prompt_token_counts(body))


def usage_asked(body: Mapping[str, Any]) -> bool:
    """Whether a streamed request asked for usage, as vLLM 0.34.0 reads `stream_options`."""
    options = read_request(body, "messages" in body).stream_options
    return options is not None and bool(options.include_usage)


def _event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _spread(tokens: int, parts: int) -> list[int]:
    """`tokens` over `parts` events, as evenly as whole tokens go."""
    return [(k + 1) * tokens // parts - k * tokens // parts for k in range(parts)]


def stream_events(body: Mapping[str, Any], count: int = 20, fingerprint: str | None = FINGERPRINT,
                  metrics: Mapping[str, Any] | None = None) -> list[bytes]:
    """The SSE events of one streamed answer to `body`: per sequence i, `max(1, count - i)` events
    (on chat, a role event first), the sequences' events interleaved; the usage-only event when
    asked for; `[DONE]`."""
    chat = "messages" in body
    fields = read_request(body, chat)
    with_usage = usage_asked(body)
    n, prompts = fields.n or 1, prompt_token_counts(body)
    head = {"id": "chatcmpl-1" if chat else "cmpl-1", "object": "chat.completion.chunk" if chat
            else "text_completion", "created": 1700000000, "model": "m"}
    per_sequence = []
    for index in range(n * len(prompts)):
        tokens = sequence_tokens(body, index)
        reason = "length" if tokens == completion_tokens(body) else "stop"
        pieces = _spread(tokens, max(1, count - index - (1 if chat else 0)))
        events = []
        if chat:
            events.append({**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}],
                           "prompt_token_ids": None, "prompt_text": None})
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            token_ids = list(range(piece)) if fields.return_token_ids else None
            if chat:
                choice: dict[str, Any] = {"index": index, "delta": {"content": TOKEN_TEXT * piece}, "logprobs": None,
                                          "finish_reason": reason if last else None}
                if last:
                    choice["stop_reason"] = None
                choice["token_ids"] = token_ids
                if last:
                    choice["weight_versions"] = None
            else:
                choice = {"index": index, "text": TOKEN_TEXT * piece, "logprobs": None,
                          "finish_reason": reason if last else None, "stop_reason": None,
                          "prompt_token_ids": None, "token_ids": token_ids, "weight_versions": None}
            event: dict[str, Any] = {**head, "choices": [choice]}
            if last and not with_usage and fingerprint is not None:
                event["system_fingerprint"] = fingerprint
            event["kv_transfer_params"] = None
            events.append(event)
        per_sequence.append(events)
    interleaved = [_event(events[r]) for r in range(max(map(len, per_sequence)))
                   for events in per_sequence if r < len(events)]
    if with_usage:
        prompt = sum(prompts)
        completion = sum(sequence_tokens(body, i) for i in range(n * len(prompts)))
        usage_event: dict[str, Any] = {**head, "choices": [], "usage": {
            "prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}}
        if fingerprint is not None:
            usage_event["system_fingerprint"] = fingerprint
        if metrics is not None and n * len(prompts) == 1:
            usage_event["metrics"] = dict(metrics)
        interleaved.append(_event(usage_event))
    return interleaved + [b"data: [DONE]\n\n"]


def whole_answer(body: Mapping[str, Any], name: str, fingerprint: str | None = FINGERPRINT) -> dict[str, Any]:
    """A non-streamed answer to `body`, shaped like vLLM's, carrying `served_by: name`."""
    chat = "messages" in body
    fields = read_request(body, chat)
    sequences = (fields.n or 1) * len(prompt_token_counts(body))
    choices = []
    for index in range(sequences):
        tokens = sequence_tokens(body, index)
        reason = "length" if tokens == completion_tokens(body) else "stop"
        token_ids = list(range(tokens)) if fields.return_token_ids else None
        if chat:
            choices.append({"index": index, "message": {"role": "assistant", "content": TOKEN_TEXT * tokens},
                            "logprobs": None, "finish_reason": reason, "stop_reason": None, "token_ids": token_ids})
        else:
            choices.append({"index": index, "text": TOKEN_TEXT * tokens, "logprobs": None, "finish_reason": reason,
                            "stop_reason": None, "token_ids": token_ids})
    prompt = prompt_tokens(body)
    completion = sum(sequence_tokens(body, i) for i in range(sequences))
    usage = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}
    return {"id": f"chatcmpl-{name}" if chat else f"cmpl-{name}", "object": "chat.completion" if chat
            else "text_completion", "created": 1700000000, "model": "m", "served_by": name, "choices": choices,
            "system_fingerprint": fingerprint, "usage": usage}


def upstream_app(name: str, slow_requests: asyncio.Queue | None = None, chunks: int = 20,
                 tokenize: bool = True, tail_pause_s: float = 0.0, fingerprint: str | None = FINGERPRINT,
                 metrics: Mapping[str, Any] | None = None, received: list[bytes] | None = None,
                 slow_seconds: float = SLOW_SECONDS) -> web.Application:
    """The app of one upstream called `name` (whole answers carry `served_by: name`); each slow
    request puts `(name, STARTED)` on `slow_requests` when it begins, then `(name, CANCELLED)` when
    its caller goes away or `(name, FINISHED)` when it runs to its end. A stream's body ends
    `tail_pause_s` after its `data: [DONE]` (a loaded server's last write can lag). `fingerprint`
    is the `system_fingerprint` (None: vLLM's --fingerprint-mode none), `metrics` the per-request
    metrics of the usage-only event (None: vLLM's default, none); `received` collects every
    request body as it arrived; a slow request takes `slow_seconds`. Serve it with handler_cancellation
    on, as the router is, so that a caller leaving cancels the handler."""

    def report(outcome: str) -> None:
        if slow_requests is not None:
            slow_requests.put_nowait((name, outcome))

    async def complete(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if received is not None:
            received.append(raw)
        body = json.loads(raw)
        try:
            fields = read_request(body, request.path.endswith("/chat/completions"))
        except ValueError as error:
            return web.json_response({"error": {"message": str(error), "type": "BadRequestError", "param": None,
                                                "code": 400}}, status=400)
        prompt = body.get("prompt")
        slow = prompt == SLOW_PROMPT or (isinstance(prompt, str) and prompt.startswith(SLOW_PROMPT + " "))
        if slow:
            report(STARTED)
        try:
            if fields.stream:
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                if slow:  # a long generation: text events as fast as the caller takes them, for slow_seconds
                    event = stream_events(body, 2)[0]
                    deadline = time.monotonic() + slow_seconds
                    while time.monotonic() < deadline:
                        await response.write(event)
                        await asyncio.sleep(0)
                for event in stream_events(body, chunks, fingerprint, metrics):
                    await response.write(event)
                if tail_pause_s:
                    await asyncio.sleep(tail_pause_s)
                await response.write_eof()
            else:
                if slow:
                    await asyncio.sleep(slow_seconds)
                response = web.json_response(whole_answer(body, name, fingerprint))
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
