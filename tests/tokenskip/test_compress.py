import math
import re
from collections import Counter

import numpy as np
import pytest

from tokenskip import MATH, NONE, ForceKeep, InvalidInputError, compress, compress_cot
from tokenskip.guards import NO_GUARDS
from tokenskip.scorers import CachedScorer, HeuristicScorer, SelfInfoScorer, TokenClassifierScorer
from tokenskip.testing import make_token_classifier, make_wordpiece_tokenizer
from tokenskip.tokens import TextTokenizer
from tokenskip.units import segment

GRID = (0.5, 0.6, 0.7, 0.8, 0.9)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@pytest.fixture(scope="module")
def scorers(tokenizer, smol, solutions):
    """The three scorers, cached (this file tests selection, not scoring speed).

    The classifier's WordPiece tokenizer differs from the target's: the mismatch path.
    """
    wordpiece = TextTokenizer(make_wordpiece_tokenizer(solutions * 3, vocab_size=300), "wordpiece")
    return {
        "heuristic": CachedScorer(HeuristicScorer(tokenizer)),
        "self-info": CachedScorer(SelfInfoScorer(smol.model, tokenizer)),
        "classifier": CachedScorer(
            TokenClassifierScorer(make_token_classifier(len(wordpiece.hf)), wordpiece)
        ),
    }


def words(text):
    return [text[u.content_start : u.end] for u in segment(text)]


def is_subsequence(small, big):
    it = iter(big)
    return all(any(w == b for b in it) for w in small)


LENGTHS = {"short": 1, "medium": 4, "long": 12}


