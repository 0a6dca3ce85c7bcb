"""A request's sizes from the upstream's `usage`, counted the way vLLM counts requests, and usage
asked for on every stream yet hidden from a client that did not ask, so that the client receives
what vLLM would have sent it.

How vLLM counts (read in vLLM 0.34.0's source):

- A request with `n > 1` is fanned out into n child requests (`vllm/v1/engine/async_llm.py`,
  `add_request`: `ParentRequest(request)`, one `get_child_info(idx)` per index), and a completions
  request with several prompts (a list of strings, or a list of token-id lists) is one engine
  request per prompt (`vllm/entrypoints/openai/completion/serving.py`, `create_completion`: one
  `engine_client.generate` per `engine_inputs` item), each of those fanned out by n again.
- Each child request finishes on its own: `OutputProcessor._update_stats_from_finished`
  (`vllm/v1/engine/output_processor.py`) calls `IterationStats.update_from_finished_request` with
  the child's `prompt_len` and its own `num_generation_tokens` (`vllm/v1/metrics/stats.py`), and
  `PrometheusStatLogger.record` (`vllm/v1/metrics/loggers.py`) adds 1 to
  `vllm:request_success_total` and observes `vllm:request_prompt_tokens` and
  `vllm:request_generation_tokens` once per finished request. So a request is n x prompts sequences
  there, each with its prompt's length and its own output length.
- The answer's `usage` is the aggregate: `completion_tokens` sums every choice's tokens and
  `prompt_tokens` sums each prompt once, not once per choice (`completion/serving.py`:
  `sum(num_prompt_tokens)`, `sum(previous_num_tokens)`, and `request_output_to_completion_response`;
  `chat_completion/serving.py`: the single prompt's `num_prompt_tokens` and
  `sum(p.num_output_tokens for p in processors)`). Choice `index` is `prompt_idx * n + output.index`
  on completions (streamed and whole) and the output index on chat.

So the router counts one joint-counter sample per sequence (`sequence_sizes`). Exact: the number
of sequences (one per choice index in the answer), each sequence's input tokens when there is one
prompt or the prompts are token ids, a sequence's output tokens when it is the only one or when its
choice carries `token_ids` (`return_token_ids`). Approximate: with several sequences and no
`token_ids`, the output tokens are the usage's total split in proportion to each choice's
generated characters (an echoed prompt counts as generated text), and with several text prompts
the usage's prompt total is split in proportion to the router's estimate of each prompt. Either
split keeps the sums equal to the usage's, so vLLM's token totals and the router's agree.

Request fields read as vLLM's pydantic models read them (lax mode): `stream` and
`stream_options.include_usage` are `bool | None` (1, "true", "yes", "on"... are true), `n` an int
("2" is 2). `stream_options` defaults `include_usage` to false (`StreamOptions` in
`vllm/entrypoints/generate/base/protocol.py`; vLLM before PR #36379 defaulted it to true), and a
value vLLM refuses leaves the body untouched, for vLLM's 400.

What vLLM streams (`completion/serving.py` `completion_stream_generator`, `chat_completion/
serving.py` `chat_completion_stream_generator_raw`): with include_usage, one more event before
`data: [DONE]` whose `choices` is empty and which holds `usage`, `system_fingerprint` and, for a
single sequence with per-request metrics on, `metrics`; without include_usage no such event, no
metrics, and `system_fingerprint` instead on every event that finishes a choice (`finish_reason`
set). Older vLLM also wrote `"usage": null` on chat events when usage was asked for.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from melange.operator.router.request_size import text_token_weight

_USAGE = b'"usage"'
_USAGE_VALUE = re.compile(rb'"usage"\s*:\s*(?!null\b)')  # a usage that is not null
# A `"usage": null` member with its separating comma. Inside a JSON string every quote is escaped,
# so an unescaped `,"usage"` or `{"usage"` only occurs between members.
_NULL_USAGE = re.compile(rb'\s*,\s*"usage"\s*:\s*null(?=\s*[,}])|(?<=\{)\s*"usage"\s*:\s*null\s*(?:,\s*|(?=\}))')
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')  # a choice that ends in this event
_FINISHING = b'"finish_reason":"'
_KV_TRANSFER = re.compile(rb',\s*"kv_transfer_params"\s*:')
_DONE = b"data: [DONE]"

_TRUE_WORDS = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_WORDS = frozenset({"0", "off", "f", "false", "n", "no"})
_INT_TEXT = re.compile(r"\s*[+-]?[0-9](?:_?[0-9])*(?:\.0+)?\s*", re.ASCII)


def lax_bool(value: Any) -> bool | None:
    """`value` as pydantic's lax mode reads a `bool` field (vLLM's request models): True, 1, 1.0
    and "1"/"on"/"t"/"true"/"y"/"yes" in any case are true, their opposites false; None for
    anything pydantic refuses."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return True if value == 1 else False if value == 0 else None
    if isinstance(value, str):
        word = value.lower()
        return True if word in _TRUE_WORDS else False if word in _FALSE_WORDS else None
    return None


