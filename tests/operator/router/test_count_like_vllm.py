"""The router reads requests as vLLM reads them and counts them as vLLM counts them: one joint-counter
sample per sequence (n per prompt, one per prompt of a completions list), `stream`,
`stream_options.include_usage` and `n` read laxly as vLLM's pydantic models do, a malformed
`stream_options` passed to vLLM unchanged, and a client that did not ask for usage receiving what
vLLM sends without it (`system_fingerprint` on the finishing events, no usage, no metrics).

The vLLM side is the fake upstream (`melange.testing.openai_upstream`), which reads requests with
pydantic models of vLLM's own field types and answers in vLLM 0.34.0's shapes; the expected counts
are written out from what each test sends.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict

import aiohttp
import pytest
import pytest_asyncio

from melange.operator.router.proxy import SERVER_OPTIONS, Router, _size_cell, build_app
from melange.operator.router.usage import (RequestShape, SequenceOutput, UsageStream, lax_bool, lax_int, optional_flag,
                                           request_shape, sequence_sizes, sizes_of_answer, split_total, usage_request,
                                           with_fingerprint)
from melange.testing.openai_upstream import (FINGERPRINT, RequestFields, read_request, serve_app, stream_events,
                                             upstream_app)

# How pydantic's lax mode reads a `bool` field (vLLM's `stream`, `include_usage`): None where it
# refuses the value, and vLLM answers 400.
BOOL_READINGS = [(True, True), (False, False), (1, True), (0, False), (1.0, True), (0.0, False),
                 ("1", True), ("0", False), ("true", True), ("True", True), ("TRUE", True), ("false", False),
                 ("yes", True), ("no", False), ("on", True), ("off", False), ("y", True), ("n", False),
                 ("t", True), ("f", False), ("On", True), ("NO", False),
                 (2, None), (-1, None), (0.5, None), ("", None), ("maybe", None), (" true", None), ("true ", None),
                 ("2", None), ([], None), ({}, None), ([True], None)]
# How it reads an `int` field (vLLM's `n`).
INT_READINGS = [(2, 2), ("2", 2), (" 3 ", 3), ("+3", 3), ("-2", -2), ("3.0", 3), ("3.00", 3), ("1_0", 10),
                (2.0, 2), (True, 1), ("0003", 3),
                (2.5, None), ("2.5", None), ("3.", None), (".0", None), ("1e2", None), ("", None), ("abc", None),
                ("_1", None), ("1__0", None), ("1 0", None), ("٣", None), (None, None), ([], None)]


@pytest.mark.parametrize(("value", "reading"), BOOL_READINGS)
def test_bools_read_as_pydantic_reads_them(value, reading):
    assert lax_bool(value) is reading
    # and as the fake upstream's pydantic model of vLLM's request reads them
    try:
        pydantic_reading = RequestFields.model_validate({"stream": value}).stream
    except ValueError:
        pydantic_reading = None
    assert pydantic_reading is reading
    assert optional_flag(None) is False  # `bool | None`: null is off


@pytest.mark.parametrize(("value", "reading"), INT_READINGS)
def test_ints_read_as_pydantic_reads_them(value, reading):
    assert lax_int(value) == reading and (reading is None or type(lax_int(value)) is int)
    try:
        pydantic_reading = RequestFields.model_validate({"n": value}).n
    except ValueError:
        pydantic_reading = None
    assert pydantic_reading == (reading if value is not None else None)


HIDDEN = {"include_usage": True}  # what the router asks for on a stream whose client did not


@pytest.mark.parametrize(("body", "sent_options"), [
    ({"stream": True}, HIDDEN),
    ({"stream": 1}, HIDDEN),
    ({"stream": "true"}, HIDDEN),
    ({"stream": "yes"}, HIDDEN),
    ({"stream": "on"}, HIDDEN),
    ({"stream": "1"}, HIDDEN),
    ({"stream": True, "stream_options": None}, HIDDEN),
    ({"stream": True, "stream_options": {}}, HIDDEN),  # vLLM 0.34: include_usage defaults to false
    ({"stream": True, "stream_options": {"include_usage": "false"}}, HIDDEN),
    ({"stream": True, "stream_options": {"include_usage": 0}}, HIDDEN),
    ({"stream": True, "stream_options": {"include_usage": None}}, HIDDEN),
    ({"stream": True, "stream_options": {"include_usage": False, "continuous_usage_stats": "true"}},
     {"include_usage": True, "continuous_usage_stats": False}),
    ({"stream": True, "stream_options": {"include_usage": False, "continuous_usage_stats": "no"}},
     {"include_usage": True, "continuous_usage_stats": "no"}),
    ({"stream": True, "stream_options": {"include_usage": "off", "other": 1}}, {"include_usage": True, "other": 1}),
])
def test_a_stream_whose_client_did_not_ask_asks_for_usage(body, sent_options):
    original = json.loads(json.dumps(body))
    sent = usage_request(body)
    assert sent == {**body, "stream_options": sent_options}
    assert body == original  # the client's body is left alone
    fields = read_request(sent, chat=False)  # what vLLM reads from the body sent
    assert fields.stream is True and fields.stream_options.include_usage is True
    assert not fields.stream_options.continuous_usage_stats


@pytest.mark.parametrize("body", [
    {},  # not streamed
    {"stream": False}, {"stream": "false"}, {"stream": 0}, {"stream": "0"}, {"stream": "no"}, {"stream": "off"},
    {"stream": None},
    {"stream": "maybe"}, {"stream": 2},  # vLLM refuses these: its 400 for the client's own body
    {"stream": True, "stream_options": {"include_usage": True}},  # asked: every byte passes
    {"stream": 1, "stream_options": {"include_usage": "true"}},
    {"stream": True, "stream_options": {"include_usage": 1}},
    {"stream": True, "stream_options": {"include_usage": "yes", "continuous_usage_stats": True}},
    # malformed stream_options: passed on as sent, for vLLM's 400
    {"stream": True, "stream_options": "include_usage"}, {"stream": True, "stream_options": ["include_usage"]},
    {"stream": True, "stream_options": 1}, {"stream": True, "stream_options": {"include_usage": "maybe"}},
    {"stream": True, "stream_options": {"continuous_usage_stats": "sometimes"}},
])
def test_a_body_goes_as_it_is(body):
    assert usage_request(body) is None


def test_request_shapes():
    assert request_shape({"prompt": "a"}, chat=False) == RequestShape(1, (1.0,))
    assert request_shape({"prompt": "a", "n": 3}, chat=False).sequences == 3
    assert request_shape({"prompt": "a", "n": "3"}, chat=False).sequences == 3  # lax int
    assert request_shape({"messages": [], "n": None}, chat=True).sequences == 1  # chat's n is `int | None`
    assert request_shape({"prompt": [1, 2, 3], "n": 2}, chat=False) == RequestShape(2, (1.0,))  # token ids: 1 prompt
    assert request_shape({"prompt": [[1, 2, 3], [4]], "n": 2}, chat=False) == RequestShape(2, (3.0, 1.0))
    assert request_shape({"prompt": ["a b c d e f g h", "x"]}, chat=False).sequences == 2
    assert request_shape({"prompt": ["a", "b"]}, chat=True).sequences == 1  # chat has one prompt
    for refused in (0, -1, "x", 2.5):  # vLLM answers 400; nothing is counted
        assert request_shape({"prompt": "a", "n": refused}, chat=False).sequences == 1


def test_split_total_keeps_the_sum():
    assert split_total(10, [1, 1]) == [5, 5]
    assert split_total(10, [3, 1]) == [8, 2]  # 7.5 and 2.5: the tie goes to the lower index
    assert split_total(7, [1, 1, 1]) == [3, 2, 2]
    assert split_total(5, [0, 0]) == [3, 2]  # nothing to go by: evenly
    assert split_total(0, [2, 5]) == [0, 0]
    for total in range(40):
        for weights in ([1, 2, 3], [0, 7, 0.5], [100, 1], [1]):
            assert sum(split_total(total, weights)) == total


def test_one_sequence_is_its_usage_exactly():
    usage = {"prompt_tokens": 12, "completion_tokens": 30}
    assert sequence_sizes(usage, RequestShape(), {}, 99) == [(12, 30)]
    assert sequence_sizes(usage, RequestShape(), {0: SequenceOutput(chars=5)}, 99) == [(12, 30)]
    assert sequence_sizes({"completion_tokens": 30}, RequestShape(), {}, 99) == [(99, 30)]  # the router's count
    assert sequence_sizes({"prompt_tokens": 12}, RequestShape(), {}, 99) == []
    assert sequence_sizes(None, RequestShape(3), {}, 99) == []


def test_token_ids_give_each_sequence_its_exact_output():
    # equal text, unequal tokens: the token ids decide
    outputs = {0: SequenceOutput(chars=10, token_ids=7, token_ids_seen=True),
               1: SequenceOutput(chars=10, token_ids=3, token_ids_seen=True)}
    assert sequence_sizes({"prompt_tokens": 5, "completion_tokens": 10}, RequestShape(2), outputs, 0) == [(5, 7), (5, 3)]
    # one choice's token ids incomplete: it gets the rest of the total
    outputs[1].token_ids_missing = True
    outputs[2] = SequenceOutput(chars=30)
    assert sequence_sizes({"prompt_tokens": 5, "completion_tokens": 15}, RequestShape(3), outputs, 0) == [
        (5, 7), (5, 2), (5, 6)]


def test_without_token_ids_the_total_is_split_by_generated_text():
    """The documented approximation: every sequence counted, each prompt's input exact, the output
    total exact, each sequence's share of it in proportion to its characters."""
    outputs = {0: SequenceOutput(chars=300), 1: SequenceOutput(chars=100), 2: SequenceOutput(chars=0)}
    assert sequence_sizes({"prompt_tokens": 9, "completion_tokens": 80}, RequestShape(3), outputs, 0) == [
        (9, 60), (9, 20), (9, 0)]


