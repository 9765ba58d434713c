import json
from dataclasses import replace

import pytest

from tokenskip.cot_control import apply_cot_ratio
from tokenskip.lossless import expand_tables
from tokenskip.proxy.serving.prompt import (
    PromptSettings,
    compress_messages,
    is_request,
    protected_spans,
)
from tokenskip.scorers import HeuristicScorer

FILLER = (
    "The old harbour town has narrow streets that wind past small shops and quiet cafes near "
    "the water. Visitors like the fresh sea air, the gentle evening light and the friendly "
    "people who live there. "
)


@pytest.fixture(scope="module")
def scorer(tokenizer):
    return HeuristicScorer(tokenizer)


def settings(**overrides):
    base = dict(
        context_ratio=0.5,
        instruction_ratio=None,
        tool_ratio=None,
        min_tokens=64,
        lossless=True,
        guards=True,
        cache_safe=True,
    )
    return PromptSettings(**{**base, **overrides})


DOCUMENT = FILLER * 6
QUESTION = "So how many numbers does the loop print?"


def test_protected_spans_cover_code_and_urls():
    text = (
        "See https://example.com/x?y=1 and `pip install x`.\n```python\nprint(1)\n```\nmail a@b.io"
    )
    covered = {text[s:e] for s, e in protected_spans(text)}
    assert {
        "https://example.com/x?y=1",
        "`pip install x`",
        "```python\nprint(1)\n```",
        "a@b.io",
    } <= covered


@pytest.mark.parametrize(
    ("block", "asks"),
    [
        ("What is the total?", True),
        ("Please summarise the report below in three bullet points.", True),
        ("Can you check this", True),
        ("The report covers the third quarter and the sales of every region.", False),
    ],
)
def test_requests_are_told_from_context(block, asks):
    assert is_request(block) is asks


def test_user_documents_are_compressed_and_the_request_is_not(tokenizer, scorer):
    messages = [
        {"role": "system", "content": DOCUMENT},
        {"role": "user", "content": DOCUMENT + "\n\n" + QUESTION},
        {"role": "assistant", "content": DOCUMENT},
    ]
    out = compress_messages(messages, settings(), tokenizer=tokenizer, scorer=scorer)
    assert out.messages[0] is messages[0]  # instructions: byte for byte
    assert out.messages[2] is messages[2]  # assistant turns are never touched
    assert out.messages[1]["content"].endswith("\n\n" + QUESTION)
    assert len(out.messages[1]["content"]) < len(messages[1]["content"])
    (part,) = out.parts
    assert (part.message, part.part, part.kind, part.method) == (1, None, "context", "lossy")
    assert part.tokens_before == tokenizer.count(messages[1]["content"])
    assert part.tokens_after == tokenizer.count(out.messages[1]["content"])
    assert out.saved_tokens == part.tokens_before - part.tokens_after > 0


PARAGRAPHS = [
    "The old harbour sits at the end of a long street lined with small shops and cafes.",
    "In the summer the quay fills with visitors who come for the views and the fresh fish.",
    "Fuel is sold at the north pier only, and payment is by card, not cash.",
    "The marina building was painted a bright blue a few years ago and looks very cheerful.",
    "Many of the fishing families have lived in the town for several generations by now.",
    "In the evening the light over the water turns gold and the gulls settle on the roofs.",
] * 3


def test_a_pasted_document_of_short_paragraphs_is_context(tokenizer, scorer):
    """Paragraphs each shorter than the context threshold, pasted together, are one
    document; a few short paragraphs of conversation are not."""
    question = "Can I pay for fuel in cash?"
    pasted = "\n\n".join(PARAGRAPHS) + "\n\n" + question
    assert all(len(p) < settings().min_tokens * 4 for p in PARAGRAPHS)
    out = compress_messages(
        [{"role": "user", "content": pasted}], settings(), tokenizer=tokenizer, scorer=scorer
    )
    (part,) = out.parts
    assert (part.kind, part.method) == ("context", "lossy")
    assert out.messages[0]["content"].endswith("\n\n" + question)
    assert "not cash" in out.messages[0]["content"]  # the guarded constraint stays
    chat = "\n\n".join(PARAGRAPHS[:3]) + "\n\n" + question
    kept = compress_messages(
        [{"role": "user", "content": chat}], settings(), tokenizer=tokenizer, scorer=scorer
    )
    assert not kept.parts


