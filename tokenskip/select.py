"""Which units to keep for a token budget: a pure function on arrays.

Forced units are always kept, then ``preferred`` ones (a guard's scope) while the budget
holds. If ``groups`` (sentence ids) and a ``floor`` are given, each
sentence first keeps its best units up to ``floor`` of its own tokens, so that no sentence is
gutted just because others scored a little higher (a scorer's positional drift: surprisal
falls as context grows). The rest are taken by score, highest first, while they fit the
budget; then, if one more unit brings the total closer to the budget than stopping short,
the best such unit is added.

Ties in score are broken by a low-discrepancy order over positions (the golden-ratio
sequence), not by position: a rule-based scorer gives many words the same score, and
breaking those ties "earliest first" would keep the first sentences whole and cut the last
ones to keywords. The kept set is returned as a mask in original order.
"""

from __future__ import annotations

import numpy as np

GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def spread_order(num_units: int) -> np.ndarray:
    """``(num_units,)`` float in [0, 1): a tie-break key that spreads any prefix evenly."""
    return np.modf(np.arange(num_units, dtype=np.float64) * GOLDEN)[0]


def select_units(
    costs: np.ndarray,
    scores: np.ndarray,
    forced: np.ndarray,
    budget: int,
    *,
    groups: np.ndarray | None = None,
    floor: float = 0.0,
    preferred: np.ndarray | None = None,
) -> np.ndarray:
    """Keep mask ``(num_units,)`` whose total cost is as close to ``budget`` as units allow.

    Args:
        costs: ``(num_units,)`` tokens each unit costs in the target tokenizer.
        scores: ``(num_units,)`` importance; higher is kept first.
        forced: ``(num_units,)`` bool, units kept whatever the budget.
        budget: tokens to keep in total, forced ones included.
        groups: ``(num_units,)`` int sentence id of each unit (non-decreasing), or None.
        floor: share of each group's tokens kept before the global ranking, in [0, 1).
        preferred: ``(num_units,)`` bool, units taken right after the forced ones, best score
            first, while the budget holds: before any group's floor (a guard's scope).
    """
    costs = np.asarray(costs, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    num_units = len(costs)
    if not (len(scores) == len(forced) == num_units):
        raise ValueError("costs, scores and forced must have the same length")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    keep = np.asarray(forced, dtype=bool).copy()
    spread = spread_order(num_units)
    if preferred is not None and num_units:
        pref = np.flatnonzero(np.asarray(preferred, dtype=bool) & ~keep)
        pref = pref[np.lexsort((spread[pref], -scores[pref]))]
        room = budget - int(costs[keep].sum())
        taken = int(np.searchsorted(np.cumsum(costs[pref]), room, side="right"))
        keep[pref[:taken]] = True
    if groups is not None and floor > 0.0 and num_units and int(costs[keep].sum()) < budget:
        keep |= _floors(costs, scores, keep, np.asarray(groups, dtype=np.int64), floor, spread)
    used = int(costs[keep].sum())
    order = np.lexsort((spread, -scores))  # highest score first, ties spread
    free = order[~keep[order]]
    free_costs = costs[free]
    # The prefix that fits, in one step; then smaller units fill what is left.
    cumulative = np.cumsum(free_costs)
    num_prefix = int(np.searchsorted(cumulative, budget - used, side="right"))
    keep[free[:num_prefix]] = True
    used += int(cumulative[num_prefix - 1]) if num_prefix else 0
    rest = free[num_prefix:]
    gap = budget - used
    skipped = []
    if gap > 0:
        for i, cost in zip(rest.tolist(), costs[rest].tolist()):
            if cost <= gap:
                keep[i] = True
                gap -= cost
                if gap == 0:
                    break
            else:
                skipped.append((i, cost))
    else:
        skipped = list(zip(rest[:64].tolist(), costs[rest[:64]].tolist()))
    # One overshooting unit may land closer to the budget than stopping short does.
    best_gap, best = gap, None
    for i, cost in skipped:
        if not keep[i] and abs(cost - gap) < best_gap:
            best_gap, best = abs(cost - gap), i
    if best is not None and gap > 0:
        keep[best] = True
    return keep


def _floors(
    costs: np.ndarray,
    scores: np.ndarray,
    forced: np.ndarray,
    groups: np.ndarray,
    floor: float,
    spread: np.ndarray,
) -> np.ndarray:
    """Units each group keeps first: its best, until ``floor`` of the group's tokens."""
    num_groups = int(groups.max()) + 1
    group_cost = np.bincount(groups, weights=costs, minlength=num_groups)
    forced_cost = np.bincount(groups, weights=costs * forced, minlength=num_groups)
    need = floor * group_cost - forced_cost  # (num_groups,) tokens still to keep per group
    order = np.lexsort((spread, -scores, groups))  # by group, then best first
    order = order[~forced[order]]
    g, c = groups[order], costs[order]
    cumulative = np.cumsum(c)
    group_begin = np.searchsorted(g, np.arange(num_groups), side="left")
    before = cumulative - c  # tokens taken in the order before this unit...
    before -= np.where(group_begin[g] > 0, cumulative[np.maximum(group_begin[g] - 1, 0)], 0)
    take = before < need[g]  # ...within its own group
    mask = np.zeros(len(costs), dtype=bool)
    mask[order[take]] = True
    return mask
