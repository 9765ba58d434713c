"""Typed runtime settings: defaults stated once, every bad field named."""

import pytest

from tokenskip.runtime.configs import EarlyExitConfig, SpeculativeConfig


def test_true_gives_the_defaults_and_off_gives_none():
    assert SpeculativeConfig.parse(True) == SpeculativeConfig(None, 4, 8, 0.8, True)
    assert EarlyExitConfig.parse(True) == EarlyExitConfig(0.95, None)
    assert SpeculativeConfig.parse(None) is None and SpeculativeConfig.parse(False) is None
    assert EarlyExitConfig.parse(False) is None


def test_a_mapping_is_frozen_with_tuples():
    cfg = SpeculativeConfig.parse({"skip": [3, 4], "k": 2, "lookup": False})
    assert cfg == SpeculativeConfig(skip=(3, 4), k=2, lookup=False)
    with pytest.raises(AttributeError):
        cfg.k = 3  # type: ignore[misc]
    assert EarlyExitConfig.parse({"layers": [8, 16]}).layers == (8, 16)


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"skip": [0]}, "skip"),
        ({"skip": "3"}, "skip"),
        ({"k": 0}, ".k "),
        ({"max_k": True}, "max_k"),
        ({"target": 1.5}, "target"),
        ({"lookup": "yes"}, "lookup"),
        ({"speed": 2}, "mapping of skip"),
        ("fast", "mapping of skip"),
    ],
)
def test_speculative_names_the_bad_field(raw, field):
    with pytest.raises(ValueError, match=r"models\[0\]: local.speculative") as err:
        SpeculativeConfig.parse(raw, "models[0]: local.speculative")
    assert field in str(err.value)


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"target": 0}, "target"),
        ({"layers": []}, "layers"),
        ({"layers": [-1]}, "layers"),
        ([], "mapping"),
    ],
)
def test_early_exit_names_the_bad_field(raw, field):
    with pytest.raises(ValueError, match="early_exit") as err:
        EarlyExitConfig.parse(raw)
    assert field in str(err.value)
