"""Question-aware, coarse-to-fine context selection: documents ranked against the request,
the relevant kept, the rest dropped with a marker; all-context requests spread the budget."""

import pytest

from tokenskip import compress_context
from tokenskip.relevance import (
    bm25,
    document_spans,
    marker,
    needs_all,
    plan,
    relevant_sentences,
    terms,
)
from tokenskip.scorers import HeuristicScorer

TOPICS = {
    "returns": (
        "Returns policy",
        "Items bought online can be returned within 30 days of delivery for a full refund. "
        "Damaged items must be reported within 48 hours of delivery, with a photo of the "
        "damage, and are refunded without a restocking fee. Opened software is not refunded.",
    ),
    "parking": (
        "Staff parking",
        "The staff car park on Mill Lane opens at six in the morning and closes at ten at "
        "night. Each employee may register one vehicle, and visitors park on the street. "
        "Electric vehicles charge in the bays beside the loading dock.",
    ),
    "canteen": (
        "Canteen menu",
        "The canteen serves a hot breakfast until half past nine, soup and sandwiches at "
        "lunch, and a vegetarian dish every day. Friday is fish day, and the coffee machine "
        "on the second floor takes contactless cards as well as coins.",
    ),
    "security": (
        "Building security",
        "Badges are checked at the main entrance, and the side doors are alarmed after "
        "seven in the evening. Lost badges are replaced by the facilities desk on the "
        "ground floor, and tailgating through the turnstiles is reported to the manager.",
    ),
    "travel": (
        "Travel booking",
        "Business trips are booked through the travel portal at least two weeks ahead. "
        "Economy class is the norm for flights shorter than six hours, and hotel rooms are "
        "booked at the negotiated rate with the partner chains in each city we visit.",
    ),
    "training": (
        "Training budget",
        "Every employee has an annual training budget for courses, books and conferences. "
        "Requests go to the line manager, who approves them in the learning system, and "
        "unused budget does not roll over into the following year under any circumstances.",
    ),
}


def retrieval_prompt(question: str, order=tuple(TOPICS), size: int = 1) -> str:
    """Six documents in markup, then the question; ``size`` repeats each body (retrieved
    passages run to a few hundred tokens, so the markup and the markers weigh less)."""
    docs = "\n".join(
        f'<document index="{i + 1}">\n<source>{TOPICS[k][0]}</source>\n'
        + " ".join([TOPICS[k][1]] * size)
        + "\n</document>"
        for i, k in enumerate(order)
    )
    return f"<documents>\n{docs}\n</documents>\n\n{question}"


@pytest.fixture(scope="module")
def scorer(tokenizer):
    return HeuristicScorer(tokenizer)


def test_terms_drop_stopwords_and_stem():
    assert terms("What is the refund window for damaged items?") == [
        "refund",
        "window",
        "damag",
        "item",
    ]


def test_bm25_ranks_the_document_about_the_request_first():
    docs = [terms(body) for _, body in TOPICS.values()]
    scores = bm25(terms("How fast must damaged items be reported for a refund?"), docs)
    assert scores.argmax() == list(TOPICS).index("returns")
    assert scores[list(TOPICS).index("canteen")] == 0.0


def test_document_spans_read_markup_labels_or_paragraphs():
    text = retrieval_prompt("Question?")
    spans = document_spans(text)
    assert len(spans) == 6
    assert spans[0][2] == 'index 1, "Returns policy"'
    assert "30 days" in text[spans[0][0] : spans[0][1]]
    plain = "First paragraph here.\n\nSecond one.\n\n\nThird."
    assert [plain[a:b] for a, b, _ in document_spans(plain)] == [
        "First paragraph here.",
        "Second one.",
        "Third.",
    ]


