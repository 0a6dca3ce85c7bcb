"""An OpenAI-compatible server that imitates one GPU running vLLM-style continuous batching, for
testing the profiler without a GPU. Not part of the product.

The engine prefers prefill (all waiting requests that fit, as vLLM's v0 scheduler), else runs one
decode step over every running sequence. Step times grow with the batch and the context; the KV
cache holds a fixed number of tokens, reserved in full when a request is admitted. The same engine
runs in virtual time (`simulate`) to give the server's true capacity for a request size.
"""
from __future__ import annotations

import asyncio
import json
import math
import random
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class ImitatedGpu:
    decode_base_s: float = 0.005
    decode_per_sequence_s: float = 0.0004
    decode_per_context_token_s: float = 1e-7
    prefill_base_s: float = 0.0025
    prefill_per_token_s: float = 1.5e-5
    kv_capacity_tokens: int = 12_000
    max_model_len: int = 2048
    max_num_seqs: int = 128


@dataclass
class Sequence:
    input_tokens: int
    output_tokens: int
    generated: int = 0
    tokens: asyncio.Queue | None = None
    times: list[float] = field(default_factory=list)  # when each token came out


class Engine:
    """The scheduler, independent of the clock: `step()` says what runs next and for how long;
    `finish_step()` emits the tokens."""

    def __init__(self, gpu: ImitatedGpu) -> None:
        self.gpu = gpu
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.reserved = 0

    def step(self) -> tuple[float, list[Sequence]] | None:
        gpu = self.gpu
        admitted = []
        while (self.waiting and len(self.running) + len(admitted) < gpu.max_num_seqs
               and self.reserved + self.waiting[0].input_tokens + self.waiting[0].output_tokens
               <= gpu.kv_capacity_tokens):
            sequence = self.waiting.popleft()
            self.reserved += sequence.input_tokens + sequence.output_tokens
            admitted.append(sequence)
        if admitted:
            tokens = sum(s.input_tokens for s in admitted)
            return gpu.prefill_base_s + gpu.prefill_per_token_s * tokens, admitted
        if self.running:
            context = sum(s.input_tokens + s.generated for s in self.running)
            return (gpu.decode_base_s + gpu.decode_per_sequence_s * len(self.running)
                    + gpu.decode_per_context_token_s * context, list(self.running))
        return None

    def finish_step(self, stepped: list[Sequence], now: float) -> None:
        for sequence in stepped:
            if sequence.generated == 0:
                self.running.append(sequence)
            sequence.generated += 1
            sequence.times.append(now)
            if sequence.tokens is not None:
                sequence.tokens.put_nowait(sequence.generated)
            if sequence.generated >= sequence.output_tokens:
                self.running.remove(sequence)
                self.reserved -= sequence.input_tokens + sequence.output_tokens


def simulate(gpu: ImitatedGpu, input_tokens: int, output_tokens: int, rate: float, requests: int,
             seed: int = 0) -> list[tuple[float, Sequence]]:
    """Poisson arrivals through the engine in virtual time: (arrival, finished sequence) pairs."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in range(requests):
        t += rng.expovariate(rate)
        arrivals.append((t, Sequence(input_tokens, output_tokens)))
    engine, now, pending = Engine(gpu), 0.0, deque(arrivals)
    while pending or engine.waiting or engine.running:
        while pending and pending[0][0] <= now:
            engine.waiting.append(pending.popleft()[1])
        planned = engine.step()
        if planned is None:
            now = pending[0][0]
            continue
        duration, stepped = planned
        now += duration
        engine.finish_step(stepped, now)
    return arrivals


def capacity(gpu: ImitatedGpu, input_tokens: int, output_tokens: int, tpot_s: float, requests: int = 2500) -> float:
    """The highest rate whose steady-state mean of latency / output tokens stays within `tpot_s`."""

    def mean_tpot(rate: float) -> float:
        values = []
        for seed in range(2):
            done = simulate(gpu, input_tokens, output_tokens, rate, requests, seed)
            values += [(s.times[-1] - arrival) / output_tokens for arrival, s in done[requests // 5:]]
        return sum(values) / len(values)

    low, high = 0.01, 1000.0
    for _ in range(22):  # 0.01..1000 req/s to within 0.001%
        middle = math.sqrt(low * high)
        low, high = (middle, high) if mean_tpot(middle) <= tpot_s else (low, middle)
    return low


def build_app(gpu: ImitatedGpu, model: str = "imitation") -> web.Application:
    engine = Engine(gpu)
    wake = asyncio.Event()

    async def run_engine() -> None:
        loop = asyncio.get_running_loop()
        clock = loop.time()
        while True:
            planned = engine.step()
            if planned is None:
                wake.clear()
                await wake.wait()
                clock = loop.time()
                continue
            duration, stepped = planned
            clock = max(clock, loop.time() - 0.002) + duration  # deadlines, so per-step overheads do not add up
            await asyncio.sleep(max(0.0, clock - loop.time()))
            engine.finish_step(stepped, clock)

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body.get("prompt")
        inputs = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        outputs = int(body.get("max_tokens") or 16)
        if inputs + outputs > gpu.max_model_len:
            return web.json_response({"error": {"message": "too long"}}, status=400)
        sequence = Sequence(inputs, outputs, tokens=asyncio.Queue())
        engine.waiting.append(sequence)
        wake.set()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while (await sequence.tokens.get()) < outputs:
            await response.write(b'data: {"choices": [{"index": 0, "text": " tok"}]}\n\n')
        await response.write(b'data: {"choices": [{"index": 0, "text": " tok"}]}\n\n')
        usage = {"prompt_tokens": inputs, "completion_tokens": outputs, "total_tokens": inputs + outputs}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": model, "max_model_len": gpu.max_model_len}]})

    async def lifecycle(app: web.Application):
        task = asyncio.create_task(run_engine())
        yield
        task.cancel()

    app = web.Application()
    app.router.add_post("/v1/completions", complete)
    app.router.add_get("/v1/models", models)
    app.cleanup_ctx.append(lifecycle)
    return app


def serve(port: int, gpu: ImitatedGpu) -> None:
    """Run the imitation on 127.0.0.1:`port` until killed (a subprocess target)."""
    web.run_app(build_app(gpu), host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    import sys
    serve(int(sys.argv[1]), ImitatedGpu())
