"""Which units to keep for a token budget: a pure function on arrays.

Forced units are always kept. The rest are taken by score, highest first (ties go to the
earlier unit), while they fit the budget; then, if one more unit brings the total closer to
the budget than stopping short, the best such unit is added. The kept set is returned as a
mask in original order, so the caller rebuilds text without reordering.
"""

from __future__ import annotations

import numpy as np


def select_units(
    costs: np.ndarray, scores: np.ndarray, forced: np.ndarray, budget: int
) -> np.ndarray:
    """Keep mask ``(num_units,)`` whose total cost is as close to ``budget`` as units allow.

    Args:
        costs: ``(num_units,)`` tokens each unit costs in the target tokenizer.
        scores: ``(num_units,)`` importance; higher is kept first.
        forced: ``(num_units,)`` bool, units kept whatever the budget.
        budget: tokens to keep in total, forced ones included.
    """
    num_units = len(costs)
    if not (len(scores) == len(forced) == num_units):
        raise ValueError("costs, scores and forced must have the same length")
    keep = np.asarray(forced, dtype=bool).copy()
    used = int(costs[keep].sum())
    # Highest score first; np.lexsort sorts by its last key first, index breaks ties.
    order = np.lexsort((np.arange(num_units), -np.asarray(scores, dtype=np.float64)))
    skipped = []
    for i in order:
        if keep[i]:
            continue
        cost = int(costs[i])
        if used + cost <= budget:
            keep[i] = True
            used += cost
        else:
            skipped.append(i)
    # One overshooting unit may land closer to the budget than stopping short does.
    best_gap, best = budget - used, None
    for i in skipped:
        gap = abs(used + int(costs[i]) - budget)
        if gap < best_gap:
            best_gap, best = gap, i
    if best is not None:
        keep[best] = True
    return keep