def test_batched_prompts_each_have_their_own_input():
    shape = request_shape({"prompt": [[1] * 12, [1] * 40, [1] * 3], "n": 2}, chat=False)
    outputs = {i: SequenceOutput(chars=10) for i in range(6)}
    sizes = sequence_sizes({"prompt_tokens": 55, "completion_tokens": 60}, shape, outputs, 0)
    assert sizes == [(12, 10), (12, 10), (40, 10), (40, 10), (3, 10), (3, 10)]  # index = prompt * n + k
    # text prompts: the prompt total split by the router's estimate of each (approximate), summing exactly
    shape = request_shape({"prompt": ["word " * 40, "word " * 10]}, chat=False)
    sizes = sequence_sizes({"prompt_tokens": 100, "completion_tokens": 2}, shape, {0: SequenceOutput(1),
                                                                                  1: SequenceOutput(1)}, 0)
    assert sizes == [(80, 1), (20, 1)]
    shape = request_shape({"prompt": ["w w w", "w"]}, chat=False)  # short prompts keep their proportions
    assert [p for p, _ in sequence_sizes({"prompt_tokens": 4, "completion_tokens": 2}, shape, {}, 0)] == [3, 1]


def test_a_whole_answer_with_several_choices():
    answer = {"choices": [{"index": 0, "text": "a" * 30, "token_ids": None},
                          {"index": 1, "text": "a" * 10},
                          {"index": 2, "message": {"role": "assistant", "content": "", "reasoning": "b" * 20,
                                                   "tool_calls": [{"function": {"name": "f", "arguments": "c" * 19}}]}}],
              "usage": {"prompt_tokens": 4, "completion_tokens": 100}}
    assert sizes_of_answer(json.dumps(answer).encode(), RequestShape(3), 0) == [(4, 38), (4, 12), (4, 50)]
    answer["choices"][1]["token_ids"] = list(range(12))
    answer["choices"][0]["token_ids"] = list(range(40))
    assert sizes_of_answer(json.dumps(answer).encode(), RequestShape(3), 0) == [(4, 40), (4, 12), (4, 48)]


