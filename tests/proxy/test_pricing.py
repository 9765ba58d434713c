import pytest

from tokenskip.proxy.infra.backends.upstream import cost, redact, resolve_secret, secrets_of


def test_configured_prices_win():
    assert cost(
        {"model": "openai/x", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
        1000,
        500,
    ) == pytest.approx(0.002)


def test_price_map_prices_are_linear_and_unknown_models_unpriced():
    one = cost({"model": "openai/gpt-4o-mini"}, 1000, 1000)
    assert one is not None and one > 0
    assert cost({"model": "openai/gpt-4o-mini"}, 2000, 2000) == pytest.approx(2 * one)
    assert cost({"model": "openai/no-such-model-xyz"}, 10, 10) is None


def test_secrets_are_found_and_redacted(monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY", "sk-from-env-1234")
    params = [{"api_key": "os.environ/UPSTREAM_KEY"}, {"api_key": "sk-inline-5678", "model": "x"}]
    assert resolve_secret("os.environ/UPSTREAM_KEY") == "sk-from-env-1234"
    found = secrets_of(params)
    assert redact("bad key sk-from-env-1234 and sk-inline-5678", found) == "bad key *** and ***"
