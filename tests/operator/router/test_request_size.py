"""Request sizing: the script-aware input estimate, max_tokens, and the /tokenize request."""
from __future__ import annotations

import pytest

from melange.operator.router.request_size import (ASCII_CHARS_PER_TOKEN, TOKENS_PER_CHAT_MESSAGE, estimate_input_tokens,
                                           estimate_text_tokens, requested_output_tokens, tokenize_request)


def test_ascii_text_uses_the_ascii_rate():
    assert estimate_text_tokens("x" * 3900) == round(3900 / ASCII_CHARS_PER_TOKEN)
    assert estimate_text_tokens("") == 0


def test_scripts_cost_more_tokens_per_character_than_ascii():
    ascii_tokens = estimate_text_tokens("a" * 1000)
    cyrillic = estimate_text_tokens("ж" * 1000)
    korean = estimate_text_tokens("한" * 1000)
    assert ascii_tokens < cyrillic < korean
    # mixed text is the sum of its parts
    assert estimate_text_tokens("a" * 1000 + "한" * 1000) == pytest.approx(ascii_tokens + korean, abs=1)


def test_chat_messages_add_template_tokens_and_read_text_parts():
    body = {"messages": [{"role": "system", "content": "x" * 390},
                         {"role": "user", "content": [{"type": "text", "text": "y" * 390},
                                                      {"type": "image_url", "image_url": {"url": "u"}}]}]}
    assert estimate_input_tokens(body) == 2 * (100 + TOKENS_PER_CHAT_MESSAGE)
    assert estimate_input_tokens({"messages": "not a list"}) == 0
    assert estimate_input_tokens({"messages": [None, {"content": 5}]}) == 2 * TOKENS_PER_CHAT_MESSAGE


def test_prompt_shapes():
    assert estimate_input_tokens({"prompt": [1, 2, 3, 4]}) == 4  # token ids are counted exactly
    assert estimate_input_tokens({"prompt": ["x" * 39, "x" * 390]}) == 100  # a batch: its longest prompt
    assert estimate_input_tokens({"prompt": [[1, 2], [1, 2, 3]]}) == 3
    assert estimate_input_tokens({}) == 0


def test_requested_output_tokens():
    assert requested_output_tokens({"max_tokens": 64}) == 64
    assert requested_output_tokens({"max_completion_tokens": 32, "max_tokens": 64}) == 32
    for bad in (0, -3, True, "64", 6.5, None):
        assert requested_output_tokens({"max_tokens": bad}) is None


def test_tokenize_request_mirrors_the_completion():
    assert tokenize_request({"model": "m", "prompt": "hi"}) == {"model": "m", "prompt": "hi"}
    messages = [{"role": "user", "content": "hi"}]
    assert tokenize_request({"messages": messages}) == {"messages": messages, "add_generation_prompt": True}
    assert tokenize_request({"prompt": [1, 2]}) is None