def test_the_fingerprint_goes_where_vllm_writes_it():
    event = b'data: {"id":"x","choices":[{"index":0,"finish_reason":"stop"}],"kv_transfer_params":null}'
    assert with_fingerprint(event, "fp") == (b'data: {"id":"x","choices":[{"index":0,"finish_reason":"stop"}],'
                                             b'"system_fingerprint":"fp","kv_transfer_params":null}')
    event = b'data: {"id":"x","choices":[{"index":0,"finish_reason":"stop"}]}'
    assert json.loads(with_fingerprint(event, "fp")[6:]) == {**json.loads(event[6:]), "system_fingerprint": "fp"}
    stamped = b'data: {"id":"x","system_fingerprint":"old","choices":[]}'
    assert with_fingerprint(stamped, "fp") == stamped


def relay(stream: UsageStream, data: bytes, cuts: list[int]) -> bytes:
    edges = [0, *cuts, len(data)]
    relayed = []
    for a, b in zip(edges, edges[1:]):
        relayed.append(stream.feed(data[a:b]))
    return b"".join(relayed) + stream.finish()


def by_choice(stream: bytes) -> dict[int, list[bytes]]:
    """Each choice's events in the order they came; the events without choices under -1."""
    events = defaultdict(list)
    for event in stream.split(b"\n\n"):
        payload = json.loads(event[6:]) if event.startswith(b"data: {") else None
        choices = payload.get("choices") if payload else None
        events[choices[0]["index"] if choices else -1].append(event)
    return dict(events)


