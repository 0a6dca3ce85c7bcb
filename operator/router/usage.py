"""A request's size from the upstream's `usage`: the router asks every streamed request for usage
(`stream_options.include_usage`) so that each one is counted, and hides it again from a client that
did not ask, so the client sees what vLLM would have sent it.

What vLLM sends (vllm/entrypoints/openai/serving_chat.py, serving_completion.py): with include_usage,
one more event before `data: [DONE]` whose `choices` is empty and whose `usage` holds the counts;
without it, no such event. Completion events carry `"usage": null` either way (serialized with
exclude_unset=False); chat events carry it only when usage was asked for (older vLLM set it to None
explicitly, and the OpenAI API documents it so), never without.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_USAGE = b'"usage"'
_USAGE_VALUE = re.compile(rb'"usage"\s*:\s*(?!null\b)')  # a usage that is not null
# A `"usage": null` member with its separating comma. Inside a JSON string every quote is escaped,
# so an unescaped `,"usage"` or `{"usage"` only occurs between members.
_NULL_USAGE = re.compile(rb'\s*,\s*"usage"\s*:\s*null(?=\s*[,}])|(?<=\{)\s*"usage"\s*:\s*null\s*(?:,\s*|(?=\}))')
_EVENT_SEPARATOR = re.compile(rb"\r?\n\r?\n")
_DONE = b"data: [DONE]"


def client_wants_usage(body: Mapping[str, Any]) -> bool:
    """Whether a streamed request asked for usage, read as vLLM reads it: `stream_options` given
    (include_usage defaults to true there) and include_usage not false."""
    options = body.get("stream_options")
    return isinstance(options, Mapping) and bool(options.get("include_usage", True))


def with_usage_requested(body: Mapping[str, Any]) -> dict[str, Any]:
    """`body` asking for usage at the end of the stream, and for no per-event usage (a client that
    did not ask for usage gets none, so `continuous_usage_stats` would only add bytes to strip)."""
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, Mapping) else {}
    options["include_usage"] = True
    if options.get("continuous_usage_stats"):
        options["continuous_usage_stats"] = False
    return {**body, "stream_options": options}


def usage_of_answer(payload: bytes) -> Mapping[str, Any] | None:
    """The `usage` of a whole (non-streamed) JSON answer, None when it has none."""
    try:
        usage = json.loads(payload).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, Mapping) else None


def size_from_usage(usage: Mapping[str, Any], input_tokens: int) -> tuple[int, int] | None:
    """(input, output) tokens from a `usage`; `input_tokens` (the router's own count) stands in for
    a missing `prompt_tokens`. None without `completion_tokens`."""
    output = usage.get("completion_tokens")
    if not isinstance(output, int) or isinstance(output, bool):
        return None
    prompt = usage.get("prompt_tokens")
    return (prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else input_tokens), output


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
    `delivered` notes what reached the client. With
    `hide_usage`, the usage-only event is dropped and, on chat streams, the `"usage": null` members
    the client would not have got are removed; every other byte passes unchanged.
    """

    def __init__(self, hide_usage: bool, chat: bool) -> None:
        self.hide_usage = hide_usage
        self.chat = chat
        self.usage: Mapping[str, Any] | None = None  # the latest usage seen
        self.usage_final = False  # the latest usage came in the usage-only event: it is the total
        self.done = False  # `data: [DONE]` reached the client: it has the whole answer
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
        return self._events(data[:end])

    def finish(self) -> bytes:
        """The bytes after the last event boundary, at the end of the stream."""
        rest, self._pending = self._pending, b""
        return self._events(rest) if rest else b""

    def _events(self, block: bytes) -> bytes:
        if _USAGE in block:
            block = self._take_usage(block)
            if self.hide_usage and self.chat:
                block = _NULL_USAGE.sub(b"", block)
        return block

    def delivered(self, events: bytes) -> None:
        """Note that `events` (from `feed` or `finish`) reached the client."""
        if not self.done and _DONE in events:
            self.done = True

    def _take_usage(self, block: bytes) -> bytes:
        """Read the usage of each event that has one; drop the usage-only event when hiding. Only
        those events are parsed: the others pass as they are."""
        kept, copied = [], 0
        for match in _USAGE_VALUE.finditer(block):
            if match.start() < copied:
                continue  # a second usage in an event already read
            lf, crlf = block.rfind(b"\n\n", copied, match.start()), block.rfind(b"\n\r\n", copied, match.start())
            begin = max(lf + 2 if lf >= 0 else copied, crlf + 3 if crlf >= 0 else copied)
            separator = _EVENT_SEPARATOR.search(block, match.end())
            end, after = (separator.start(), separator.end()) if separator else (len(block), len(block))
            kept.append(block[copied:begin])
            passed_on = self._read_event(block[begin:end])
            if passed_on is not None:
                kept.append(passed_on + block[end:after])
            copied = after
        if not kept:
            return block
        kept.append(block[copied:])
        return b"".join(kept)

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
            return None
        return b"data: " + json.dumps({k: v for k, v in payload.items() if k != "usage"},
                                      separators=(",", ":"), ensure_ascii=False).encode()
