import numpy as np
import pytest

from tokenskip.select import select_units


def arrays(costs, scores, forced=None):
    n = len(costs)
    forced = np.zeros(n, bool) if forced is None else np.array(forced, bool)
    return np.array(costs), np.array(scores, float), forced


def test_highest_scores_fill_the_budget():
    keep = select_units(*arrays([1, 1, 1, 1], [0.1, 0.9, 0.5, 0.7]), budget=2)
    assert keep.tolist() == [False, True, False, True]


def test_ties_go_to_the_earlier_unit():
    keep = select_units(*arrays([1, 1, 1], [0.5, 0.5, 0.5]), budget=2)
    assert keep.tolist() == [True, True, False]


def test_forced_units_are_kept_even_over_budget():
    keep = select_units(*arrays([3, 1, 1], [0.0, 1.0, 1.0], [True, False, False]), budget=2)
    assert keep.tolist() == [True, False, False]


def test_smaller_units_fill_the_gap_after_a_big_one_misses():
    # the best unit costs 5 and does not fit in 3; the rest fill exactly
    keep = select_units(*arrays([5, 1, 2], [0.9, 0.5, 0.4]), budget=3)
    assert keep.tolist() == [False, True, True]


def test_one_overshooting_unit_is_added_when_it_lands_closer():
    keep = select_units(*arrays([1, 3], [0.9, 0.5]), budget=3)
    # 1 alone misses by 2; 1 + 3 overshoots by 1, which is closer
    assert keep.tolist() == [True, True]


@pytest.mark.parametrize("budget", [0, 7, 13, 25, 40])
def test_total_is_as_close_to_budget_as_units_allow(budget):
    rng = np.random.default_rng(budget)
    costs = rng.integers(1, 4, size=20)
    keep = select_units(costs, rng.random(20), np.zeros(20, bool), budget)
    assert abs(int(costs[keep].sum()) - min(budget, costs.sum())) <= 1


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        select_units(np.ones(3, int), np.ones(2), np.zeros(3, bool), 1)
