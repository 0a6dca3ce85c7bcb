"""How big a completion request is: its input tokens (estimated from the text, no tokenizer needed)
and the output tokens the client asked for. The router buckets requests with these.

The estimate counts characters by script, because tokens per character differ by an order of
magnitude between English and Korean. The rates were measured with a 32,000-token SentencePiece
BPE vocabulary of the Llama-2 kind (`bench/calibrate_token_estimate.py`, figures in docs/router.md);
larger vocabularies (Llama-3, Qwen2.5) need fewer tokens, so the estimate errs towards longer.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# ASCII text: 4.15 characters per token for English prose, 3.35 for source code (calibration
# bench); 3.9 keeps both within about 15%.
ASCII_CHARS_PER_TOKEN = 3.9
# Two-byte UTF-8 characters (accented Latin, Greek, Cyrillic, Hebrew, Arabic): about one token per
# two characters.
TOKENS_PER_TWO_BYTE_CHAR = 0.5
# Everything wider (CJK, Hangul, emoji): mostly byte-fallback pieces, measured 1.15 (Japanese) to
# 1.55 (Korean) tokens per character.
TOKENS_PER_WIDE_CHAR = 1.3
# Chat-template tokens a message adds around its content (role markers, separators).
TOKENS_PER_CHAT_MESSAGE = 4

_TWO_BYTE = re.compile("[\u0080-\u07ff]")
_WIDE = re.compile("[^\u0000-\u07ff]")


def text_token_weight(text: str) -> float:
    """Tokens of one text, estimated from its characters by script, unrounded (so that short texts
    keep their proportions when a known total is shared between them)."""
    if text.isascii():
        return len(text) / ASCII_CHARS_PER_TOKEN
    two_byte = len(_TWO_BYTE.findall(text))
    wide = len(_WIDE.findall(text))
    ascii_chars = len(text) - two_byte - wide
    return ascii_chars / ASCII_CHARS_PER_TOKEN + two_byte * TOKENS_PER_TWO_BYTE_CHAR + wide * TOKENS_PER_WIDE_CHAR


def estimate_text_tokens(text: str) -> int:
    """Tokens of one text, estimated from its characters by script."""
    return round(text_token_weight(text))


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, Mapping) and isinstance(part.get("text", ""), str))
    return ""


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """Input tokens of a completion or chat-completion request body, estimated."""
    if "messages" in body:
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        return sum(estimate_text_tokens(_message_text(m)) + TOKENS_PER_CHAT_MESSAGE for m in messages)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return len(prompt)  # already token ids
        # A batch of prompts: the router sends it as one request, so its size is the longest one.
        return max((len(p) if isinstance(p, list) else estimate_text_tokens(p)
                    for p in prompt if isinstance(p, (str, list))), default=0)
    return estimate_text_tokens(prompt if isinstance(prompt, str) else str(prompt))


def requested_output_tokens(body: Mapping[str, Any]) -> int | None:
    """`max_completion_tokens` or `max_tokens` when the client gave a positive one."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def tokenize_request(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The body of a vLLM `/tokenize` call that counts this request's input exactly, or None when
    the request has nothing to count (token ids already, or an unknown shape)."""
    model = body.get("model")
    if isinstance(body.get("messages"), list):
        request: dict[str, Any] = {"messages": body["messages"], "add_generation_prompt": True}
    elif isinstance(body.get("prompt"), str):
        request = {"prompt": body["prompt"]}
    else:
        return None
    if isinstance(model, str):
        request["model"] = model
    return request