@pytest.mark.parametrize("scorer_name", ["heuristic", "self-info", "classifier"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("length", list(LENGTHS))
def test_ratio_is_met_in_the_target_tokenizer(
    scorers, tokenizer, solutions, scorer_name, ratio, length
):
    text = "\n".join(solutions[: LENGTHS[length]])
    result = compress(
        text, ratio, tokenizer=tokenizer, scorer=scorers[scorer_name], force=NONE, guards=NO_GUARDS
    )
    n = tokenizer.count(text)
    assert result.original_tokens == n
    assert result.kept_tokens == tokenizer.count(result.text)  # measured, not estimated
    assert math.isclose(result.achieved_ratio, result.kept_tokens / n)
    assert result.ratio == ratio
    assert abs(result.kept_tokens - round(ratio * n)) <= max(2, 0.02 * n)
    assert is_subsequence(words(result.text), words(text))  # whole words, original order


@pytest.mark.parametrize("scorer_name", ["heuristic", "self-info", "classifier"])
def test_gsm8k_grid_mean_ratio_within_two_points(scorers, tokenizer, solutions, scorer_name):
    scorer = scorers[scorer_name]
    for ratio in GRID:
        free = [
            compress_cot(s, ratio, tokenizer=tokenizer, scorer=scorer, force=NONE, guards=NO_GUARDS)
            for s in solutions
        ]
        mean = np.mean([r.reasoning.achieved_ratio for r in free])
        assert abs(mean - ratio) <= 0.02, (ratio, mean)

        kept = [
            compress_cot(s, ratio, tokenizer=tokenizer, scorer=scorer, force=MATH)
            for s in solutions
        ]
        for original, r in zip(solutions, kept):
            assert not Counter(NUMBER.findall(original)) - Counter(NUMBER.findall(r.text))
            assert r.text.splitlines()[-1] == original.splitlines()[-1]
            assert r.text.splitlines()[-1].startswith("####")
        achieved = np.mean([r.reasoning.achieved_ratio for r in kept])
        floor = np.mean([max(ratio, r.reasoning.forced_ratio) for r in kept])
        assert abs(achieved - floor) <= 0.02, (ratio, achieved, floor)


def test_forced_share_is_reported_as_a_floor(scorers, tokenizer, solutions):
    r = compress_cot(solutions[0], 0.5, tokenizer=tokenizer, scorer=scorers["heuristic"]).reasoning
    # forced tokens are counted in the original's tokenization; the output is re-tokenized,
    # where a word that lost its leading space may take a token less
    assert 0 < r.forced_ratio <= r.achieved_ratio + 2 / r.original_tokens
    assert r.to_dict()["forced_ratio"] == r.forced_ratio


def test_cot_compression_keeps_the_answer_verbatim(scorers, tokenizer, solutions):
    text = solutions[3]
    result = compress_cot(text, 0.5, tokenizer=tokenizer, scorer=scorers["self-info"], force=NONE)
    assert result.answer == text[text.index("####") :]
    assert result.text.endswith(result.answer)
    assert result.reasoning.original_tokens == tokenizer.count(text[: text.index("####")].rstrip())
    assert result.to_dict()["scope"] == "reasoning"


def test_user_force_tokens_survive(scorers, tokenizer):
    text = "The farmer basically sold the basically useless apples at the market."
    rules = ForceKeep(numbers=False, operators=False, tokens=("basically",), answer_line=False)
    result = compress(text, 0.3, tokenizer=tokenizer, scorer=scorers["heuristic"], force=rules)
    assert result.text.count("basically") == 2


def test_compression_is_deterministic(scorers, tokenizer, solutions):
    a = compress(solutions[2], 0.6, tokenizer=tokenizer, scorer=scorers["self-info"])
    b = compress(solutions[2], 0.6, tokenizer=tokenizer, scorer=scorers["self-info"])
    assert a == b


def test_ratio_one_returns_the_text_unchanged(scorers, tokenizer, solutions):
    r = compress(solutions[0], 1.0, tokenizer=tokenizer, scorer=scorers["heuristic"])
    assert r.text == solutions[0] and r.achieved_ratio == 1.0


@pytest.mark.parametrize("text", ["", "   \n  "])
def test_empty_or_blank_text(scorers, tokenizer, text):
    r = compress(text, 0.5, tokenizer=tokenizer, scorer=scorers["heuristic"])
    assert r.text == text and r.achieved_ratio == 1.0 and r.kept_tokens == r.original_tokens


@pytest.mark.parametrize("bad", [0, -0.5, 1.01, float("nan"), float("inf"), "abc", None])
def test_bad_ratios_are_clear_errors(scorers, tokenizer, bad):
    with pytest.raises(InvalidInputError, match=r"ratio must be"):
        compress("Tom has 3 apples.", bad, tokenizer=tokenizer, scorer=scorers["heuristic"])


def test_non_text_input_is_a_clear_error(scorers, tokenizer):
    with pytest.raises(InvalidInputError, match="string"):
        compress(b"bytes", 0.5, tokenizer=tokenizer, scorer=scorers["heuristic"])


def test_a_slow_tokenizer_is_refused():
    class Slow:
        pass

    with pytest.raises(InvalidInputError, match="fast tokenizer"):
        TextTokenizer(Slow())


def test_cached_scorer_scores_once_and_returns_copies(tokenizer):
    cached = CachedScorer(HeuristicScorer(tokenizer), max_entries=2)
    ids = tokenizer.encode("Tom has 3 apples.").ids
    first = cached.score(ids)
    first[:] = -1  # callers cannot corrupt the cache
    again = cached.score(ids)
    assert (again >= 0).all() and (cached.hits, cached.misses) == (1, 1)
    for text in ("a b", "c d", "e f"):
        cached.score(tokenizer.encode(text).ids)
    cached.score(ids)  # evicted by the LRU bound
    assert cached.misses == 5


def test_protected_spans_are_kept_verbatim(scorers, tokenizer):
    text = "Please read https://example.com/a?b=1 and then basically summarise the whole thing."
    start = text.index("https")
    end = text.index(" and")
    result = compress(
        text,
        0.3,
        tokenizer=tokenizer,
        scorer=scorers["heuristic"],
        force=NONE,
        protect=[(start, end)],
    )
    assert "https://example.com/a?b=1" in result.text
