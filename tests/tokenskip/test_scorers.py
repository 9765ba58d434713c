import numpy as np
import pytest

from tokenskip.errors import InvalidInputError
from tokenskip.scorers import (
    HeuristicScorer,
    Scorer,
    SelfInfoScorer,
    TokenClassifierScorer,
    build_scorer,
)
from tokenskip.testing import make_causal_lm, make_token_classifier, make_wordpiece_tokenizer
from tokenskip.tokens import TextTokenizer
from tokenskip.units import segment, unit_scores


@pytest.fixture(scope="module")
def wordpiece(solutions):
    return TextTokenizer(make_wordpiece_tokenizer(solutions * 3, vocab_size=300), name="wordpiece")


@pytest.fixture(scope="module")
def classifier(wordpiece):
    return TokenClassifierScorer(make_token_classifier(len(wordpiece.hf)), wordpiece)


def word_scores(scorer, text):
    enc = scorer.tokenizer.encode(text)
    units = segment(text)
    scores = unit_scores(units, enc.offsets, scorer.score(enc.ids))
    return {text[u.content_start : u.end]: s for u, s in zip(units, scores)}


def test_every_scorer_follows_the_protocol(tokenizer, smol, classifier):
    for scorer in (HeuristicScorer(tokenizer), SelfInfoScorer(smol.model, tokenizer), classifier):
        assert isinstance(scorer, Scorer)
        ids = scorer.tokenizer.encode("Tom has 3 apples.").ids
        scores = scorer.score(ids)
        assert scores.shape == (len(ids),) and np.isfinite(scores).all()
        assert scorer.score([]).shape == (0,)


def test_heuristic_ranks_word_classes(tokenizer):
    s = word_scores(
        HeuristicScorer(tokenizer), "So then, basically the farmer Alice paid 48 + x dollars"
    )
    assert s["48"] > s["+"] > s["x"] > s["Alice"] > s["farmer"] > s["the"] > s["basically"]
    assert s["farmer"] > s[","]


def test_heuristic_repeated_punctuation_scores_lowest(tokenizer):
    s = HeuristicScorer(tokenizer).score(tokenizer.encode("wait!!").ids)
    assert s[-1] < s[0]


def test_self_info_is_low_for_predictable_tokens(tokenizer, smol):
    scorer = SelfInfoScorer(smol.model, tokenizer)
    counting = scorer.score(tokenizer.encode("one two three four five six").ids)
    surprise = scorer.score(tokenizer.encode("one two three four five banana").ids)
    assert counting[-1] < surprise[-1]


def test_self_info_sliding_window_matches_full_context_in_first_window(tokenizer, smol, solutions):
    ids = tokenizer.encode(" ".join(solutions[:3])).ids
    assert len(ids) > 100
    full = SelfInfoScorer(smol.model, tokenizer).score(ids)
    windowed = SelfInfoScorer(smol.model, tokenizer, window=48, stride=16).score(ids)
    assert windowed.shape == full.shape
    np.testing.assert_allclose(windowed[:48], full[:48], rtol=1e-4, atol=1e-4)
    assert not np.allclose(windowed, full, atol=1e-3)  # later tokens really saw less context


def test_self_info_handles_text_far_longer_than_the_model_context(tokenizer, solutions):
    lm = make_causal_lm(len(tokenizer.hf), max_positions=64)
    scorer = SelfInfoScorer(lm, tokenizer)
    assert scorer.window <= 63
    ids = tokenizer.encode(" ".join(solutions * 8)).ids[:2000]
    assert len(ids) > 10 * 64
    scores = scorer.score(ids)
    assert scores.shape == (len(ids),) and np.isfinite(scores).all()


def test_self_info_rejects_a_bad_stride(tokenizer, smol):
    with pytest.raises(ValueError, match="stride"):
        SelfInfoScorer(smol.model, tokenizer, window=32, stride=64)


def test_classifier_scores_are_keep_probabilities(classifier, solutions):
    ids = classifier.tokenizer.encode(solutions[0]).ids
    scores = classifier.score(ids)
    assert ((scores > 0) & (scores < 1)).all()


def test_classifier_windows_cover_long_input(wordpiece, solutions):
    scorer = TokenClassifierScorer(
        make_token_classifier(len(wordpiece.hf), max_positions=16), wordpiece
    )
    ids = wordpiece.encode(" ".join(solutions)).ids
    assert len(ids) > 100
    assert scorer.score(ids).shape == (len(ids),)


def test_classifier_rejects_a_missing_keep_label(wordpiece):
    with pytest.raises(ValueError, match="keep_label"):
        TokenClassifierScorer(make_token_classifier(len(wordpiece.hf)), wordpiece, keep_label=5)


def test_classifier_loads_from_a_directory(tmp_path, wordpiece, classifier, solutions):
    classifier.model.save_pretrained(tmp_path)
    wordpiece.hf.save_pretrained(tmp_path)
    loaded = TokenClassifierScorer.from_pretrained(str(tmp_path))
    ids = wordpiece.encode(solutions[1]).ids
    np.testing.assert_allclose(loaded.score(ids), classifier.score(ids), rtol=1e-5)


def test_build_scorer_by_name(tokenizer, smol):
    assert isinstance(build_scorer("heuristic", tokenizer=tokenizer), HeuristicScorer)
    assert isinstance(build_scorer("self-info", tokenizer=tokenizer, lm=smol.model), SelfInfoScorer)
    with pytest.raises(InvalidInputError, match="unknown scorer"):
        build_scorer("magic", tokenizer=tokenizer)
    with pytest.raises(InvalidInputError, match="scorer-model"):
        build_scorer("classifier", tokenizer=tokenizer)


def test_question_aware_scores_lift_what_the_question_asks_about(tokenizer, smol):
    base = SelfInfoScorer(smol.model, tokenizer)
    text = "The museum opens at nine. The garden has roses. The cafe sells lemon cake."
    ids = tokenizer.encode(text).ids
    plain = word_scores_from(base, text)
    aware = word_scores_from(base.conditioned("What does the cafe sell?"), text)
    # the words the question is about rise against the others, relative to plain surprisal
    lift = {w: aware[w] - plain[w] for w in plain}
    asked = np.mean([lift[w] for w in ("cafe", "sells", "lemon", "cake")])
    other = np.mean([lift[w] for w in ("garden", "has", "roses")])
    assert asked > other, lift
    assert base.conditioned("x").score(ids).shape == (len(ids),)
    with pytest.raises(ValueError, match="weight"):
        base.conditioned("x", weight=-1)


def test_conditioned_surprisal_fits_the_window(tokenizer, smol, solutions):
    scorer = SelfInfoScorer(smol.model, tokenizer, window=40)
    ids = tokenizer.encode(" ".join(solutions)).ids
    context = tokenizer.encode("Question: how many pages?").ids
    scores = scorer.score(ids, context=context)
    assert scores.shape == (len(ids),) and np.isfinite(scores).all()


def word_scores_from(scorer, text):
    return word_scores(scorer, text)
