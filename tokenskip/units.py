"""Word units: the granularity at which text is kept or dropped.

A unit is a word (letters/digits, with inner apostrophes, dots, commas, colons or hyphens, so
``1,234``, ``3.5`` and ``don't`` stay whole), a run of one repeated symbol (``####``, ``---``,
``...``: a marker is kept or dropped whole, never shortened into another marker), or a
single other symbol, together with the whitespace before it. Concatenating all units gives
back the text exactly. Dropping a unit drops its leading whitespace with it, except line
breaks, which are kept so that the line structure of a text survives compression.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_UNIT = re.compile(r"\s*(?:\w+(?:['’.,:\-]\w+)*|([^\w\s])\1*)|\s+")
_SENTENCE_END = frozenset(".!?;")
"""Symbols that end a statement; ``:`` and ``,`` only separate its parts."""
CLAUSE_PUNCTUATION = frozenset(".!?;:,")
"""Punctuation that separates statements or their clauses (kept while the ratio allows)."""


@dataclass(frozen=True)
class Unit:
    """``text[start:content_start]`` is leading whitespace, ``text[content_start:end]`` the word."""

    start: int
    content_start: int
    end: int


class Units(Sequence[Unit]):
    """The units of one text as three ``(num_units,)`` int64 arrays (and as a sequence)."""

    def __init__(self, start: np.ndarray, content_start: np.ndarray, end: np.ndarray):
        self.start, self.content_start, self.end = start, content_start, end
        self._words: tuple[str, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return Unit(int(self.start[i]), int(self.content_start[i]), int(self.end[i]))

    def __iter__(self) -> Iterator[Unit]:
        for s, c, e in zip(self.start.tolist(), self.content_start.tolist(), self.end.tolist()):
            yield Unit(s, c, e)

    def words(self, text: str) -> list[str]:
        """Each unit's word (its text without the leading whitespace); read once per text
        (several steps of one compression ask for them)."""
        if self._words is None or self._words[0] is not text:
            words = [text[c:e] for c, e in zip(self.content_start.tolist(), self.end.tolist())]
            self._words = (text, words)
        return self._words[1]


def as_units(units: Units | Sequence[Unit]) -> Units:
    if isinstance(units, Units):
        return units
    return Units(
        np.array([u.start for u in units], dtype=np.int64),
        np.array([u.content_start for u in units], dtype=np.int64),
        np.array([u.end for u in units], dtype=np.int64),
    )


_SPACES = np.array(
    [
        9,
        10,
        11,
        12,
        13,
        28,
        29,
        30,
        31,
        32,
        0x85,
        0xA0,
        0x1680,
        *range(0x2000, 0x200B),
        0x2028,
        0x2029,
        0x202F,
        0x205F,
        0x3000,
    ],
    dtype=np.uint32,
)
"""The code points ``str.isspace`` and the regex ``\s`` treat as whitespace."""


def segment(text: str) -> Units:
    """The units of ``text``, in order; they tile it exactly."""
    bounds = [m.span() for m in _UNIT.finditer(text)]
    if not bounds:
        empty = np.zeros(0, dtype=np.int64)
        return Units(empty, empty.copy(), empty.copy())
    spans = np.array(bounds, dtype=np.int64)  # (num_units, 2)
    start, end = spans[:, 0].copy(), spans[:, 1].copy()
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (num_chars,)
    solid = np.flatnonzero(~np.isin(codes, _SPACES))  # positions of non-space characters
    # a unit's word starts at its first non-space character (or at its end if it has none)
    first = solid[np.minimum(np.searchsorted(solid, start), len(solid) - 1)] if len(solid) else end
    content = np.where((first >= start) & (first < end), first, end)
    return Units(start, content, end)


def _token_starts(offsets: Any) -> np.ndarray:
    starts = getattr(offsets, "starts", None)
    if starts is not None:
        return starts
    return np.asarray([o[0] for o in offsets], dtype=np.int64)


def token_costs(units: Units | Sequence[Unit], offsets: Any) -> np.ndarray:
    """Number of tokens that start inside each unit: ``(num_units,)`` int64.

    A token is charged to the unit holding its first character, so the costs sum to the
    number of tokens. ``offsets`` is an :class:`~tokenskip.tokens.Encoding` or a list of
    ``(start, end)`` pairs.
    """
    units = as_units(units)
    tok_starts = _token_starts(offsets)
    idx = np.searchsorted(units.start, tok_starts, side="right") - 1
    return np.bincount(np.maximum(idx, 0), minlength=len(units)).astype(np.int64)[: len(units)]


def unit_scores(units: Units | Sequence[Unit], offsets: Any, scores: Sequence[float]) -> np.ndarray:
    """Mean score of the tokens overlapping each unit's word: ``(num_units,)`` float64.

    The tokens may come from a different tokenizer than the one the units are charged in;
    offsets are the bridge. A unit that no token overlaps (pure whitespace, or characters a
    tokenizer normalised away) gets the mean of all scores.
    """
    units = as_units(units)
    scores = np.asarray(scores, dtype=np.float64)
    if hasattr(offsets, "starts"):
        tok_start, tok_end = offsets.starts, offsets.ends
    else:
        pairs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        tok_start, tok_end = pairs[:, 0], pairs[:, 1]
    num_units = len(units)
    fallback = float(scores.mean()) if len(scores) else 0.0
    out = np.full(num_units, fallback, dtype=np.float64)
    if num_units == 0 or len(scores) == 0:
        return out
    valid = tok_end > tok_start
    tok_start, tok_end, scores = tok_start[valid], tok_end[valid], scores[valid]
    # A token overlaps units first..last: those whose word [content_start, end) meets it.
    first = np.searchsorted(units.end, tok_start, side="right")
    last = np.searchsorted(units.content_start, tok_end, side="left") - 1
    span = np.maximum(last - first + 1, 0)
    if span.size == 0:
        return out
    # (num_pairs,) token index and unit index of every overlapping (token, unit) pair
    tok_idx = np.repeat(np.arange(len(scores)), span)
    offset = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
    unit_idx = first[tok_idx] + offset
    word_nonempty = units.content_start[unit_idx] < units.end[unit_idx]
    tok_idx, unit_idx = tok_idx[word_nonempty], unit_idx[word_nonempty]
    totals = np.bincount(unit_idx, weights=scores[tok_idx], minlength=num_units)
    counts = np.bincount(unit_idx, minlength=num_units)
    has = counts > 0
    out[has] = totals[has] / counts[has]
    return out


def span_mask(units: Units | Sequence[Unit], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(num_units,)`` bool: units whose word overlaps any ``[start, end)`` span."""
    units = as_units(units)
    mask = np.zeros(len(units), dtype=bool)
    if not spans or not len(units):
        return mask
    pairs = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    pairs = pairs[pairs[:, 1] > pairs[:, 0]]
    # first unit whose word ends after the span starts .. last unit whose word starts before
    first = np.searchsorted(units.end, pairs[:, 0], side="right")
    last = np.searchsorted(units.content_start, pairs[:, 1], side="left")
    delta = np.zeros(len(units) + 1, dtype=np.int64)
    ok = last > first
    np.add.at(delta, first[ok], 1)
    np.add.at(delta, last[ok], -1)
    return np.cumsum(delta[:-1]) > 0


