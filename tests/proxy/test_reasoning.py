"""The CoT knob on reasoning models: provider-native budgets as they reach each upstream,
reasoning passed through and counted, budget forcing over an upstream that continues a
partial assistant message, and the bad inputs around them."""

import httpx
import openai
import pytest

from tests.proxy.fake_upstream import CONTINUER_STEPS, REASONING, make_upstream_app
from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config
from tokenskip.reasoning import DEFAULT_CUE

SECRET = "sk-upstream-REASONING-77"


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app(api_key=SECRET)) as url:
        yield url


@pytest.fixture(scope="module", params=["direct", "litellm"])
def mode(request):
    return request.param


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory, mode):
    openai_base = {"api_base": upstream + "/v1", "api_key": SECRET}

    def entry(name, model, tokenskip=None, **params):
        return {
            "model_name": name,
            "litellm_params": {"model": model, **params},
            "tokenskip": {"prompt_ratio": None, **(tokenskip or {})},
        }

    config = {
        "model_list": [
            entry("o-reasoner", "openai/reasoner", {"reasoning": "openai"}, **openai_base),
            entry("qwen3", "hosted_vllm/reasoner", {"reasoning": "qwen3"}, **openai_base),
            entry("plain", "openai/ok", **openai_base),
            entry("plain-reasoner", "openai/reasoner", **openai_base),  # kind none
            entry(
                "claude",
                "anthropic/claude-sonnet-4-5-20250929",
                api_base=upstream,
                api_key="sk-ant-fake",
            ),
            entry(
                "claude-strict",
                "anthropic/claude-sonnet-4-5-20250929",
                {"reasoning_budget_floor": "error"},
                api_base=upstream,
                api_key="sk-ant-fake",
            ),
            entry(
                "gemini",
                "gemini/gemini-2.5-flash",
                api_base=upstream + "/v1beta",
                api_key="fake-gemini-key",
            ),
            entry(
                "gemini3",
                "gemini/gemini-3-pro-preview",
                api_base=upstream + "/v1beta",
                api_key="fake-gemini-key",
            ),
            entry(
                "vllm",
                "hosted_vllm/continuer",
                {"continue_final": "vllm", "cot_method": "budget-forcing"},
                **openai_base,
            ),
            entry(
                "no-continue", "openai/continuer", {"cot_method": "budget-forcing"}, **openai_base
            ),
        ],
        "router_settings": {"num_retries": 0, "timeout": 10},
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


def sent(upstream):
    return httpx.get(upstream + "/_calls").json()["last_body"]


def ask(client, model, tokenskip, **kw):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hello there"}],
        extra_body={"tokenskip": tokenskip},
        **kw,
    )


def test_openai_kind_gets_reasoning_effort(client, upstream):
    r = ask(client, "o-reasoner", {"cot_ratio": 0.5})
    body = sent(upstream)
    assert body["reasoning_effort"] == "medium"  # 0.5 x 4096 = 2048: litellm's medium
    info = r.model_extra["tokenskip"]
    assert info["cot_method"] == "native" and info["cot_budget"] == 2048
    assert info["reasoning"] == "openai" and info["cot_fields"] == ["reasoning_effort"]
    r = ask(client, "o-reasoner", {"cot_budget": 300})
    assert sent(upstream)["reasoning_effort"] == "low"


def test_qwen3_kind_gets_the_template_hint_and_vllms_cap(client, upstream):
    ask(client, "qwen3", {"cot_budget": 512})
    body = sent(upstream)
    assert body["chat_template_kwargs"] == {"enable_thinking": True, "thinking_budget": 512}
    assert body["thinking_token_budget"] == 512


def test_qwen3_keeps_the_clients_other_template_kwargs(client, upstream):
    client.chat.completions.create(
        model="qwen3",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"tokenskip": {"cot_budget": 64}, "chat_template_kwargs": {"custom": 1}},
    )
    assert sent(upstream)["chat_template_kwargs"] == {
        "custom": 1,
        "enable_thinking": True,
        "thinking_budget": 64,
    }


def test_a_clients_own_reasoning_field_is_left_alone(client, upstream):
    r = ask(client, "o-reasoner", {"cot_ratio": 0.1}, reasoning_effort="high")
    assert sent(upstream)["reasoning_effort"] == "high"
    info = r.model_extra["tokenskip"]
    assert info["cot_method"] == "client" and "reasoning_effort" in info["cot_note"]


def test_anthropic_thinking_budget_reaches_the_messages_api(client, upstream):
    r = ask(client, "claude", {"cot_budget": 2000}, max_tokens=5000)
    body = sent(upstream)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert body["max_tokens"] == 5000
    assert r.choices[0].message.content == "echo: hello there"
    # litellm hands the thinking block back as reasoning_content; it reaches the client
    assert r.choices[0].message.model_extra.get("reasoning_content") == REASONING


def test_anthropic_budget_below_1024_is_clamped_and_reported(client, upstream):
    r = ask(client, "claude", {"cot_budget": 300})
    body = sent(upstream)
    assert body["thinking"]["budget_tokens"] == 1024
    assert body["max_tokens"] == 1024 + 4096  # room for the thinking and the answer
    info = r.model_extra["tokenskip"]
    assert info["cot_budget"] == 1024 and info["cot_budget_requested"] == 300
    assert "1024" in info["cot_note"]


def test_anthropic_budget_below_1024_is_refused_when_the_config_says_so(client, upstream):
    before = httpx.get(upstream + "/_calls").json()["total"]
    with pytest.raises(openai.UnprocessableEntityError) as e:
        ask(client, "claude-strict", {"cot_budget": 300})
    assert e.value.body["param"] == "tokenskip.cot_budget"
    assert "1024" in e.value.body["message"]
    assert httpx.get(upstream + "/_calls").json()["total"] == before  # nothing was sent


