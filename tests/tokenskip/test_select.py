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


def test_ties_are_spread_over_the_text_not_taken_from_the_front():
    # 100 equal scores, keep 50: the kept units are spread, every tenth has about half
    keep = select_units(*arrays([1] * 100, [0.5] * 100), budget=50)
    assert keep.sum() == 50
    per_tenth = keep.reshape(10, 10).sum(axis=1)
    assert per_tenth.min() >= 3 and per_tenth.max() <= 7, per_tenth


def test_each_group_keeps_its_floor_before_the_global_ranking():
    # group 1's units all score below group 0's; without a floor it would lose everything
    costs, scores, forced = arrays([1] * 20, [0.9] * 10 + [0.1] * 10)
    groups = np.array([0] * 10 + [1] * 10)
    plain = select_units(costs, scores, forced, 10)
    assert plain[10:].sum() == 0
    floored = select_units(costs, scores, forced, 10, groups=groups, floor=0.3)
    assert floored[10:].sum() == 3 and floored.sum() == 10


def test_floor_counts_forced_units():
    costs, scores, _ = arrays([1] * 10, [0.1] * 10)
    forced = np.array([True, True] + [False] * 8)
    keep = select_units(costs, scores, forced, 3, groups=np.zeros(10, int), floor=0.2)
    assert keep.sum() == 3 and keep[:2].all()


def test_bad_floor_is_an_error():
    with pytest.raises(ValueError, match="floor"):
        select_units(*arrays([1], [1.0]), budget=1, floor=1.0)


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


def test_preferred_units_come_right_after_the_forced_ones_before_any_floor():
    costs = np.ones(10, dtype=np.int64)
    scores = np.linspace(1.0, 0.1, 10)
    forced = np.zeros(10, bool)
    forced[0] = True
    preferred = np.zeros(10, bool)
    preferred[[7, 8, 9]] = True
    groups = np.r_[np.zeros(5, int), np.ones(5, int)]
    keep = select_units(costs, scores, forced, 4, groups=groups, floor=0.4, preferred=preferred)
    # the forced unit and the three preferred ones fill the budget; no floor takes it first
    assert np.flatnonzero(keep).tolist() == [0, 7, 8, 9]
    without = select_units(costs, scores, forced, 4, groups=groups, floor=0.4)
    assert not without[[7, 8, 9]].all()
