import pytest

from tokenskip.errors import InvalidInputError
from tokenskip.ratio_prompt import check_delimiter, default_delimiter, ratio_suffix, with_ratio


def test_ratio_prompt_format_is_exact():
    assert with_ratio("How many?", 0.5, "<|im_end|>") == "How many?<|im_end|>0.5<|im_end|>"
    assert with_ratio("How many?", 0.75, "<D>") == "How many?<D>0.75<D>"
    assert with_ratio("How many?", 1.0, "<D>") == "How many?"


@pytest.mark.parametrize("bad", [0, 1.5, float("nan")])
def test_ratio_prompt_rejects_bad_ratios(bad):
    with pytest.raises(InvalidInputError):
        ratio_suffix(bad, "<D>")


def test_default_delimiter_is_the_end_of_turn_token(smol):
    assert default_delimiter(smol.tokenizer) == "<|im_end|>"
    check_delimiter(smol.tokenizer, "<|im_end|>")
    with pytest.raises(InvalidInputError):
        check_delimiter(smol.tokenizer, "")
