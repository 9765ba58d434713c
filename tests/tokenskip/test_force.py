import pytest

from tokenskip.force import MATH, NONE, ForceKeep
from tokenskip.units import segment

TEXT = "Tom has 12 apples + 3 pears, basically x = 15.\n#### 15"


def forced_words(rules, text=TEXT):
    units = segment(text)
    mask = rules.mask(text, units)
    return [text[u.content_start : u.end] for u, m in zip(units, mask) if m]


def test_math_rules_keep_numbers_operators_and_the_answer_line():
    assert forced_words(MATH) == ["12", "+", "3", "=", "15", "####", "15"]


def test_no_rules_force_nothing():
    assert forced_words(NONE) == []


def test_user_force_tokens():
    kept = forced_words(
        ForceKeep(numbers=False, operators=False, tokens=("basically",), answer_line=False)
    )
    assert kept == ["basically"]


def test_force_tokens_must_be_a_sequence():
    with pytest.raises(ValueError, match="sequence of strings"):
        ForceKeep(tokens="abc")