def test_a_message_compresses_the_same_wherever_it_stands(tokenizer, scorer):
    """Cache safety: no rule looks at the position in the conversation."""
    turn = {"role": "user", "content": DOCUMENT + "\n\n" + QUESTION}
    alone = compress_messages([turn], settings(), tokenizer=tokenizer, scorer=scorer)
    later = compress_messages(
        [turn, {"role": "assistant", "content": "ok"}, {"role": "user", "content": DOCUMENT}],
        settings(),
        tokenizer=tokenizer,
        scorer=scorer,
    )
    assert alone.messages[0] == later.messages[0]


def test_document_markup_is_context_even_in_a_system_message(tokenizer, scorer):
    system = "You answer from the context only.\n<context>" + DOCUMENT + "</context>"
    out = compress_messages(
        [{"role": "system", "content": system}], settings(), tokenizer=tokenizer, scorer=scorer
    )
    new = out.messages[0]["content"]
    assert new.startswith("You answer from the context only.\n<context>") and new.endswith(
        "</context>"
    )
    assert len(new) < len(system)


def test_instructions_compress_only_when_asked(tokenizer, scorer):
    messages = [{"role": "system", "content": DOCUMENT}]
    out = compress_messages(
        messages, settings(instruction_ratio=0.5), tokenizer=tokenizer, scorer=scorer
    )
    assert out.parts[0].kind == "instruction" and out.saved_tokens > 0


def test_tool_outputs_get_lossless_transforms_only(tokenizer, scorer):
    rows = [{"id": i, "name": f"row {i}", "status": "active", "note": FILLER} for i in range(20)]
    tool = {"role": "tool", "tool_call_id": "c1", "content": json.dumps(rows, indent=2)}
    out = compress_messages([tool], settings(), tokenizer=tokenizer, scorer=scorer)
    (part,) = out.parts
    assert (part.kind, part.method, part.transforms) == ("tool_output", "lossless", ("json",))
    assert expand_tables(out.messages[0]["content"]) == rows  # every key and value kept
    assert out.messages[0]["tool_call_id"] == "c1"


def test_cache_control_content_and_everything_before_it_stay(tokenizer, scorer):
    marked = {
        "role": "user",
        "content": [{"type": "text", "text": DOCUMENT, "cache_control": {"type": "ephemeral"}}],
    }
    before = {"role": "user", "content": DOCUMENT}
    after = {"role": "user", "content": DOCUMENT}
    out = compress_messages([before, marked, after], settings(), tokenizer=tokenizer, scorer=scorer)
    assert out.messages[0] is before and out.messages[1] is marked
    assert out.messages[2] is not after and [p.message for p in out.parts] == [2]
    opted_out = compress_messages(
        [before, marked], settings(cache_safe=False), tokenizer=tokenizer, scorer=scorer
    )
    # the opt-out trades cache hits for savings: the marked part compresses too
    assert [p.message for p in opted_out.parts] == [0, 1]


def test_short_contents_and_multimodal_parts(tokenizer, scorer):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": DOCUMENT},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        },
        {"role": "user", "content": "short question?"},
    ]
    out = compress_messages(messages, settings(), tokenizer=tokenizer, scorer=scorer)
    assert out.messages[1] is messages[1]
    parts = out.messages[0]["content"]
    assert parts[1] == messages[0]["content"][1]
    assert out.parts[0].part == 0
    assert tokenizer.count(parts[0]["text"]) < tokenizer.count(DOCUMENT)
    json.dumps(out.messages)  # still serialisable for the upstream


