"""Word units: the granularity at which text is kept or dropped.

A unit is a word (letters/digits, with inner apostrophes, dots, commas, colons or hyphens, so
``1,234``, ``3.5`` and ``don't`` stay whole) or a single other symbol, together with the
whitespace before it. Concatenating all units gives back the text exactly. Dropping a unit
drops its leading whitespace with it, except line breaks, which are kept so that the line
structure of a reasoning chain survives compression.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_UNIT = re.compile(r"\s*(?:\w+(?:['’.,:\-]\w+)*|[^\w\s])|\s+")


@dataclass(frozen=True)
class Unit:
    """``text[start:content_start]`` is leading whitespace, ``text[content_start:end]`` the word."""

    start: int
    content_start: int
    end: int


def segment(text: str) -> list[Unit]:
    units = []
    for m in _UNIT.finditer(text):
        start, end = m.span()
        content_start = start + len(m.group()) - len(m.group().lstrip())
        units.append(Unit(start, content_start, end))
    return units


def token_costs(units: Sequence[Unit], offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Number of tokens that start inside each unit: ``(num_units,)`` int64.

    A token is charged to the unit holding its first character, so the costs sum to the
    number of tokens.
    """
    starts = [u.start for u in units]
    costs = np.zeros(len(units), dtype=np.int64)
    for tok_start, _ in offsets:
        idx = bisect.bisect_right(starts, tok_start) - 1
        costs[max(idx, 0)] += 1
    return costs


def unit_scores(
    units: Sequence[Unit], offsets: Sequence[tuple[int, int]], scores: Sequence[float]
) -> np.ndarray:
    """Mean score of the tokens overlapping each unit's word: ``(num_units,)`` float64.

    The tokens may come from a different tokenizer than the one the units are charged in;
    offsets are the bridge. A unit that no token overlaps (pure whitespace, or characters a
    tokenizer normalised away) gets the mean of all scores.
    """
    totals = np.zeros(len(units), dtype=np.float64)
    counts = np.zeros(len(units), dtype=np.int64)
    ends = [u.end for u in units]
    for (tok_start, tok_end), score in zip(offsets, scores):
        if tok_end <= tok_start:
            continue
        i = bisect.bisect_right(ends, tok_start)
        while i < len(units) and units[i].content_start < tok_end:
            if units[i].end > tok_start and units[i].content_start < units[i].end:
                totals[i] += score
                counts[i] += 1
            i += 1
    fallback = float(np.mean(scores)) if len(scores) else 0.0
    out = np.full(len(units), fallback, dtype=np.float64)
    has = counts > 0
    out[has] = totals[has] / counts[has]
    return out


def render(text: str, units: Sequence[Unit], keep: Sequence[bool]) -> str:
    """Rebuild the text from the kept units, keeping line breaks of dropped ones.

    Where a dropped unit was the only thing between two kept ones (``48/2`` without ``/``),
    a space stands in for it so the neighbours never fuse into a new word (``482``).
    """
    out: list[str] = []
    dropped_since_kept = False
    for unit, is_kept in zip(units, keep):
        space = text[unit.start : unit.content_start]
        at_line_start = not out or out[-1].endswith("\n")
        if is_kept:
            if at_line_start:
                space = ""
            elif not space and dropped_since_kept:
                space = " "
            piece = space + text[unit.content_start : unit.end]
            if piece:
                out.append(piece)
            dropped_since_kept = False
        else:
            dropped_since_kept = True
            if "\n" in space and not at_line_start:
                out.append("\n")
    return "".join(out)
