"""Compress text to a keep ratio: segment → score → select → render → measure.

``ratio`` (γ) always means kept tokens / original tokens in the *target* tokenizer, counted on
the text as it comes out, not estimated. Selection runs in a short correction loop: after each
render the output is re-tokenized and the budget nudged by the miss, so the achieved ratio
tracks γ as closely as word boundaries allow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tokenskip.cot import split_cot
from tokenskip.errors import InvalidInputError
from tokenskip.force import MATH, ForceKeep
from tokenskip.scorers.base import Scorer
from tokenskip.select import select_units
from tokenskip.tokens import TextTokenizer, as_text_tokenizer
from tokenskip.units import Unit, render, segment, token_costs, unit_scores

MAX_CORRECTIONS = 6


def protected_mask(units: Sequence[Unit], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(num_units,)`` bool: units whose word overlaps any protected span."""
    mask = np.zeros(len(units), dtype=bool)
    for start, end in spans:
        for i, unit in enumerate(units):
            if unit.content_start < end and unit.end > start:
                mask[i] = True
    return mask


@dataclass(frozen=True)
class CompressionResult:
    """What was kept, and how much, in the target tokenizer."""

    text: str
    """The compressed text."""
    original_tokens: int
    """Tokens of the input."""
    kept_tokens: int
    """Tokens of ``text``, re-tokenized."""
    ratio: float
    """The requested keep ratio γ."""
    achieved_ratio: float
    """``kept_tokens / original_tokens`` (1.0 for empty input)."""
    forced_tokens: int = 0
    """Tokens that force-keep rules held regardless of γ (a floor on ``kept_tokens``)."""

    @property
    def forced_ratio(self) -> float:
        """Share of the input that force-keep rules held: the lowest reachable ratio."""
        return self.forced_tokens / self.original_tokens if self.original_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "forced_ratio": self.forced_ratio}


def check_ratio(ratio: Any) -> float:
    """γ as a float in (0, 1], or an InvalidInputError that says what is wrong."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise InvalidInputError(f"ratio must be a number in (0, 1], got {ratio!r}") from None
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise InvalidInputError(f"ratio must be in (0, 1] (kept/original tokens), got {ratio!r}")
    return value


def compress(
    text: str,
    ratio: float,
    *,
    tokenizer: TextTokenizer | Any,
    scorer: Scorer,
    force: ForceKeep = MATH,
    protect: Sequence[tuple[int, int]] = (),
) -> CompressionResult:
    """Keep about ``ratio`` of ``text``'s target tokens, whole words, original order.

    Args:
        text: what to compress.
        ratio: requested keep ratio γ in (0, 1].
        tokenizer: the target model's tokenizer; every count is in it.
        scorer: token importance; its tokenizer may differ from ``tokenizer``.
        force: units kept regardless of score (digits, operators, answer line by default).
        protect: ``[start, end)`` character spans kept verbatim (code, URLs, a question...).
    """
    ratio = check_ratio(ratio)
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
    target = as_text_tokenizer(tokenizer)
    encoding = target.encode(text)
    num_tokens = len(encoding.ids)
    if ratio == 1.0 or not text.strip():
        return CompressionResult(text, num_tokens, num_tokens, ratio, 1.0)

    units = segment(text)
    costs = token_costs(units, encoding.offsets)  # (num_units,)
    scored = scorer.tokenizer.encode(text)
    scores = unit_scores(units, scored.offsets, scorer.score(scored.ids))  # (num_units,)
    forced = force.mask(text, units) | protected_mask(units, protect)  # (num_units,)
    forced_tokens = int(costs[forced].sum())

    goal = round(ratio * num_tokens)
    budget, tried = goal, set()
    best: tuple[int, str] | None = None
    for _ in range(MAX_CORRECTIONS):
        tried.add(budget)
        keep = select_units(costs, scores, forced, budget)
        candidate = render(text, units, keep)
        kept = target.count(candidate)
        if best is None or abs(kept - goal) < abs(best[0] - goal):
            best = (kept, candidate)
        budget = int(np.clip(budget + goal - kept, 0, num_tokens))
        if kept == goal or budget in tried:
            break
    kept, out = best
    return CompressionResult(out, num_tokens, kept, ratio, kept / num_tokens, forced_tokens)


@dataclass(frozen=True)
class CotCompressionResult:
    """A compressed reasoning answer: the reasoning compressed, the final answer verbatim."""

    text: str
    """Compressed reasoning + original separator + original final-answer part."""
    reasoning: CompressionResult
    """The compression of the reasoning alone; its ratios are the ones that matter."""
    answer: str
    """The final-answer part, untouched ("" if none was found)."""

    def to_dict(self) -> dict[str, Any]:
        r = self.reasoning
        return {
            "text": self.text,
            "original_tokens": r.original_tokens,
            "kept_tokens": r.kept_tokens,
            "ratio": r.ratio,
            "achieved_ratio": r.achieved_ratio,
            "forced_tokens": r.forced_tokens,
            "forced_ratio": r.forced_ratio,
            "answer": self.answer,
            "scope": "reasoning",
        }


def compress_cot(
    text: str,
    ratio: float,
    *,
    tokenizer: TextTokenizer | Any,
    scorer: Scorer,
    force: ForceKeep = MATH,
) -> CotCompressionResult:
    """Compress only the reasoning of a CoT answer; the final-answer part stays intact."""
    parts = split_cot(text)
    result = compress(parts.reasoning, ratio, tokenizer=tokenizer, scorer=scorer, force=force)
    return CotCompressionResult(
        text=result.text + parts.separator + parts.answer, reasoning=result, answer=parts.answer
    )
