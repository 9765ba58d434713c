import pytest

from tokenskip.proxy.infra.policy import CompressionPolicy


def test_request_overrides_win_and_nulls_do_not():
    base = CompressionPolicy(prompt_ratio=0.7, cot_ratio=None)
    merged = base.merged({"cot_ratio": 0.6, "prompt_ratio": None})
    assert merged.prompt_ratio == 0.7 and merged.cot_ratio == 0.6
    assert merged.controls_cot and merged.compresses_prompt


def test_disabled_turns_everything_off():
    p = CompressionPolicy(prompt_ratio=0.5, cot_ratio=0.5).merged({"enabled": False})
    assert not p.compresses_prompt and not p.controls_cot


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prompt_ratio": 0}, "prompt_ratio"),
        ({"cot_ratio": 1.5}, "cot_ratio"),
        ({"scorer": "classifier"}, "needs scorer_model"),
        ({"scorer": "nope"}, "scorer must be one of"),
        ({"scorer": "magic"}, "scorer must be"),
        ({"prompt_min_tokens": -1}, "prompt_min_tokens"),
        ({"bogus": 1}, "unknown tokenskip policy keys"),
    ],
)
def test_bad_policies_say_what_is_wrong(data, message):
    with pytest.raises(ValueError, match=message):
        CompressionPolicy.from_mapping(data)
