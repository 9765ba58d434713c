"""The distilled token classifier: labels, a tiny training run, and loading it as a scorer."""

import json

import numpy as np
import pytest

from tokenskip.errors import InvalidInputError
from tokenskip.scorers import TokenClassifierScorer
from tokenskip.trainers.token_classifier import (
    ClassifierConfig,
    prose_chunks,
    read_corpus,
    train_classifier,
    word_labels,
)

CORPUS = [
    {"source": "test", "text": t}
    for t in (
        "The tenant must not sublet the flat unless the landlord agrees in writing. The rent "
        "is due on the first day of each month and late payments cost a fee of 25 euros.",
        "Our museum opens at nine and closes at five. Tickets bought online cannot be "
        "refunded. Children under 12 enter for free on Sundays.",
        "The pump runs quietly. Do not run it dry for more than 30 seconds, or the seal may "
        "crack. Clean the filter every week.",
        "Meeting notes: we agreed to ship on Friday. We did not decide on pricing yet. Ana "
        "will draft the release notes by Thursday noon.",
    )
    * 3
]


def test_guarded_words_are_always_labeled_keep():
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.05])
    guarded = np.array([True, False, False, False, False])
    labels = word_labels("", scores, guarded, 0.5)
    assert labels.tolist() == [1, 1, 0, 1, 0]


def test_long_paragraphs_are_cut_into_chunks():
    text = "One sentence here. " * 400
    chunks = list(prose_chunks(text, max_words=100))
    assert len(chunks) >= 7 and all(len(c.split()) <= 100 for c in chunks)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"label_ratio": 1.0}, "label_ratio"),
        ({"hidden": 30, "heads": 4}, "multiple"),
        ({"teacher_dtype": "int8"}, "teacher_dtype"),
    ],
)
def test_bad_settings_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ClassifierConfig(**kwargs)


def test_a_bad_corpus_line_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n[1, 2]\n')
    with pytest.raises(InvalidInputError, match="c.jsonl:2"):
        read_corpus(path)


def test_a_tiny_run_saves_a_classifier_that_loads_as_a_scorer(tmp_path, tokenizer):
    config = ClassifierConfig(teacher="smollm2", num_texts=12, epochs=2, batch_size=4, window=64)
    meta = train_classifier(tmp_path / "clf", config, corpus=CORPUS, progress=False)
    assert meta["num_texts"] == 12 and meta["training"]["steps"] > 0
    curve = meta["training"]["curve"]
    assert curve and np.isfinite(curve[-1]["loss"])
    saved = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert saved["config"]["teacher"] == "smollm2"
    scorer = TokenClassifierScorer.from_pretrained(str(tmp_path / "clf"))
    ids = tokenizer.encode("Do not share the code.").ids
    scores = scorer.score(ids)
    assert scores.shape == (len(ids),) and ((scores >= 0) & (scores <= 1)).all()
    # a second run with the same settings reuses the cached labels
    again = train_classifier(tmp_path / "clf", config, corpus=CORPUS, progress=False)
    assert again["num_texts"] == 12
