import numpy as np
import pytest

from tokenskip.units import render, segment, token_costs, unit_scores

TEXTS = [
    "",
    "   ",
    "Natalia sold 48/2 = 24 clips.\nShe sold 1,234 more, costing $18.00!\n#### 72",
    "Don't stop—it's well-known: 3.5 kg × 2 ≈ 7 kg.\n\n\tNew paragraph…  end  ",
    "naïve café 日本語 emoji 🎉 done",
]


@pytest.mark.parametrize("text", TEXTS)
def test_units_cover_the_text_exactly(text):
    units = segment(text)
    assert "".join(text[u.start : u.end] for u in units) == text
    for a, b in zip(units, units[1:]):
        assert a.end == b.start
    for u in units:
        assert u.start <= u.content_start <= u.end
        assert text[u.start : u.content_start].strip() == ""


@pytest.mark.parametrize("word", ["1,234", "3.5", "don't", "well-known", "10:30", "$"])
def test_numbers_and_inner_punctuation_stay_one_unit(word):
    units = segment(f"It is {word} now")
    assert word in [f"It is {word} now"[u.content_start : u.end] for u in units]


def test_token_costs_sum_to_token_count(tokenizer):
    text = TEXTS[2]
    enc = tokenizer.encode(text)
    costs = token_costs(segment(text), enc.offsets)
    assert costs.sum() == len(enc.ids)
    assert (costs >= 0).all()


def test_unit_scores_average_overlapping_tokens():
    text = "ab cd"
    units = segment(text)  # "ab", " cd"
    offsets = [(0, 1), (1, 2), (3, 5)]
    scores = unit_scores(units, offsets, [1.0, 3.0, 5.0])
    np.testing.assert_allclose(scores, [2.0, 5.0])


def test_unit_scores_from_a_token_spanning_two_units():
    text = "ab cd"
    scores = unit_scores(segment(text), [(0, 5)], [0.7])
    np.testing.assert_allclose(scores, [0.7, 0.7])


def test_render_keeps_line_breaks_of_dropped_words():
    text = "First line here.\nSecond line here.\nThird"
    units = segment(text)
    words = [text[u.content_start : u.end] for u in units]
    keep = [w not in ("Second", "line", "First") for w in words]
    out = render(text, units, keep)
    assert out.split("\n") == ["here.", "here.", "Third"]


def test_render_drops_a_whole_line_without_blank_line():
    text = "one.\ntwo three\nfour"
    units = segment(text)
    keep = [text[u.content_start : u.end] not in ("two", "three") for u in units]
    assert render(text, units, keep) == "one.\nfour"


def test_render_all_kept_is_identity():
    text = TEXTS[3]
    units = segment(text)
    assert render(text, units, [True] * len(units)) == text


def test_render_never_fuses_neighbours_of_a_dropped_symbol():
    text = "sold 48/2 = 24"
    units = segment(text)
    keep = [text[u.content_start : u.end] != "/" for u in units]
    assert render(text, units, keep) == "sold 48 2 = 24"
