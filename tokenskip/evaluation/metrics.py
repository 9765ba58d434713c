"""Aggregate measures: accuracy with a Wilson 95% interval, token means, achieved ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (well-behaved at 0, 1 and small n)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def median(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def achieved_ratio(cot_tokens: Sequence[int], reference_cot_tokens: Sequence[int]) -> float | None:
    """Mean CoT tokens at γ over mean CoT tokens of the method's γ = 1.0 run (None if empty)."""
    ref = mean(reference_cot_tokens)
    return mean(cot_tokens) / ref if ref else None
