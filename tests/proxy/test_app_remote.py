"""The proxy through litellm to a real OpenAI-protocol upstream on loopback, with faults."""

import socket
import time

import httpx
import openai
import pytest

from tests.proxy.fake_upstream import make_upstream_app
from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

SECRET = "sk-upstream-SECRET-4242"
LONG = (
    "The old harbour town has narrow streets that wind past small shops and quiet cafes near "
    "the water. Visitors like the fresh sea air, the gentle evening light and the friendly "
    "people who live there. "
) * 12


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def upstream():
    app = make_upstream_app(api_key=SECRET)
    with serve(app) as url:
        yield url


@pytest.fixture(scope="module", params=["direct", "litellm"])
def mode(request):
    """Every test runs through the direct OpenAI-protocol backend and through litellm."""
    return request.param


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory, mode):
    base = {"api_base": upstream + "/v1", "api_key": SECRET}

    def deployment(name, model, **extra):
        return {"model_name": name, "litellm_params": {"model": f"openai/{model}", **base, **extra}}

    config = {
        "model_list": [
            {
                **deployment("ok", "ok", input_cost_per_token=1e-6, output_cost_per_token=2e-6),
                "tokenskip": {"prompt_ratio": 0.5, "prompt_min_tokens": 64, "tokenizer": "smollm2"},
            },
            deployment("estimated", "ok"),
            deployment("bad", "fail500"),
            deployment("bad-with-fallback", "fail500"),
            deployment("stall", "stall"),
            deployment("drop", "drop"),
            deployment("flaky", "flaky"),
            {
                "model_name": "down",
                "litellm_params": {
                    "model": "openai/ok",
                    "api_base": f"http://127.0.0.1:{closed_port()}/v1",
                    "api_key": SECRET,
                },
            },
        ],
        "router_settings": {
            "num_retries": 1,
            "timeout": 1.5,
            "fallbacks": [{"bad-with-fallback": ["ok"]}],
            "retry_after": 0,
        },
        "tokenskip_settings": {"direct_openai_compatible": mode == "direct"},
    }
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(ledger_url=f"sqlite:///{ledger}")
    app = create_app(settings, parse_config(config, settings))
    with serve(app) as url:
        yield url, app.app


@pytest.fixture
def client(proxy):
    return openai.OpenAI(base_url=proxy[0] + "/v1", api_key="unused", max_retries=0, timeout=30)


def calls(upstream):
    return httpx.get(upstream + "/_calls").json()


@pytest.fixture(autouse=True)
def reset(upstream):
    httpx.post(upstream + "/_reset")


def chat(model, content="how are you", **kw):
    return {"model": model, "messages": [{"role": "user", "content": content}], **kw}


def test_pass_through_non_stream_and_stream(client, upstream):
    r = client.chat.completions.create(**chat("ok"))
    assert r.choices[0].message.content == "echo: how are you"
    assert (
        r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 4
    )  # the upstream's own counts
    assert r.usage.tokens_estimated is False  # the model's tokenizer is configured
    chunks = list(
        client.chat.completions.create(
            **chat("ok"), stream=True, stream_options={"include_usage": True}
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "echo: how are you"
    )
    assert chunks[-1].usage.completion_tokens == 4
    assert calls(upstream)["last_auth"] == f"Bearer {SECRET}"


def test_counts_without_the_models_tokenizer_are_labeled_estimates(client):
    r = client.chat.completions.create(**chat("estimated"))
    assert r.usage.tokens_estimated is True


def test_prompt_compression_is_forwarded_and_priced(client, upstream, proxy, mode):
    messages = [{"role": "user", "content": LONG + "\n\nSummarise."}]
    r = client.chat.completions.create(model="ok", messages=messages)
    sent = calls(upstream)["last_body"]["messages"][0]["content"]
    assert len(sent) < len(LONG) and r.usage.prompt_tokens_saved > 0
    assert sent.endswith("\n\nSummarise.")
    row = proxy[1].state.ledger.rows(1)[0]
    assert row["model"] == "ok" and row["backend"] == mode and row["status"] == 200
    assert row["cost_actual"] == pytest.approx(
        r.usage.prompt_tokens * 1e-6 + r.usage.completion_tokens * 2e-6
    )
    assert row["cost_original"] > row["cost_actual"]


def test_fallback_answers_when_the_primary_fails(client, upstream):
    r = client.chat.completions.create(**chat("bad-with-fallback"))
    assert r.choices[0].message.content == "echo: how are you"
    assert calls(upstream)["by_model"]["fail500"] >= 1


def test_retries_recover_a_flaky_upstream(client, upstream):
    r = client.chat.completions.create(**chat("flaky"))
    assert r.choices[0].message.content == "echo: how are you"
    assert calls(upstream)["by_model"]["flaky"] == 2


@pytest.mark.parametrize(
    ("model", "status", "code", "limit_s"),
    [
        ("bad", 502, "upstream_unavailable", 10),
        ("stall", 504, "timeout", 15),
        ("down", 502, "upstream_unavailable", 10),
    ],
)
def test_upstream_failures_become_quick_openai_errors(proxy, model, status, code, limit_s):
    started = time.time()
    r = httpx.post(proxy[0] + "/v1/chat/completions", json=chat(model), timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert time.time() - started < limit_s
    assert SECRET not in r.text


def test_official_client_error_types(client):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**chat("bad"))
    assert info.value.status_code == 502
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(**chat("no-such-model"))


def test_mid_stream_drop_ends_the_stream_with_an_error_event(client, proxy):
    stream = client.chat.completions.create(**chat("drop"), stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert received  # some content arrived before the drop
    assert SECRET not in str(info.value)
    row = proxy[1].state.ledger.rows(1)[0]
    assert row["model"] == "drop" and row["status"] == 502 and row["stream"] is True


def test_the_upstream_key_never_reaches_clients(proxy):
    for model in ("ok", "bad", "drop"):
        r = httpx.post(
            proxy[0] + "/v1/chat/completions", json=chat(model, stream=model == "drop"), timeout=60
        )
        assert SECRET not in r.text and SECRET not in str(r.headers)
    assert SECRET not in httpx.get(proxy[0] + "/metrics").text
    assert SECRET not in httpx.get(proxy[0] + "/v1/savings").text


def test_savings_and_metrics_after_a_sequence(client, proxy):
    url, app = proxy
    before = app.state.ledger.totals()["totals"]
    client.chat.completions.create(
        model="ok",
        messages=[{"role": "user", "content": LONG + "\n\nGo."}],
    )
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(**chat("bad"))
    after = httpx.get(url + "/v1/savings").json()["totals"]
    assert after["requests"] == before["requests"] + 2
    assert after["errors"] == before["errors"] + 1
    assert after["prompt_tokens_saved"] > before["prompt_tokens_saved"]
    metrics = httpx.get(url + "/metrics").text
    assert 'tokenskip_upstream_errors_total{code="upstream_unavailable",model="bad"}' in metrics
    assert 'tokenskip_tokens_saved_total{kind="prompt_compression",model="ok"}' in metrics
