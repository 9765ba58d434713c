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
from tokenskip.guards import COT_GUARDS, GUARDS, Guards
from tokenskip.relevance import (
    SelectionResult,
    document_spans,
    markup_spans,
    replace_spans,
    select,
)
from tokenskip.scorers.base import Scorer
from tokenskip.select import select_units
from tokenskip.tokens import TextTokenizer, as_text_tokenizer
from tokenskip.units import (
    Unit,
    Units,
    clause_punctuation,
    render,
    segment,
    sentence_ids,
    span_mask,
    token_costs,
    unit_scores,
)

MAX_CORRECTIONS = 4
RATIO_TOLERANCE = 0.005
"""A render within this share of the original's tokens from the goal needs no correction."""
SENTENCE_FLOOR = 0.5
"""Each sentence keeps at least this share of γ of its own tokens (see :func:`select_units`)."""


def protected_mask(units: Sequence[Unit], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(num_units,)`` bool: units whose word overlaps any protected span."""
    return span_mask(units, spans)


def structural_scores(text: str, units: Units, scores: np.ndarray) -> np.ndarray:
    """Scores with clause punctuation lifted: sentence ends above every word, commas and
    colons above most, so a compressed text keeps its statements apart."""
    out = scores.copy()
    if not len(out):
        return out
    punct = clause_punctuation(text, units)
    if not punct.any():
        return out
    words = units.words(text)
    top, high = float(out.max()), float(np.quantile(out, 0.9))
    for i in np.flatnonzero(punct).tolist():
        out[i] = top + 1.0 if words[i] in ".!?;" else max(out[i], high)
    return out


SCOPE_LIFT = 0.5
"""A guard's scope sits this far above the best ordinary word (below sentence ends)."""
SCOPE_STEP = 0.01
"""Each unit of distance from the nearest guarded unit lowers a scope word by this much."""
MAX_SCOPE_DISTANCE = 40


def guard_priority(scores: np.ndarray, forced: np.ndarray, scope: np.ndarray) -> np.ndarray:
    """Scores with the words of a guard's scope (the rest of a cue's clause) above every
    other word, the nearest to a guarded unit first, ties by their own score.

    A guard keeps the words that carry a constraint ("must not disclose") whatever γ asks;
    the words around it ("another employee's salary") come next, as far as γ allows, so the
    ratio stays the user's and a constraint loses its far end before any of its core.
    """
    out = np.asarray(scores, dtype=np.float64).copy()
    idx = np.flatnonzero(scope & ~forced)  # (num_scope,)
    anchors = np.flatnonzero(forced)
    if not len(idx) or not len(anchors):
        return out
    pos = np.searchsorted(anchors, idx)
    left = anchors[np.maximum(pos - 1, 0)]
    right = anchors[np.minimum(pos, len(anchors) - 1)]
    dist = np.minimum(np.abs(idx - left), np.abs(right - idx))
    dist = np.minimum(dist, MAX_SCOPE_DISTANCE)
    low, top = float(out.min()), float(out.max())
    own = (out[idx] - low) / (top - low) if top > low else np.zeros(len(idx))
    out[idx] = top + SCOPE_LIFT - SCOPE_STEP * dist + SCOPE_STEP * 0.9 * own
    return out


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
    """Tokens that force-keep rules and meaning guards held regardless of γ (a floor on
    ``kept_tokens``)."""
    lossless_tokens: int | None = None
    """Tokens after the lossless transforms, before any word was dropped (None: none ran)."""
    transforms: tuple[str, ...] = ()
    """The lossless transforms that changed the text, in the order they ran."""

    @property
    def forced_ratio(self) -> float:
        """Share of the input that force-keep rules held: the lowest reachable ratio."""
        return self.forced_tokens / self.original_tokens if self.original_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "transforms": list(self.transforms),
            "forced_ratio": self.forced_ratio,
        }


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
    guards: Guards = GUARDS,
    protect: Sequence[tuple[int, int]] = (),
    prefer: Sequence[tuple[int, int]] = (),
    lossless: bool = True,
) -> CompressionResult:
    """Keep about ``ratio`` of ``text``'s target tokens, whole words, original order.

    Lossless transforms run first (``lossless``: whitespace, JSON minified or as a table,
    repeated lines counted); words are dropped only if the text is still over ``ratio``.
    Meaning guards, force-keep rules and ``protect`` spans hold their units whatever γ asks:
    the achieved ratio is then about max(γ, ``forced_ratio``), never a silently cut guard.

    Args:
        text: what to compress.
        ratio: requested keep ratio γ in (0, 1]; 1.0 returns the text unchanged.
        tokenizer: the target model's tokenizer; every count is in it.
        scorer: token importance; its tokenizer may differ from ``tokenizer``.
        force: units kept regardless of score (digits, operators, answer line by default).
        guards: meaning guards (negations, limits, conditions, ...); ``NO_GUARDS`` for none.
        protect: ``[start, end)`` character spans kept verbatim (code, URLs, a question...).
        prefer: ``[start, end)`` spans kept before other words while γ allows, like a
            guard's scope (the sentences a request is about, :mod:`tokenskip.relevance`).
        lossless: run the lossless transforms first.
    """
    ratio = check_ratio(ratio)
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a string, got {type(text).__name__}")
    target = as_text_tokenizer(tokenizer)
    if ratio == 1.0 or not text.strip():
        num_tokens = target.count(text)
        return CompressionResult(text, num_tokens, num_tokens, ratio, 1.0)
    num_tokens = target.count(text)
    goal = round(ratio * num_tokens)
    lossless_tokens, transforms = None, ()
    protect = list(protect)
    if lossless and not protect:
        from tokenskip.lossless import lossless as run_lossless

        done = run_lossless(text)
        if done.transforms or done.is_data:
            lossless_tokens = target.count(done.text) if done.transforms else num_tokens
            if lossless_tokens <= goal or done.is_data:
                # reached losslessly, or the text is data (JSON): words are never dropped from
                # data, where a lost key or value is a wrong record, not a shorter sentence
                kept = min(lossless_tokens, num_tokens)
                changed = lossless_tokens < num_tokens
                return CompressionResult(
                    done.text if changed else text,
                    num_tokens,
                    kept,
                    ratio,
                    kept / num_tokens,
                    kept if done.is_data else 0,
                    lossless_tokens,
                    done.transforms if changed else (),
                )
            if lossless_tokens < num_tokens:
                text = done.text
                protect = list(done.data_spans)
            else:
                lossless_tokens, transforms = None, ()
            transforms = done.transforms if lossless_tokens is not None else ()
    encoding = target.encode(text)
    units = segment(text)
    costs = token_costs(units, encoding)  # (num_units,)
    scored = encoding if scorer.tokenizer is target else scorer.tokenizer.encode(text)
    scores = unit_scores(units, scored, scorer.score(scored.ids))  # (num_units,)
    guarded, scopes = guards.spans_and_scopes(text)
    forced = force.mask(text, units) | span_mask(units, protect + guarded)  # (num_units,)
    scope = span_mask(units, [*scopes, *prefer])  # (num_units,)
    scores = structural_scores(text, units, guard_priority(scores, forced, scope))
    if int(costs[forced].sum()) >= goal:
        # γ is out of reach whatever else goes; dropping the punctuation that separates the
        # statements would only blur them, so it stays with the guarded words
        forced |= clause_punctuation(text, units)
    forced_tokens = int(costs[forced].sum())
    groups = sentence_ids(text, units)
    budget, tried = goal, set()
    tolerance = int(num_tokens * RATIO_TOLERANCE)
    best: tuple[int, str] | None = None
    for _ in range(MAX_CORRECTIONS):
        tried.add(budget)
        keep = select_units(
            costs,
            scores,
            forced,
            budget,
            groups=groups,
            floor=SENTENCE_FLOOR * ratio,
            preferred=scope,
        )
        candidate = render(text, units, keep)
        kept = target.count(candidate)
        if best is None or abs(kept - goal) < abs(best[0] - goal):
            best = (kept, candidate)
        budget = int(np.clip(budget + goal - kept, 0, len(encoding.ids)))
        if abs(kept - goal) <= tolerance or budget in tried or forced_tokens >= goal:
            break
    kept, out = best
    return CompressionResult(
        out, num_tokens, kept, ratio, kept / num_tokens, forced_tokens, lossless_tokens, transforms
    )


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
    guards: Guards = COT_GUARDS,
    lossless: bool = False,
) -> CotCompressionResult:
    """Compress only the reasoning of a CoT answer; the final-answer part stays intact.

    Lossless transforms are off by default here: a chain of thought is prose whose line
    layout a tuned model learns, and it holds no JSON to minify.
    """
    parts = split_cot(text)
    result = compress(
        parts.reasoning,
        ratio,
        tokenizer=tokenizer,
        scorer=scorer,
        force=force,
        guards=guards,
        lossless=lossless,
    )
    return CotCompressionResult(
        text=result.text + parts.separator + parts.answer, reasoning=result, answer=parts.answer
    )