def sentence_ids(text: str, units: Units | Sequence[Unit]) -> np.ndarray:
    """``(num_units,)`` int64: which sentence (or line) each unit belongs to, from 0."""
    units = as_units(units)
    words = units.words(text)
    ends = np.fromiter(
        (bool(w) and w[-1] in _SENTENCE_END for w in words), dtype=bool, count=len(words)
    )
    breaks = np.fromiter(
        ("\n" in text[s:c] for s, c in zip(units.start.tolist(), units.content_start.tolist())),
        dtype=bool,
        count=len(words),
    )
    # a unit starts a new sentence after a sentence end or at a line break
    starts = breaks.copy()
    starts[1:] |= ends[:-1]
    return np.cumsum(starts) - (1 if len(starts) and starts[0] else 0)


def clause_punctuation(text: str, units: Units | Sequence[Unit]) -> np.ndarray:
    """``(num_units,)`` bool: units that are clause punctuation (``. , ; : ! ?``)."""
    units = as_units(units)
    return np.fromiter(
        (w in CLAUSE_PUNCTUATION for w in units.words(text)), dtype=bool, count=len(units)
    )


def render(text: str, units: Units | Sequence[Unit], keep: Sequence[bool]) -> str:
    """Rebuild the text from the kept units, keeping line breaks of dropped ones.

    Where a dropped unit was the only thing between two kept ones (``48/2`` without ``/``),
    a space stands in for it so the neighbours never fuse into a new word (``482``).
    """
    units = as_units(units)
    out: list[str] = []
    append = out.append
    dropped_since_kept = False
    at_line_start = True
    for start, content, end, is_kept in zip(
        units.start.tolist(), units.content_start.tolist(), units.end.tolist(), list(keep)
    ):
        if is_kept:
            if at_line_start:
                piece = text[content:end]
            elif content == start and dropped_since_kept:
                piece = " " + text[content:end]
            else:
                piece = text[start:end]
            if piece:
                append(piece)
                at_line_start = piece[-1] == "\n"
            dropped_since_kept = False
        else:
            dropped_since_kept = True
            if not at_line_start and content > start and "\n" in text[start:content]:
                append("\n")
                at_line_start = True
    return "".join(out)