def optional_flag(value: Any) -> bool | None:
    """A `bool | None` field of vLLM's request models as it acts: null is off; None when vLLM
    refuses the value."""
    return False if value is None else lax_bool(value)


def lax_int(value: Any) -> int | None:
    """`value` as pydantic's lax mode reads an `int` field: ints, bools, integral floats, and
    decimal strings ("2", " 2 ", "2.0", "1_0"); None for anything pydantic refuses."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _INT_TEXT.fullmatch(value):
        return int(value.strip().split(".")[0])
    return None


def usage_request(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The body to send upstream instead of `body` so that its stream ends with usage: for a
    streamed request whose client did not ask for usage. It asks for no per-event usage either
    (the client gets none, so `continuous_usage_stats` would only add bytes to strip). None when
    `body` goes as it is: not streamed, usage asked for, or a `stream_options` vLLM refuses (the
    client gets vLLM's 400 for its own request)."""
    if optional_flag(body.get("stream")) is not True:
        return None
    options = body.get("stream_options")
    if options is None:
        options = {}
    elif not isinstance(options, Mapping):
        return None
    include_usage = optional_flag(options.get("include_usage"))
    continuous = optional_flag(options.get("continuous_usage_stats"))
    if include_usage is not False or continuous is None:
        return None
    asked = {**options, "include_usage": True}
    if continuous:
        asked["continuous_usage_stats"] = False
    return {**body, "stream_options": asked}


@dataclass(frozen=True)
class RequestShape:
    """How many sequences vLLM runs for a request: `n` per prompt, and one relative size per
    prompt (token counts for token-id prompts, the router's estimate for text)."""

    n: int = 1
    prompt_weights: tuple[float, ...] = (1.0,)

    @property
    def sequences(self) -> int:
        return self.n * len(self.prompt_weights)


def request_shape(body: Mapping[str, Any], chat: bool) -> RequestShape:
    """The request's shape as vLLM reads it: `n` (null on chat is 1) and, on completions, the
    prompts of a `prompt` list (strings, or token-id lists); one prompt for anything else. A value
    vLLM refuses (it answers 400, uncounted) reads as one sequence."""
    raw_n = body.get("n", 1)
    n = 1 if raw_n is None and chat else lax_int(raw_n)
    n = n if n is not None and n >= 1 else 1
    prompt = None if chat else body.get("prompt")
    weights: tuple[float, ...] = (1.0,)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            weights = tuple(text_token_weight(p) for p in prompt)
        elif all(isinstance(p, list) for p in prompt):
            weights = tuple(float(len(p)) for p in prompt)
    return RequestShape(n, weights)