@pytest.mark.parametrize("position", [0, 3, 5])
def test_relevant_document_survives_at_low_ratio_while_irrelevant_ones_go(
    tokenizer, scorer, position
):
    order = [k for k in TOPICS if k != "returns"]
    order.insert(position, "returns")
    question = "How long do I have to report damaged items, and is there a restocking fee?"
    text = retrieval_prompt(question, tuple(order), size=3)
    done = compress_context(text, 0.3, question, tokenizer=tokenizer, scorer=scorer)
    out = done.text
    assert "Damaged items must be reported within 48 hours of delivery" in out
    assert "restocking fee" in out
    for gone in ("Mill Lane", "fish day", "tailgating", "travel portal", "roll over"):
        assert gone not in out
    # each dropped document leaves its label, so nothing is silently missing
    assert out.count("[omitted, not relevant to the request:") == 5
    assert '"Canteen menu"' in out and f"index {order.index('canteen') + 1}" in out
    assert out.endswith(question)  # the request itself is never touched
    assert done.selection.mode == "ranked" and done.selection.num_dropped == 5
    # γ covers the whole text: the markup, markers and request are paid from it
    assert done.result.achieved_ratio == pytest.approx(0.3, abs=0.05)
    # at γ = 0.2 the relevant document survives, shortened, and the others still go
    low = compress_context(text, 0.2, question, tokenizer=tokenizer, scorer=scorer)
    assert "48 hours" in low.text and "restocking fee" in low.text
    assert low.selection.num_dropped == 5 and "fish day" not in low.text


def test_a_request_that_needs_every_document_spreads_the_budget(tokenizer, scorer):
    question = "Summarize each document in one sentence."
    assert needs_all(question)
    text = retrieval_prompt(question)
    done = compress_context(text, 0.5, question, tokenizer=tokenizer, scorer=scorer)
    assert done.selection.mode == "spread" and done.selection.num_dropped == 0
    assert "[omitted" not in done.text
    for title, _ in TOPICS.values():
        assert title in done.text
    assert done.result.achieved_ratio < 0.8


def test_without_a_request_nothing_is_dropped_and_the_result_says_so(tokenizer, scorer):
    text = retrieval_prompt("")
    done = compress_context(text, 0.5, None, tokenizer=tokenizer, scorer=scorer)
    assert done.selection.mode == "spread-no-request"
    assert done.to_dict()["relevance"]["question_aware"] is False
    assert "[omitted" not in done.text


def test_a_document_that_names_what_the_request_names_is_never_dropped():
    docs = [
        "Error AUTH_001 means the token expired; refresh it and retry once.",
        "The weather in the valley is mild in spring and wet in autumn, with fog.",
        "The weather station logs temperature, wind and the valley fog every hour.",
    ]
    question = "What does AUTH_001 say about the weather station?"
    plans, mode = plan(docs, question, 0.2, [20, 20, 20])
    assert mode == "ranked"
    assert plans[0].pinned and plans[0].ratio is not None


def test_selection_is_deterministic_so_it_stays_cache_safe(tokenizer, scorer):
    question = "Which hotel rate applies to business trips?"
    text = retrieval_prompt(question, size=3)
    first = compress_context(text, 0.3, question, tokenizer=tokenizer, scorer=scorer).text
    again = compress_context(text, 0.3, question, tokenizer=tokenizer, scorer=scorer).text
    assert first == again and "negotiated rate" in first


def test_relevant_sentences_and_marker():
    text = "Cats sleep a lot. Refunds take five days. Dogs bark."
    spans = relevant_sentences(text, "How many days do refunds take?")
    assert [text[a:b].strip() for a, b in spans] == ["Refunds take five days."]
    assert marker("Quarterly report for the northern region and all of its many sales offices")
    assert (
        marker("x", 'index 2, "Title"')
        == '[omitted, not relevant to the request: index 2, "Title"]'
    )


def test_exemplars_are_chosen_whole_by_relevance_within_the_budget():
    from tokenskip.relevance import select_exemplars

    exemplars = [
        "Tom has 3 apples and buys 4 more apples. #### 7",
        "A train goes 60 miles an hour for 2 hours. #### 120",
        "A box holds 6 eggs; how many eggs in 2 boxes? #### 12",
        "Sam saves 10 dollars a week for 4 weeks. #### 40",
    ]
    counts = [10, 10, 10, 10]
    assert select_exemplars(exemplars, "How many eggs fit in 5 boxes?", 0.25, counts) == [2]
    assert select_exemplars(exemplars, "How many eggs and apples?", 0.5, counts) == [0, 2]
    # at least one, whatever γ; all of them at γ = 1
    assert len(select_exemplars(exemplars, "Unrelated words", 0.01, counts)) == 1
    assert select_exemplars(exemplars, "eggs", 1.0, counts) == [0, 1, 2, 3]
