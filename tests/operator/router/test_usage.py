"""Usage read from upstream answers and hidden from clients that did not ask for it (pure functions);
requests read and counted as vLLM reads and counts them: tests/operator/router/test_vllm_counting.py."""
from __future__ import annotations

import json

import pytest

from melange.operator.router.usage import RequestShape, UsageStream, size_from_usage, sizes_of_answer

CHAT_EVENT = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"a"}}]'
USAGE = {"prompt_tokens": 3, "total_tokens": 10, "completion_tokens": 7}


def chat_stream(null_usage: bool, usage_event: bool, separator: bytes = b"\n\n") -> bytes:
    """Three chat events, each with `"usage":null` or not, the usage-only event or not, [DONE]."""
    text = (CHAT_EVENT + (b',"usage":null}' if null_usage else b"}") + separator) * 3
    usage = (b'data: {"id":"c","choices":[],"usage":' + json.dumps(USAGE).encode() + b"}" + separator
             if usage_event else b"")
    return text + usage + b"data: [DONE]" + separator


def relay(stream: UsageStream, data: bytes, cuts: list[int]) -> bytes:
    """What `stream` passes on when `data` arrives in pieces cut at `cuts`."""
    edges = [0, *cuts, len(data)]
    return b"".join(stream.feed(data[a:b]) for a, b in zip(edges, edges[1:])) + stream.finish()


@pytest.mark.parametrize("separator", [b"\n\n", b"\r\n\r\n"])
def test_a_client_that_did_not_ask_gets_what_it_would_have_got_however_the_bytes_are_cut(separator):
    upstream = chat_stream(null_usage=True, usage_event=True, separator=separator)
    without = chat_stream(null_usage=False, usage_event=False, separator=separator)
    for cut in range(1, len(upstream)):  # every place one read can end
        stream = UsageStream(hide_usage=True, chat=True)
        assert relay(stream, upstream, [cut]) == without, cut
        assert stream.usage == USAGE and stream.usage_final


def test_a_client_that_asked_gets_every_byte():
    upstream = chat_stream(null_usage=True, usage_event=True)
    stream = UsageStream(hide_usage=False, chat=True)
    assert relay(stream, upstream, [5, 50, 200]) == upstream
    assert stream.usage == USAGE and stream.usage_final


def test_completion_events_keep_their_null_usage():
    # vLLM puts "usage": null on completion events whether usage was asked for or not
    event = b'data: {"id":"x","object":"text_completion","choices":[{"text":"a"}],"usage":null}\n\n'
    stream = UsageStream(hide_usage=True, chat=False)
    assert relay(stream, event * 2 + b"data: [DONE]\n\n", []) == event * 2 + b"data: [DONE]\n\n"
    assert stream.usage is None


def test_null_usage_is_removed_wherever_it_stands_in_the_event():
    stream = UsageStream(hide_usage=True, chat=True)
    for event, expected in [(b'data: {"usage": null, "id": "x"}\n\n', b'data: {"id": "x"}\n\n'),
                            (b'data: {"id": "x" , "usage" : null }\n\n', b'data: {"id": "x" }\n\n'),
                            (b'data: {"usage":null}\n\n', b"data: {}\n\n"),
                            (b'data: {"text":"\\"usage\\":null","usage":null}\n\n',
                             b'data: {"text":"\\"usage\\":null"}\n\n')]:
        assert stream.feed(event) == expected
        assert json.loads(expected[6:]) == {k: v for k, v in json.loads(event[6:]).items() if k != "usage"}


def test_usage_on_a_text_event_is_read_and_hidden_but_not_final():
    event = b'data: {"id":"x","choices":[{"text":"a"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    stream = UsageStream(hide_usage=True, chat=False)
    assert json.loads(stream.feed(event)[6:]) == {"id": "x", "choices": [{"text": "a"}]}
    assert stream.usage == {"prompt_tokens": 1, "completion_tokens": 2} and not stream.usage_final


def test_sizes_from_usage():
    assert size_from_usage({"prompt_tokens": 12, "completion_tokens": 30}, 99) == (12, 30)
    assert size_from_usage({"completion_tokens": 30}, 99) == (99, 30)  # the router's own count stands in
    assert size_from_usage({"prompt_tokens": 12}, 99) is None
    assert size_from_usage({"prompt_tokens": 12, "completion_tokens": True}, 99) is None
    one = RequestShape()
    assert sizes_of_answer(b'{"usage": {"prompt_tokens": 1, "completion_tokens": 2}}', one, 99) == [(1, 2)]
    assert sizes_of_answer(b"not json", one, 99) == [] and sizes_of_answer(b"[1]", one, 99) == []
    assert sizes_of_answer(b'{"usage": null}', one, 99) == []


def test_the_answer_is_whole_once_done_reached_the_client():
    stream = UsageStream(hide_usage=True, chat=True)
    events = stream.feed(chat_stream(null_usage=False, usage_event=False))
    assert not stream.done  # handed out, not yet written
    stream.delivered(events[:10])
    assert not stream.done
    stream.delivered(events)
    assert stream.done
