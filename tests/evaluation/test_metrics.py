import pytest

from tokenskip.evaluation.metrics import achieved_ratio, mean, median, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (5, 10), (55, 100), (1, 1)])
def test_wilson_interval_contains_the_estimate_and_stays_in_bounds(k, n):
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(55, 100)
    assert lo == pytest.approx(0.4524, abs=1e-3) and hi == pytest.approx(0.6438, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_means_and_ratio():
    assert mean([1, 2, 3]) == 2 and mean([]) == 0.0
    assert median([3, 1, 2]) == 2 and median([1, 2, 3, 4]) == 2.5
    assert achieved_ratio([50, 70], [100, 140]) == pytest.approx(0.5)
    assert achieved_ratio([1], []) is None
