"""Prompt compression for chat messages, with the parts that must not change protected.

Long system and user contents (over ``prompt_min_tokens``) are compressed with the core.
Protected verbatim: fenced and inline code, JSON blocks, URLs, numbers (the math force-keep),
and the final question of the last user message (its last paragraph), since that is what the
model must answer. Assistant and tool messages are never touched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tokenskip.compress import compress
from tokenskip.force import ForceKeep
from tokenskip.scorers.base import Scorer
from tokenskip.tokens import TextTokenizer

_FENCED = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_JSON_START = re.compile(r"(?m)^[ \t]*[\[{]")

PROMPT_FORCE = ForceKeep(numbers=True, operators=False, tokens=(), answer_line=False)
COMPRESSIBLE_ROLES = ("system", "developer", "user")


def _json_spans(text: str) -> list[tuple[int, int]]:
    """Spans of JSON objects/arrays that start a line and parse as JSON."""
    spans = []
    decoder = json.JSONDecoder()
    for m in _JSON_START.finditer(text):
        start = m.end() - 1
        if spans and start < spans[-1][1]:
            continue
        try:
            _, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        spans.append((start, end))
    return spans


def _last_paragraph(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    cut = stripped.rfind("\n\n")
    start = cut + 2 if cut >= 0 else 0
    if cut < 0:  # one paragraph: protect its last sentence
        sentence_ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", stripped)]
        start = sentence_ends[-1] if sentence_ends else 0
    return start, len(text)


def protected_spans(text: str, *, is_last_user: bool) -> list[tuple[int, int]]:
    spans = [
        m.span()
        for pattern in (_FENCED, _INLINE_CODE, _URL, _EMAIL)
        for m in pattern.finditer(text)
    ]
    spans.extend(_json_spans(text))
    if is_last_user:
        spans.append(_last_paragraph(text))
    return spans


@dataclass
class PromptCompression:
    """Compressed messages and the target-tokenizer counts behind them."""

    messages: list[dict[str, Any]]
    original_tokens: int
    sent_tokens: int
    num_compressed: int

    @property
    def saved_tokens(self) -> int:
        return self.original_tokens - self.sent_tokens


def _text_parts(message: dict[str, Any]) -> list[tuple[Any, str]]:
    """(key, text) pairs of a message's text content: the string, or each text part."""
    content = message.get("content")
    if isinstance(content, str):
        return [(None, content)]
    if isinstance(content, list):
        return [
            (i, p["text"])
            for i, p in enumerate(content)
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
    return []


def compress_messages(
    messages: list[dict[str, Any]],
    *,
    ratio: float | None,
    min_tokens: int,
    tokenizer: TextTokenizer,
    scorer: Scorer | None,
) -> PromptCompression:
    """Compress what is long enough; count every text content before and after."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    out, original, sent, num_compressed = [], 0, 0, 0
    for index, message in enumerate(messages):
        message = dict(message)
        for key, text in _text_parts(message):
            count = tokenizer.count(text)
            original += count
            new_text, new_count = text, count
            if (
                ratio is not None
                and scorer is not None
                and ratio < 1.0
                and message.get("role") in COMPRESSIBLE_ROLES
                and count >= min_tokens
            ):
                spans = protected_spans(text, is_last_user=index == last_user)
                result = compress(
                    text,
                    ratio,
                    tokenizer=tokenizer,
                    scorer=scorer,
                    force=PROMPT_FORCE,
                    protect=spans,
                )
                if result.kept_tokens < count:
                    new_text, new_count = result.text, result.kept_tokens
                    num_compressed += 1
            sent += new_count
            if key is None:
                message["content"] = new_text
            else:
                parts = list(message["content"])
                parts[key] = {**parts[key], "text": new_text}
                message["content"] = parts
        out.append(message)
    return PromptCompression(out, original, sent, num_compressed)