COMPLETION = {"prompt": "one two three", "max_tokens": 12, "stream": True}
CHAT = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 12, "stream": True}
METRICS = {"time_to_first_token_ms": 12.5, "generation_time_ms": 80.0}


@pytest.mark.parametrize("fingerprint", [FINGERPRINT, None])
@pytest.mark.parametrize("body", [COMPLETION, CHAT], ids=["completions", "chat"])
def test_a_hidden_usage_client_gets_what_vllm_sends_without_include_usage(body, fingerprint):
    """One sequence: byte for byte, however the upstream's bytes are cut: no usage event, no
    metrics, and the fingerprint (when the server has one) on the event that finishes the choice."""
    with_usage = b"".join(stream_events({**body, "stream_options": {"include_usage": True}}, 5, fingerprint, METRICS))
    assert b'"metrics":' in with_usage and (b'"system_fingerprint"' in with_usage) == (fingerprint is not None)
    without = b"".join(stream_events(body, 5, fingerprint, METRICS))
    for cut in range(1, len(with_usage)):
        stream = UsageStream(hide_usage=True, chat="messages" in body)
        assert relay(stream, with_usage, [cut]) == without, cut
        assert stream.sizes(RequestShape(), 0) == [(3, 12)]


@pytest.mark.parametrize("body", [{**COMPLETION, "n": 3}, {**COMPLETION, "prompt": ["one two three", "four"], "n": 2},
                                  {**CHAT, "n": 2}], ids=["n", "batched", "chat-n"])
def test_several_sequences_hidden_usage(body):
    """Several sequences: each choice gets the events vLLM sends without include_usage, in its own
    order (an early-finishing choice's last event waits for the usage event), and each sequence
    is counted with its own size (the fake upstream's: `max(1, 12 // (index + 1))` tokens)."""
    with_usage = b"".join(stream_events({**body, "stream_options": {"include_usage": True}}, 5))
    without = b"".join(stream_events(body, 5))
    chat = "messages" in body
    shape = request_shape(body, chat)
    for cuts in ([], [7, 300, 301, 900], list(range(50, len(with_usage), 97))):
        stream = UsageStream(hide_usage=True, chat=chat, per_choice=True)
        relayed = relay(stream, with_usage, cuts)
        assert by_choice(relayed) == by_choice(without)
        assert Counter(relayed.split(b"\n\n")) == Counter(without.split(b"\n\n"))
        assert relayed.endswith(b"data: [DONE]\n\n")
        expected = {"n": [(3, 12), (3, 6), (3, 4)], "batched": [(3, 12), (3, 6), (1, 4), (1, 3)],
                    "chat-n": [(3, 12), (3, 6)]}
        key = "chat-n" if chat else "batched" if isinstance(body["prompt"], list) else "n"
        assert stream.sizes(shape, 0) == expected[key]


def test_a_stream_that_ends_without_usage_keeps_its_finishing_events():
    body = {**COMPLETION, "n": 2}
    without = b"".join(stream_events(body, 4))  # an upstream that ignored include_usage
    stream = UsageStream(hide_usage=True, chat=False, per_choice=True)
    relayed = relay(stream, without, [])
    assert by_choice(relayed) == by_choice(without) and relayed.endswith(b"data: [DONE]\n\n")
    assert stream.sizes(request_shape(body, chat=False), 0) == []  # no usage: not counted
    cut = without[:without.rindex(b"data: [DONE]")]  # a stream cut before [DONE]: nothing held back
    stream = UsageStream(hide_usage=True, chat=False, per_choice=True)
    assert Counter(relay(stream, cut, []).split(b"\n\n")) == Counter(cut.split(b"\n\n"))