def test_anthropic_budget_must_fit_under_max_tokens(client):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        ask(client, "claude", {"cot_budget": 3000}, max_tokens=800)
    assert "max_tokens" in e.value.body["message"]


def test_gemini_budget_becomes_thinking_budget(client, upstream):
    r = ask(client, "gemini", {"cot_budget": 700})
    config = sent(upstream)["generationConfig"]["thinkingConfig"]
    assert config["thinkingBudget"] == 700 and config["includeThoughts"] is True
    assert r.choices[0].message.content == "echo: hello there"
    assert r.usage.completion_tokens_details.reasoning_tokens == 12


def test_gemini_3_gets_a_thinking_level(client, upstream):
    ask(client, "gemini3", {"cot_budget": 5000})
    config = sent(upstream)["generationConfig"]["thinkingConfig"]
    assert config["thinkingLevel"] == "high" and "thinkingBudget" not in config


def test_reasoning_round_trips_through_the_openai_client(client, proxy):
    r = ask(client, "o-reasoner", {"cot_ratio": 0.5})
    assert r.choices[0].message.model_extra["reasoning_content"] == REASONING
    reasoning_tokens = len(REASONING.split())
    assert r.usage.completion_tokens_details.reasoning_tokens == reasoning_tokens
    chunks = list(
        client.chat.completions.create(
            model="o-reasoner",
            messages=[{"role": "user", "content": "hello there"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"tokenskip": {"cot_ratio": 0.5}},
        )
    )
    thought = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert thought == REASONING and text == "echo: hello there"
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == reasoning_tokens
    row = proxy[1].state.ledger.rows(1)[0]
    assert row["reasoning_tokens"] == reasoning_tokens and row["cot_budget"] == 2048
    # γ = 0.5 of the typical reasoning: the estimate is reasoning / 0.5 - reasoning
    assert row["reasoning_tokens_saved_estimated"] == reasoning_tokens
    assert row["cot_tokens_saved_estimated"] == 0


def test_savings_and_metrics_report_reasoning_apart(client, proxy):
    ask(client, "o-reasoner", {"cot_ratio": 0.5})
    base = proxy[0]
    savings = httpx.get(base + "/v1/savings").json()
    kinds = savings["by_kind"]
    assert kinds["reasoning"]["measured"] is True and kinds["reasoning"]["reasoning_tokens"] > 0
    assert kinds["reasoning_budget"]["measured"] is False
    assert kinds["reasoning_budget"]["tokens_saved"] > 0
    metrics = httpx.get(base + "/metrics").text
    assert 'tokenskip_tokens_total{direction="reasoning",model="o-reasoner"}' in metrics
    assert 'kind="reasoning_budget"' in metrics


def test_budget_forcing_continues_the_partial_message_on_vllm(client, upstream):
    r = ask(client, "vllm", {"cot_budget": 10})
    body = sent(upstream)  # the second call: the reasoning so far plus the cue, continued
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    partial = body["messages"][-1]
    assert partial["role"] == "assistant"
    head = " ".join(f"step {i}" for i in range(1, 6))  # the first 10 words
    assert partial["content"] == head + DEFAULT_CUE
    assert r.choices[0].message.content == head + DEFAULT_CUE + " 7"
    info = r.model_extra["tokenskip"]
    assert info["cot_method"] == "budget-forcing" and info["cot_forced"] is True
    assert r.usage.completion_tokens == 10 + 1


def test_budget_forcing_leaves_an_answer_written_under_budget(client, upstream):
    r = ask(client, "vllm", {"cot_budget": CONTINUER_STEPS + 10})
    assert r.choices[0].message.content.endswith("Final answer: 7")
    assert r.model_extra["tokenskip"]["cot_forced"] is False
    assert not sent(upstream).get("continue_final_message")


def test_budget_forcing_without_continuation_falls_back_and_says_so(client, upstream):
    r = ask(client, "no-continue", {"cot_budget": 64})
    info = r.model_extra["tokenskip"]
    assert info["cot_method"] == "instruction"
    assert info["cot_method_requested"] == "budget-forcing"
    assert "continue_final" in info["cot_note"]
    assert "64 tokens" in sent(upstream)["messages"][0]["content"]


@pytest.mark.parametrize("bad", ["many", 0, -5, 2.5, True])
def test_a_cot_budget_that_is_not_a_positive_integer_is_422(client, bad):
    with pytest.raises(openai.UnprocessableEntityError) as e:
        ask(client, "o-reasoner", {"cot_budget": bad})
    assert "cot_budget" in e.value.body["param"]


def test_native_method_on_a_model_without_reasoning_control_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "plain", {"cot_method": "native", "cot_budget": 100})
    assert e.value.body["param"] == "tokenskip.cot_method"
    assert "no native reasoning control" in e.value.body["message"]


def test_a_cot_method_without_a_budget_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "plain", {"cot_method": "instruction"})
    assert e.value.body["code"] == "missing_cot_budget"


def test_a_plain_model_is_credited_on_its_completion_even_with_reasoning_tokens(client, proxy):
    r = ask(client, "plain-reasoner", {"cot_ratio": 0.5})
    assert r.model_extra["tokenskip"]["cot_method"] == "instruction"
    row = proxy[1].state.ledger.rows(1)[0]
    assert row["cot_tokens_saved_estimated"] == r.usage.completion_tokens  # c / 0.5 - c
    assert row["reasoning_tokens_saved_estimated"] == 0