def test_nothing_is_tokenized_when_nothing_is_compressed(scorer):
    class Counting:
        calls = 0

        def count(self, text):
            Counting.calls += 1
            return len(text.split())

        def encode(self, text):  # pragma: no cover - must not be reached
            raise AssertionError("tokenized")

    messages = [{"role": "system", "content": DOCUMENT}, {"role": "user", "content": "Hi there?"}]
    out = compress_messages(messages, settings(), tokenizer=Counting(), scorer=scorer)
    assert out.messages == messages and Counting.calls == 0 and out.parts == []


def test_cot_knob_uses_the_tokenskip_format_for_tuned_models():
    messages = [{"role": "user", "content": "How many?"}]
    out, method = apply_cot_ratio(messages, 0.6, delimiter="<|im_end|>", reference_tokens=300)
    assert method == "tokenskip"
    assert out[-1]["content"] == "How many?<|im_end|>0.6<|im_end|>"
    assert messages[-1]["content"] == "How many?"  # input untouched


def test_cot_knob_instructs_other_models_with_a_budget():
    out, method = apply_cot_ratio(
        [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": "Q"}],
        0.5,
        delimiter=None,
        reference_tokens=300,
    )
    assert method == "instruction"
    assert out[0]["content"].startswith("Be helpful.") and "at most 150 tokens" in out[0]["content"]
    out, method = apply_cot_ratio(
        [{"role": "user", "content": "Q"}], 1.0, delimiter=None, reference_tokens=300
    )
    assert method == "none" and out == [{"role": "user", "content": "Q"}]


def test_retrieval_documents_are_ranked_against_the_request_in_the_same_message(tokenizer, scorer):
    """Six documents in markup and a question in one user message, through the gateway's
    policy path: the document the question is about stays, the others leave a marker."""
    from tests.tokenskip.test_relevance import retrieval_prompt

    question = "How long do I have to report damaged items, and is there a restocking fee?"
    text = retrieval_prompt(question, size=3)
    messages = [{"role": "user", "content": text}]
    done = compress_messages(
        messages, settings(context_ratio=0.3), tokenizer=tokenizer, scorer=scorer
    )
    out = done.messages[0]["content"]
    assert "Damaged items must be reported within 48 hours of delivery" in out
    assert out.count("[omitted, not relevant to the request:") == 5
    assert out.endswith(question)
    part = done.parts[0].to_dict()
    assert part["relevance"] == "ranked" and part["documents_dropped"] == 5
    assert part["achieved_ratio"] == pytest.approx(0.3, abs=0.05)
    # the same message compresses the same way on the next turn (cache-safe)
    again = compress_messages(
        messages, settings(context_ratio=0.3), tokenizer=tokenizer, scorer=scorer
    )
    assert again.messages[0]["content"] == out


def test_documents_without_a_request_are_compressed_without_one_and_say_so(tokenizer, scorer):
    from tests.tokenskip.test_relevance import retrieval_prompt

    text = retrieval_prompt("")
    done = compress_messages(
        [{"role": "user", "content": text}],
        settings(context_ratio=0.5),
        tokenizer=tokenizer,
        scorer=scorer,
    )
    part = done.parts[0].to_dict()
    assert part["relevance"] == "spread-no-request" and part["documents_dropped"] == 0
    assert "[omitted" not in done.messages[0]["content"]


def test_the_default_policy_ranks_documents_and_halves_a_documents_words(tokenizer, scorer):
    """The defaults from the measured frontiers: a retrieval message is cut to 0.3 by
    ranking its documents (no accuracy lost in reports/retrieval), a single document's words
    to 0.5 with the guards on (no accuracy lost in reports/meaning/REACH.md), and a request
    that needs every document spreads that ratio over all of them, dropping none."""
    from tests.tokenskip.test_relevance import retrieval_prompt
    from tokenskip.proxy.infra.policy import CompressionPolicy
    from tokenskip.proxy.serving.prepare import prompt_settings

    default = CompressionPolicy()
    assert default.prompt_ratio == 0.5 and default.document_ratio == 0.3

    def run(text, policy=default):
        done = compress_messages(
            [{"role": "user", "content": text}],
            prompt_settings(policy),
            tokenizer=tokenizer,
            scorer=scorer,
        )
        return done.messages[0]["content"], [p.to_dict() for p in done.parts]

    question = "How long do I have to report damaged items, and is there a restocking fee?"
    out, parts = run(retrieval_prompt(question, size=3))
    assert parts[0]["relevance"] == "ranked" and parts[0]["documents_dropped"] == 5
    assert parts[0]["achieved_ratio"] == pytest.approx(0.3, abs=0.05)
    assert "Damaged items must be reported within 48 hours of delivery" in out
    # one document and its question: the document's words to about half, the question whole
    single = DOCUMENT + "\n\n" + QUESTION
    out, parts = run(single)
    assert parts[0]["achieved_ratio"] == pytest.approx(0.5, abs=0.05)
    assert out.endswith(QUESTION)
    # a request that needs every document: none dropped, each shortened
    every = retrieval_prompt("Summarize every document.", size=3)
    out, parts = run(every)
    assert parts[0]["documents_dropped"] == 0 and "[omitted" not in out
    assert parts[0]["achieved_ratio"] < 0.9
    # a lower prompt_ratio is the ranked budget; document_ratio 1 and no prompt_ratio: off
    lower_out, lower = run(retrieval_prompt(question, size=3), replace(default, prompt_ratio=0.2))
    # (words go only outside the guarded constraints, which this document is dense with)
    assert lower[0]["achieved_ratio"] < parts[0]["achieved_ratio"]
    assert "Damaged items must be reported within 48 hours of delivery" in lower_out
    off = retrieval_prompt(question, size=3)
    unchanged = replace(default, document_ratio=1.0, prompt_ratio=None)
    assert run(off, unchanged)[0].split() == off.split()


def test_a_text_resent_on_a_later_turn_is_compressed_once(tokenizer, scorer, monkeypatch):
    """The memo: the same text, role and settings give the remembered compression without
    compressing again; other settings compress afresh; the memo stays within its bound."""
    import tokenskip.proxy.serving.prompt as prompt
    from tests.tokenskip.test_relevance import retrieval_prompt

    calls = []
    real = prompt._compress_text
    monkeypatch.setattr(prompt, "_compress_text", lambda *a, **k: calls.append(1) or real(*a, **k))
    question = "How long do I have to report damaged items, and is there a restocking fee?"
    turn = [{"role": "user", "content": retrieval_prompt(question, size=3)}]
    memo = prompt.CompressionMemo()

    def run(messages, **overrides):
        done = compress_messages(
            messages, settings(**overrides), tokenizer=tokenizer, scorer=scorer, memo=memo
        )
        return done.messages, [p.to_dict() for p in done.parts]

    first = run(turn)
    made = len(calls)
    assert made > 0 and memo.misses == 1 and memo.hits == 0
    # the next turn resends the first message and adds an answer and a question
    later = [
        *turn,
        {"role": "assistant", "content": "48 hours."},
        {"role": "user", "content": "And?"},
    ]
    again = run(later)
    # the first message from the memo; only the new question is looked at
    assert len(calls) == made + 1 and memo.hits == 1 and memo.misses == 2
    assert again[0][0] == first[0][0] and again[1] == first[1]
    run(turn, context_ratio=0.3)  # other settings: compressed afresh
    assert len(calls) == made + 2 and memo.misses == 3

    small = prompt.CompressionMemo(max_chars=3 * len(turn[0]["content"]))
    for i in range(5):
        text = turn[0]["content"].replace("Damaged", f"Damaged{i}")
        compress_messages(
            [{"role": "user", "content": text}],
            settings(),
            tokenizer=tokenizer,
            scorer=scorer,
            memo=small,
        )
    assert small.chars <= small.max_chars and 0 < len(small) < 5
