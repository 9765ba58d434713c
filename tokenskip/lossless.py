"""Lossless transforms: fewer tokens, the same information, before any word is dropped.

In the order they run:

1. ``json``: JSON documents and JSON blocks that start a line are minified, arrays of
   records (at any depth) written as compact tables (:mod:`tokenskip.tables`;
   :func:`expand_tables` gives back the exact data).
2. ``whitespace``: trailing spaces, runs of spaces inside a line (not the indentation, not
   lines holding quotes, not fenced code), and more than one blank line.
3. ``repeats``: a line or block of up to 8 lines repeated back to back 3 or more times is
   written once, followed by ``[previous line repeated N more times]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenskip.gcpause import paused_collection
from tokenskip.tables import DECODER, Object, encode, expand_tables, loads

__all__ = [
    "LosslessResult",
    "collapse_repeats",
    "compact_json",
    "expand_tables",
    "json_blocks",
    "lossless",
    "normalize_whitespace",
]

_FENCED = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_JSON_START = re.compile(r"(?m)^[ \t]*[\[{]")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TRAILING = re.compile(r"[ \t]+(?=\n|\Z)")
MAX_BLOCK_LINES = 8
MIN_REPEATS = 3


@dataclass(frozen=True)
class LosslessResult:
    """The transformed text and which transforms changed it."""

    text: str
    transforms: tuple[str, ...]
    """Names of the transforms that changed the text: ``json``, ``whitespace``, ``repeats``."""
    data_spans: tuple[tuple[int, int], ...] = ()
    """``[start, end)`` of each compacted JSON document or block in ``text``."""
    is_data: bool = False
    """The whole text is one JSON document (a tool output, an API response)."""


# -- the transforms --------------------------------------------------------------------


def compact_json(text: str) -> str:
    """JSON documents and line-initial JSON blocks minified, record arrays as tables."""
    with paused_collection():
        return _compact_json(text)


def _compact_json(text: str) -> str:
    out = []
    for start, end, value in json_blocks(text):
        out.append(text[start:end] if value is None else encode(value))
    return "".join(out)


def json_blocks(text: str) -> list[tuple[int, int, Any]]:
    """``text`` cut into pieces ``(start, end, value)``: JSON documents or line-initial JSON
    blocks with their parsed value, and the text between them with ``None``."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            value = loads(stripped)
        except ValueError:
            value = None
        if value is not None:
            lead = len(text) - len(text.lstrip())
            pieces = [(0, lead, None)] if lead else []
            pieces.append((lead, lead + len(stripped), value))
            if lead + len(stripped) < len(text):
                pieces.append((lead + len(stripped), len(text), None))
            return pieces
    pieces, last = [], 0
    for m in _JSON_START.finditer(text):
        start = m.end() - 1
        if start < last:
            continue
        try:
            value, end = DECODER.raw_decode(text, start)
        except ValueError:
            continue
        if not isinstance(value, (list, Object)) or end - start < 16:
            continue
        if start > last:
            pieces.append((last, start, None))
        pieces.append((start, end, value))
        last = end
    if last < len(text) or not pieces:
        pieces.append((last, len(text), None))
    return pieces


def _outside_code(text: str, transform: Callable[[str], str]) -> str:
    out, last = [], 0
    for m in _FENCED.finditer(text):
        out.append(transform(text[last : m.start()]))
        out.append(m.group())
        last = m.end()
    out.append(transform(text[last:]))
    return "".join(out)


def _whitespace(part: str) -> str:
    part = _TRAILING.sub("", part)
    part = _BLANK_LINES.sub("\n\n", part)
    lines = part.split("\n")
    for i, line in enumerate(lines):
        if '"' not in line and "'" not in line and "`" not in line:
            lines[i] = _INNER_SPACES.sub(" ", line)
    return "\n".join(lines)


def normalize_whitespace(text: str) -> str:
    """Trailing spaces, inner runs of spaces and extra blank lines removed (not in code)."""
    return _outside_code(text, _whitespace)


def collapse_repeats(text: str) -> str:
    """Back-to-back repeats of a line or block (3 or more) written once, with a count."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        done = False
        for size in range(1, MAX_BLOCK_LINES + 1):
            block = lines[i : i + size]
            if len(block) < size or not any(line.strip() for line in block):
                break
            times = 1
            while lines[i + times * size : i + (times + 1) * size] == block:
                times += 1
            if times >= MIN_REPEATS:
                out.extend(block)
                what = "line" if size == 1 else f"{size} lines"
                out.append(f"[previous {what} repeated {times - 1} more times]")
                i += times * size
                done = True
                break
        if not done:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def lossless(text: str) -> LosslessResult:
    """Every lossless transform; ``transforms`` names those that changed the text.

    JSON documents and blocks are compacted; the prose around them gets the whitespace and
    repeat transforms. ``data_spans`` are where the compacted JSON stands in the result:
    data, to be kept whole by any lossy step that follows.
    """
    with paused_collection():
        pieces = json_blocks(text)
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    applied: set[str] = set()
    position = 0
    for start, end, value in pieces:
        original = text[start:end]
        if value is None:
            new = original
            for name, transform in (
                ("whitespace", normalize_whitespace),
                ("repeats", collapse_repeats),
            ):
                changed = transform(new)
                if changed != new:
                    applied.add(name)
                    new = changed
        else:
            with paused_collection():
                new = encode(value)
            if new != original:
                applied.add("json")
            spans.append((position, position + len(new)))
        out.append(new)
        position += len(new)
    order = tuple(name for name in ("json", "whitespace", "repeats") if name in applied)
    result = "".join(out)
    is_data = (
        len(spans) == 1
        and result[: spans[0][0]].strip() == ""
        and result[spans[0][1] :].strip() == ""
    )
    return LosslessResult(result, order, tuple(spans), is_data)
