import json

import pytest

from proxy.cot import apply_cot_ratio
from proxy.prompt import compress_messages, protected_spans
from tokenskip.scorers import HeuristicScorer

FILLER = (
    "Basically, the thing is that we really just want to make sure that all of the people "
    "who are actually involved in this project can very easily understand what is going on. "
)


@pytest.fixture(scope="module")
def scorer(tokenizer):
    return HeuristicScorer(tokenizer)


def test_protected_spans_cover_code_urls_json_and_the_question():
    text = (
        "See https://example.com/x?y=1 and `pip install x`.\n```python\nprint(1)\n```\n"
        '{"a": [1, 2]}\nSome context here.\n\nWhat is the total?'
    )
    spans = protected_spans(text, is_last_user=True)
    covered = {text[s:e] for s, e in spans}
    assert "https://example.com/x?y=1" in covered
    assert "`pip install x`" in covered
    assert "```python\nprint(1)\n```" in covered
    assert '{"a": [1, 2]}' in covered
    assert "What is the total?" in covered


def test_long_contents_are_compressed_and_protected_parts_survive(tokenizer, scorer):
    code = "```python\nfor i in range(10):\n    print(i)\n```"
    system = FILLER * 6 + "\n" + code + "\nDocs: https://docs.example.org/a/b"
    question = "So how many numbers does the loop print?"
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": FILLER * 4 + "\n\n" + question},
        {"role": "assistant", "content": FILLER * 4},
    ]
    out = compress_messages(messages, ratio=0.5, min_tokens=64, tokenizer=tokenizer, scorer=scorer)
    assert out.num_compressed == 2
    assert code in out.messages[0]["content"]
    assert "https://docs.example.org/a/b" in out.messages[0]["content"]
    assert out.messages[1]["content"].endswith(question)
    assert out.messages[2] == messages[2]  # assistant turns are never touched
    assert out.sent_tokens == sum(tokenizer.count(m["content"]) for m in out.messages)
    assert out.original_tokens == sum(tokenizer.count(m["content"]) for m in messages)
    assert out.saved_tokens > 0


def test_short_contents_and_multimodal_parts(tokenizer, scorer):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": FILLER * 5},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        },
        {"role": "user", "content": "short question?"},
    ]
    out = compress_messages(messages, ratio=0.5, min_tokens=64, tokenizer=tokenizer, scorer=scorer)
    assert out.messages[1]["content"] == "short question?"
    parts = out.messages[0]["content"]
    assert parts[1] == messages[0]["content"][1]
    assert tokenizer.count(parts[0]["text"]) < tokenizer.count(FILLER * 5)
    json.dumps(out.messages)  # still serialisable for the upstream


def test_ratio_none_only_counts(tokenizer):
    messages = [{"role": "user", "content": FILLER * 5}]
    out = compress_messages(messages, ratio=None, min_tokens=0, tokenizer=tokenizer, scorer=None)
    assert out.messages == messages and out.saved_tokens == 0 and out.original_tokens > 0


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