def test_a_client_that_asked_gets_every_byte_and_every_sequence_is_counted():
    body = {**COMPLETION, "n": 3, "stream_options": {"include_usage": True}}
    events = b"".join(stream_events(body, 5))
    stream = UsageStream(hide_usage=False, chat=False, per_choice=True)
    assert relay(stream, events, [100, 1000]) == events
    assert stream.sizes(request_shape(body, chat=False), 0) == [(3, 12), (3, 6), (3, 4)]


# ---------------------------------------------------------------------------------------------------
# Through the router, to the fake vLLM upstream


@pytest_asyncio.fixture
async def routed(tmp_path):
    """A router with one pool in front of one upstream whose usage-only event carries metrics;
    yields the router, its URL, the upstream's URL, the bodies the upstream received, a session."""
    received: list[bytes] = []
    upstream, upstream_url = await serve_app(upstream_app("u", chunks=5, metrics=METRICS, received=received),
                                             **SERVER_OPTIONS)
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"grid": {"input_edges": [100, 100_000], "output_edges": [100, 1000]},
                                "pools": {"u": {"urls": [upstream_url]}}, "input_weights": [{"u": 1.0}, {"u": 1.0}]}))
    router = Router(path, model_name="m", seed=1)
    runner, router_url = await serve_app(build_app(router), **SERVER_OPTIONS)
    async with aiohttp.ClientSession() as session:
        yield router, router_url, upstream_url, received, session
    await runner.cleanup()
    await upstream.cleanup()


def has_usage(answer: bytes) -> bool:
    """Whether a whole answer, or any event of a stream, carries a usage."""
    if not answer.startswith(b"data:"):
        return isinstance(json.loads(answer).get("usage"), dict)
    return any(isinstance(json.loads(e[6:]).get("usage"), dict) for e in answer.split(b"\n\n")
               if e.startswith(b"data: {"))


def joint_counts(router: Router) -> Counter:
    return Counter({(s.labels["input_le"], s.labels["output_le"]): s.value for m in router.metrics.joint.collect()
                    for s in m.samples if s.name.endswith("_total") and s.value})


# Requests and the sequences vLLM runs for each, by hand: (its prompt's tokens, its output tokens).
# The upstream counts a word as a token, an id as a token; sequence i makes max(1, 60 // (i + 1)).
SEQUENCES = [
    ("/v1/completions", {"prompt": "one two three", "n": 3, "max_tokens": 60}, [(3, 60), (3, 30), (3, 20)]),
    ("/v1/completions", {"prompt": ["one two three", "four five"], "n": 2, "max_tokens": 60},
     [(3, 60), (3, 30), (2, 20), (2, 15)]),
    ("/v1/completions", {"prompt": [[7] * 12, [7] * 40], "max_tokens": 60}, [(12, 60), (40, 30)]),
    ("/v1/completions", {"prompt": "one two", "n": 2, "max_tokens": 60, "return_token_ids": True},
     [(2, 60), (2, 30)]),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "one two three"}], "n": "2",
                              "max_tokens": 60}, [(3, 60), (3, 30)]),
]
# Each sent four ways: whole, streamed without asking for usage, streamed asking, and streamed with
# lax values (`"stream": "yes"`, `include_usage: "false"`: vLLM reads them as true and false).
WAYS = [{}, {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}},
        {"stream": "yes", "stream_options": {"include_usage": "false"}}]


@pytest.mark.integration
@pytest.mark.asyncio
async def test_the_joint_counter_equals_vllms_counts_for_n_and_batched_prompts(routed):
    router, url, _, _, session = routed
    # What vLLM's counters read for this traffic: one finished request per sequence
    # (vllm:request_success_total), each observed with its prompt's and its own output tokens.
    vllm_success, vllm_prompt_sum, vllm_generation_sum = 0, 0, 0
    expected = Counter()
    for path, body, sequences in SEQUENCES:
        for way in WAYS:
            async with session.post(url + path, json={**body, **way}) as response:
                assert response.status == 200
                text = await response.read()
            asked = way.get("stream_options", {}).get("include_usage") is True
            assert has_usage(text) == (asked or not way)
            vllm_success += len(sequences)
            vllm_prompt_sum += sum(p for p, _ in sequences)
            vllm_generation_sum += sum(o for _, o in sequences)
            expected.update((_size_cell(p), _size_cell(o)) for p, o in sequences)
    counted = joint_counts(router)
    assert counted == expected
    assert sum(counted.values()) == vllm_success == 4 * (3 + 4 + 2 + 2 + 2)
    # the cells, by hand from the edges (..., 2, 5, 10, 16, 20, 25, 32, 50, 64, ...)
    assert expected == Counter({("5", "64"): 12, ("5", "32"): 12, ("5", "20"): 4, ("2", "20"): 4, ("2", "16"): 4,
                                ("16", "64"): 4, ("50", "32"): 4, ("2", "64"): 4, ("2", "32"): 4})
    assert (vllm_prompt_sum, vllm_generation_sum) == (4 * (9 + 10 + 52 + 4 + 6), 4 * (110 + 125 + 90 + 90 + 90))


