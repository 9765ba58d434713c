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