@dataclass(frozen=True)
class ContextCompressionResult:
    """A text of documents compressed for a request, coarse to fine."""

    result: CompressionResult
    """The whole text: its ratios count the request and markup too, which stay verbatim."""
    selection: SelectionResult
    """What happened to each document (kept, shortened, dropped) and the mode."""

    @property
    def text(self) -> str:
        return self.result.text

    def to_dict(self) -> dict[str, Any]:
        s = self.selection
        return {
            **self.result.to_dict(),
            "relevance": {
                "mode": s.mode,
                "question_aware": s.mode == "ranked",
                "documents": [
                    {
                        "index": p.index,
                        "tokens": p.tokens,
                        "score": round(p.score, 4),
                        "ratio": p.ratio,
                        "pinned": p.pinned,
                    }
                    for p in s.plans
                ],
                "num_dropped": s.num_dropped,
            },
        }


def compress_context(
    text: str,
    ratio: float,
    request: str | None,
    *,
    tokenizer: TextTokenizer | Any,
    scorer: Scorer,
    force: ForceKeep = MATH,
    guards: Guards = GUARDS,
) -> ContextCompressionResult:
    """Compress the documents of ``text`` for ``request`` (:mod:`tokenskip.relevance`):
    the relevant ones kept whole while γ × their tokens allows, the next shortened (its
    sentences about the request first), the rest dropped with a marker; everything outside
    the documents (markup, the request itself) verbatim. Without a request, or for one
    that needs every document, each document is compressed at γ."""
    ratio = check_ratio(ratio)
    target = as_text_tokenizer(tokenizer)
    spans = document_spans(text)

    def shorten(doc: str, r: float, prefer: list[tuple[int, int]]) -> str:
        return compress(
            doc,
            r,
            tokenizer=target,
            scorer=scorer,
            force=force,
            guards=guards,
            protect=markup_spans(doc),
            prefer=prefer,
        ).text

    num_tokens = target.count(text)
    selection = select(
        [text[a:b] for a, b, _ in spans],
        request,
        ratio,
        count=target.count,
        shorten=shorten,
        labels=[label for *_, label in spans],
        total=num_tokens,
    )
    out = replace_spans(text, [(a, b) for a, b, _ in spans], selection.texts)
    kept = target.count(out) if out != text else num_tokens
    return ContextCompressionResult(
        CompressionResult(out, num_tokens, kept, ratio, kept / num_tokens if num_tokens else 1.0),
        selection,
    )