@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_lax_values_are_read_as_vllm_reads_them(routed, path):
    router, url, upstream_url, _, session = routed
    prompt = {"prompt": "one two three"} if path == "/v1/completions" else {
        "messages": [{"role": "user", "content": "one two three"}]}
    cases = [({"stream": value}, True, False) for value in (1, "true", "1", "yes", "on", "TRUE")]
    cases += [({"stream": value}, False, True) for value in ("false", 0, "0", "no", "off", None)]
    cases += [({"stream": 1, "stream_options": {"include_usage": value}}, True, False)
              for value in ("false", 0, "no", None)]
    cases += [({"stream": "true", "stream_options": {"include_usage": value}}, True, True)
              for value in ("true", 1, "yes", "on")]
    for lax, streamed, with_usage in cases:
        body = {**prompt, "max_tokens": 7, **lax}
        async with session.post(upstream_url + path, json=body) as direct:
            expected = await direct.read()
        async with session.post(url + path, json=body) as response:
            assert response.status == 200
            assert response.content_type == ("text/event-stream" if streamed else "application/json"), lax
            received = await response.read()
        if streamed:
            assert received == expected, lax  # what vLLM sends for the client's own request
        assert has_usage(received) == with_usage, lax
    assert joint_counts(router) == Counter({("5", "10"): len(cases)})  # every one counted: 3 tokens in, 7 out


@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize("options", ["include_usage", ["include_usage"], 1, {"include_usage": "maybe"},
                                     {"continuous_usage_stats": "sometimes"}])
async def test_a_malformed_stream_options_reaches_vllm_as_sent(routed, options):
    router, url, _, received, session = routed
    raw = json.dumps({"prompt": "one two three", "stream": True, "stream_options": options}).encode()
    async with session.post(url + "/v1/completions", data=raw, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400  # vLLM's answer, passed on
        assert (await response.json())["error"]["code"] == 400
    assert received == [raw]
    assert joint_counts(router) == Counter()
    assert router.metrics.errors.labels("u")._value.get() == 0


@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_the_final_events_fields(routed, path):
    """Without usage asked: the fingerprint on each finishing event and no metrics, as vLLM sends;
    asked: the usage-only event with the fingerprint and the metrics."""
    _, url, upstream_url, _, session = routed
    prompt = {"prompt": "one two three"} if path == "/v1/completions" else {
        "messages": [{"role": "user", "content": "one two three"}]}
    for n in (1, 2):
        for options in (None, {"include_usage": True}):
            body = {**prompt, "max_tokens": 7, "stream": True, "n": n}
            if options is not None:
                body["stream_options"] = options
            async with session.post(upstream_url + path, json=body) as direct:
                expected = await direct.read()
            async with session.post(url + path, json=body) as routed_response:
                received = await routed_response.read()
            if n == 1 or options is not None:
                assert received == expected
            else:
                assert by_choice(received) == by_choice(expected)
            events = [json.loads(e[6:]) for e in received.split(b"\n\n") if e.startswith(b"data: {")]
            finishing = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
            assert len(finishing) == n
            if options is None:
                assert all(e.get("system_fingerprint") == FINGERPRINT for e in finishing)
                assert not any("usage" in e or "metrics" in e for e in events)
            else:
                assert not any("system_fingerprint" in e for e in finishing)
                assert events[-1]["choices"] == [] and events[-1]["system_fingerprint"] == FINGERPRINT
                assert events[-1].get("metrics") == (METRICS if n == 1 else None)  # vLLM: one sequence only
