"""The tokenizer edge: the memoized pre-token path gives the tokenizer's exact ids."""

import pytest

from tokenskip.tokens import TextTokenizer

TEXTS = [
    "",
    " ",
    "\n\n\n",
    "Natalia sold 48/2 = 24 clips in May.\n#### 72",
    "naïve café — “quotes” 😀 日本語テキスト  \n\n\t tabs   spaces   end  ",
    "e\u0301 combining accents, ﬁ ligatures and ½ fractions",
    '{"a": [1, 2.50, -3e5], "b": "x\\ny"}   ',
    "don't can't it's they're we'll I'd",
    "    indented code\n\tand tabs\r\nCRLF line",
    "ends with the special <|im_end|> token inside",
]


@pytest.mark.parametrize("text", TEXTS)
def test_fast_path_equals_the_tokenizer(tokenizer, text):
    backend = tokenizer.hf.backend_tokenizer
    expected = backend.encode(text, add_special_tokens=False)
    got = tokenizer.encode(text)
    assert got.ids == expected.ids
    assert got.offsets == [tuple(o) for o in expected.offsets]
    assert tokenizer.count(text) == len(expected.ids)


def test_the_embedded_tokenizer_takes_the_fast_path(tokenizer, solutions):
    assert tokenizer.has_fast_path
    for text in solutions:
        assert (
            tokenizer.encode(text).ids
            == tokenizer.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids
        )


def test_a_wordpiece_tokenizer_takes_the_plain_path(solutions):
    from tokenskip.testing import make_wordpiece_tokenizer

    wordpiece = TextTokenizer(make_wordpiece_tokenizer(solutions * 3, vocab_size=300))
    assert not wordpiece.has_fast_path
    text = solutions[0]
    assert wordpiece.count(text) == len(wordpiece.encode(text).ids) > 0


def _line_texts() -> list[str]:
    """Long texts cut at newlines: pretty JSON, tables, and every kind of line end."""
    import json
    import random

    rng = random.Random(3)
    rows = [
        {"id": i, "name": rng.choice(["a b", "ç", "x\ty", "日本"]), "n": rng.random(), "t": []}
        for i in range(60)
    ]
    parts = ["word", "12", " ", "  ", "\t", ",", '"', "'s", "é", "\u00a0", "\u3000", "😀"]
    ends = ["\n", "\n", "\r\n", "\n\n", " \n", "\n  \n", "\x0b\n", "\u2028"]
    noisy = [
        "".join(rng.choice(parts) for _ in range(rng.randint(0, 6))) + rng.choice(ends)
        for _ in range(400)
    ]
    return [
        json.dumps(rows, indent=2),
        json.dumps(rows, indent=4) + "\n",
        "\n" + json.dumps(rows, indent=1),
        "\n".join(f"{r['id']},{r['name']},{r['n']}" for r in rows) * 3,
        "".join(noisy),
        "".join(noisy[::-1]).strip(),
        ("para one.\n\nPara two  \n" * 200),
    ]


def _qwen_style(tokenizer) -> TextTokenizer:
    """The embedded vocabulary behind the Qwen2 / Llama 3 pre-token regex."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tokenskip.tokens import QWEN2_PATTERN

    backend = Tokenizer.from_str(tokenizer.hf.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return TextTokenizer(PreTrainedTokenizerFast(tokenizer_object=backend), "qwen-style")


@pytest.mark.parametrize("memo_chars", [8_000_000, 300])
@pytest.mark.parametrize("style", ["gpt2", "qwen2"])
def test_counting_line_by_line_is_exact(tokenizer, style, memo_chars, monkeypatch):
    monkeypatch.setattr("tokenskip.tokens.MAX_CACHED_LINE_CHARS", memo_chars)
    tok = TextTokenizer(tokenizer.hf) if style == "gpt2" else _qwen_style(tokenizer)
    assert tok._codec._cut == ("before_newline" if style == "gpt2" else "after_newline")
    backend = tok.hf.backend_tokenizer
    for text in _line_texts():
        expected = len(backend.encode(text, add_special_tokens=False).ids)
        assert tok.count(text) == expected  # lines first seen
        assert tok.count(text) == expected  # lines memoized
    assert 0 < tok._codec._line_chars <= memo_chars


def test_a_text_seen_before_is_counted_from_its_lines(tokenizer):
    import json

    text = json.dumps([{"id": i, "tags": ["x", str(i)]} for i in range(3000)], indent=2)
    fresh = TextTokenizer(tokenizer.hf, "fresh")
    split = fresh._codec._split
    scanned: list[int] = []

    class Recording:
        def findall(self, piece: str) -> list[str]:
            scanned.append(len(piece))
            return split.findall(piece)

    fresh._codec._split = Recording()
    first = fresh.count(text)
    first_scan, scanned[:] = sum(scanned), []
    again = fresh.count(text)
    assert (
        first
        == again
        == len(tokenizer.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids)
    )
    assert first_scan < len(text) / 2  # repeated lines were scanned once
    assert sum(scanned) < 10  # only the two end lines