def split_total(total: int, weights: Sequence[float]) -> list[int]:
    """`total` shared in proportion to `weights` by largest remainder (ties to the lower index),
    so the parts sum to `total`; evenly when the weights sum to nothing."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights, weight_sum = [1.0] * len(weights), float(len(weights))
    exact = [total * w / weight_sum for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in by_remainder[:max(0, total - sum(parts))]:
        parts[i] += 1
    return parts


@dataclass
class SequenceOutput:
    """What the answer showed of one choice: its generated characters and, when every part of it
    that had text carried `token_ids`, its exact token count."""

    chars: int = 0
    token_ids: int = 0
    token_ids_seen: bool = False
    token_ids_missing: bool = False

    @property
    def exact_tokens(self) -> int | None:
        return self.token_ids if self.token_ids_seen and not self.token_ids_missing else None


def _text_length(part: Any) -> int:
    """Generated characters of a chat `delta`/`message`: content, reasoning, tool-call arguments."""
    if not isinstance(part, Mapping):
        return 0
    length = 0
    for key in ("content", "reasoning", "reasoning_content"):
        value = part.get(key)
        if isinstance(value, str):
            length += len(value)
    calls = part.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            length += sum(len(v) for k in ("name", "arguments") if isinstance(v := function.get(k), str))
    return length


def tally_choices(outputs: dict[int, SequenceOutput], choices: Any) -> None:
    """Add the `choices` of one event (or of a whole answer) to `outputs`, by choice index."""
    for choice in choices if isinstance(choices, list) else ():
        index = choice.get("index") if isinstance(choice, Mapping) else None
        if not isinstance(index, int) or isinstance(index, bool):
            continue
        output = outputs.setdefault(index, SequenceOutput())
        text = choice.get("text")
        chars = len(text) if isinstance(text, str) else _text_length(choice.get("delta", choice.get("message")))
        output.chars += chars
        token_ids = choice.get("token_ids")
        if isinstance(token_ids, list):
            output.token_ids += len(token_ids)
            output.token_ids_seen = True
        elif chars:
            output.token_ids_missing = True


def _int_field(usage: Mapping[str, Any], key: str) -> int | None:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def size_from_usage(usage: Mapping[str, Any], input_tokens: int) -> tuple[int, int] | None:
    """(input, output) tokens of a single-sequence request from its `usage`; `input_tokens` (the
    router's own count) stands in for a missing `prompt_tokens`. None without `completion_tokens`."""
    output = _int_field(usage, "completion_tokens")
    if output is None:
        return None
    prompt = _int_field(usage, "prompt_tokens")
    return (prompt if prompt is not None else input_tokens), output


def sequence_sizes(usage: Mapping[str, Any] | None, shape: RequestShape, outputs: Mapping[int, SequenceOutput],
                   input_tokens: int) -> list[tuple[int, int]]:
    """(input, output) tokens of each sequence vLLM ran for the request, one per choice index in
    `outputs` (the request's shape where the answer showed none); nothing without a usage that
    has `completion_tokens`. See the module's docstring for what is exact and what is split."""
    if usage is None:
        return []
    if (len(outputs) or shape.sequences) == 1:
        size = size_from_usage(usage, input_tokens)
        return [size] if size is not None else []
    output_total = _int_field(usage, "completion_tokens")
    if output_total is None:
        return []
    indexes = sorted(outputs) or list(range(shape.sequences))
    prompt_total = _int_field(usage, "prompt_tokens")
    prompts = len(shape.prompt_weights)
    per_prompt = (split_total(prompt_total, shape.prompt_weights) if prompt_total is not None
                  else [input_tokens] * prompts)
    exact = {i: tokens for i in indexes if i in outputs and (tokens := outputs[i].exact_tokens) is not None}
    if sum(exact.values()) > output_total:
        exact = {}
    rest = [i for i in indexes if i not in exact]
    shares = split_total(output_total - sum(exact.values()),
                         [float(outputs[i].chars) if i in outputs else 0.0 for i in rest])
    output_of = {**exact, **dict(zip(rest, shares))}
    return [(per_prompt[min(i // shape.n, prompts - 1)], output_of[i]) for i in indexes]


def sizes_of_answer(payload: bytes, shape: RequestShape, input_tokens: int) -> list[tuple[int, int]]:
    """The sequences' sizes of a whole (non-streamed) JSON answer; none when it has no usage."""
    try:
        answer = json.loads(payload)
    except ValueError:
        return []
    usage = answer.get("usage") if isinstance(answer, Mapping) else None
    if not isinstance(usage, Mapping):
        return []
    outputs: dict[int, SequenceOutput] = {}
    tally_choices(outputs, answer.get("choices"))
    return sequence_sizes(usage, shape, outputs, input_tokens)


def finish_position(block: bytes) -> int:
    """Where the first choice that finishes in `block` names its `finish_reason`; -1 for none.
    Compact JSON (vLLM's) is searched with `find` alone, as a regex over every event would cost
    more than the rest of the relay; spaced JSON falls back to the regex."""
    at = block.find(_FINISHING)
    if at >= 0 or b'"finish_reason":null' in block:
        return at
    if b'"finish_reason"' not in block:
        return -1
    match = _FINISHED.search(block)
    return match.start() if match else -1


def with_fingerprint(event: bytes, fingerprint: str) -> bytes:
    """`event` (one `data: {...}` line) with `system_fingerprint` where vLLM writes it on an event
    that finishes a choice: before `kv_transfer_params`, the one field that follows it there
    (pydantic writes fields in their declared order), or last. An event that has one is kept."""
    if b'"system_fingerprint"' in event:
        return event
    member = b',"system_fingerprint":' + json.dumps(fingerprint, ensure_ascii=False).encode()
    follower = _KV_TRANSFER.search(event)
    at = follower.start() if follower else event.rfind(b"}")
    return event[:at] + member + event[at:] if at > 0 else event


def _events(block: bytes) -> list[tuple[bytes, bytes]]:
    """The events of `block` with the separator after each (a blank line: `\\n\\n`, with or without
    `\\r`; empty after a trailing partial event). Found with `find`, as a regex starting with an
    optional byte scans slowly."""
    events, start, at = [], 0, block.find(b"\n")
    while at >= 0:
        end = at + 2 if block[at + 1:at + 2] == b"\r" else at + 1
        if block[end:end + 1] == b"\n":
            begin = at - 1 if at > start and block[at - 1] == 13 else at  # 13: "\r"
            events.append((block[start:begin], block[begin:end + 1]))
            start = end + 1
            at = block.find(b"\n", start)
        else:
            at = block.find(b"\n", at + 1)
    if start < len(block):
        events.append((block[start:], b""))
    return events


def _event_json(event: bytes) -> Any:
    data = b"".join(line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:"))
    try:
        return json.loads(data)
    except ValueError:
        return None


class UsageStream:
    """Relays an upstream's server-sent events whole, reading the request's usage on the way.

    `feed` takes the upstream's bytes as they come and returns the complete events among them to
    pass on (an event split across reads waits for its end); `finish` returns what is left;
    `delivered` notes what reached the client. With `per_choice`, every event's choices are tallied
    (`outputs`) so that `sizes` can split the usage between several sequences.

    With `hide_usage`, the client receives what vLLM sends without include_usage: the usage-only
    event is dropped, on chat streams the `"usage": null` members are removed, and each event
    that finishes a choice is held back until the usage-only event comes, then passed on with
    that event's `system_fingerprint` (vLLM writes it there instead). vLLM sends the usage-only
    event right after the last sequence's finishing event, so a single sequence's end is not
    delayed; with several sequences, one that finishes early has its finishing event passed on
    when the last one finishes (each choice's own events keep their order). Every other byte
    passes unchanged.
    """

    def __init__(self, hide_usage: bool, chat: bool, per_choice: bool = False) -> None:
        self.hide_usage = hide_usage
        self.chat = chat
        self.usage: Mapping[str, Any] | None = None  # the latest usage seen
        self.usage_final = False  # the latest usage came in the usage-only event: it is the total
        self.done = False  # `data: [DONE]` reached the client: it has the whole answer
        self.outputs: dict[int, SequenceOutput] | None = {} if per_choice else None
        self._held: list[tuple[bytes, bytes]] = []  # finishing events (and separators) held back
        self._fingerprint: str | None = None  # the usage-only event's, for the held events
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The whole events up to the last event boundary in what has arrived so far."""
        data = self._pending + chunk if self._pending else chunk
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        if not end:
            self._pending = data
            return b""
        self._pending = data[end:]
        return self._block(data[:end])

    def finish(self) -> bytes:
        """The bytes after the last event boundary, at the end of the stream, and any event still
        held back (a stream that ended without its usage)."""
        rest, self._pending = self._pending, b""
        return (self._block(rest) if rest else b"") + self._release(None)

    def delivered(self, events: bytes) -> None:
        """Note that `events` (from `feed` or `finish`) reached the client."""
        if not self.done and _DONE in events:
            self.done = True

    def sizes(self, shape: RequestShape, input_tokens: int) -> list[tuple[int, int]]:
        """The sequences' sizes by the latest usage seen (none without one)."""
        return sequence_sizes(self.usage, shape, self.outputs or {}, input_tokens)

    def _block(self, block: bytes) -> bytes:
        """What to pass on for whole events. Events are looked at one by one from the first that
        carries a usage, finishes a choice or ends the stream with events held (those come last in
        a stream, and a read often holds many events), or all of them when choices are tallied."""
        begin = 0
        if self.outputs is None:
            if self.hide_usage and self.chat:  # `"usage": null` members to remove, too
                first = block.find(_USAGE)
            else:
                usage = _USAGE_VALUE.search(block)
                first = usage.start() if usage else -1
            if self.hide_usage:
                finished = finish_position(block)
                if finished >= 0 and (first < 0 or finished < first):
                    first = finished
                done = block.find(_DONE) if self._held else -1
                if done >= 0 and (first < 0 or done < first):
                    first = done
            if first < 0:
                return block
            lf, crlf = block.rfind(b"\n\n", 0, first), block.rfind(b"\n\r\n", 0, first)
            begin = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)
        return block[:begin] + b"".join(self._event(event, separator) for event, separator in _events(block[begin:]))

    def _event(self, event: bytes, separator: bytes) -> bytes:
        if self.outputs is not None and b'"choices"' in event:
            payload = _event_json(event)
            if isinstance(payload, Mapping):
                tally_choices(self.outputs, payload.get("choices"))
        if _USAGE_VALUE.search(event):
            passed_on = self._read_event(event)
            if passed_on is None:  # the usage-only event, hidden: the held events go in its place
                return self._release(self._fingerprint)
            event = passed_on
        if not self.hide_usage:
            return event + separator
        if self.chat and _USAGE in event:
            event = _NULL_USAGE.sub(b"", event)
        if finish_position(event) >= 0:
            self._held.append((event, separator))
            return b""
        if self._held and _DONE in event:
            return self._release(None) + event + separator
        return event + separator

    def _read_event(self, event: bytes) -> bytes | None:
        """One event that carries a usage: note it; what to pass on in its place (None: nothing)."""
        payload = _event_json(event)
        usage = payload.get("usage") if isinstance(payload, Mapping) else None
        if not isinstance(usage, Mapping):
            return event
        self.usage = usage
        self.usage_final = not payload.get("choices")
        if not self.hide_usage:
            return event
        if self.usage_final:
            fingerprint = payload.get("system_fingerprint")
            self._fingerprint = fingerprint if isinstance(fingerprint, str) else None
            return None
        return b"data: " + json.dumps({k: v for k, v in payload.items() if k != "usage"},
                                      separators=(",", ":"), ensure_ascii=False).encode()

    def _release(self, fingerprint: str | None) -> bytes:
        """The held events, with `fingerprint` added where given."""
        held, self._held = self._held, []
        return b"".join((with_fingerprint(event, fingerprint) if fingerprint else event) + separator
                        for event, separator in held)
