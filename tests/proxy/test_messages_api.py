"""The Anthropic Messages API through the gateway, with the official ``anthropic`` SDK:
plain and streamed messages, system prompts, tools, count_tokens, auth by x-api-key, and
errors in Anthropic's shape, over an OpenAI-protocol upstream on loopback (direct and
through litellm)."""

import anthropic
import httpx
import pytest

from tests.proxy.fake_upstream import make_upstream_app
from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

KEY = "sk-gateway-messages"


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app()) as url:
        yield url


@pytest.fixture(scope="module", params=["direct", "litellm"])
def proxy(request, upstream, tmp_path_factory):
    base = {"api_base": upstream + "/v1", "api_key": "k"}
    config = {
        "model_list": [
            {
                "model_name": "ok",
                "litellm_params": {"model": "openai/ok", **base},
                "tokenskip": {"tokenizer": "smollm2"},
            },
            {"model_name": "rich", "litellm_params": {"model": "openai/rich", **base}},
            {"model_name": "bad", "litellm_params": {"model": "openai/fail500", **base}},
            {"model_name": "drop", "litellm_params": {"model": "openai/drop", **base}},
        ],
        "router_settings": {"num_retries": 0},
        "tokenskip_settings": {"direct_openai_compatible": request.param == "direct"},
    }
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(api_keys=KEY, ledger_url=f"sqlite:///{ledger}")
    with serve(create_app(settings, parse_config(config, settings))) as url:
        yield url


@pytest.fixture
def client(proxy):
    return anthropic.Anthropic(base_url=proxy, api_key=KEY, max_retries=0, timeout=30)


def sent(upstream):
    return httpx.get(upstream + "/_calls").json()["last_body"]


def test_a_message_with_a_system_prompt(client, upstream):
    m = client.messages.create(
        model="ok",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert m.type == "message" and m.role == "assistant" and m.model == "ok"
    assert m.content[0].type == "text" and m.content[0].text == "echo: hello there"
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens == 4 and m.usage.output_tokens == 3  # the upstream's counts
    body = sent(upstream)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["max_tokens"] == 64


def test_content_blocks_reach_the_upstream_as_text_parts(client, upstream):
    client.messages.create(
        model="ok",
        max_tokens=32,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
    )
    roles = [m["role"] for m in sent(upstream)["messages"]]
    assert roles == ["user", "assistant", "user"]


def test_a_streamed_message_has_anthropics_event_sequence(client):
    with client.messages.stream(
        model="ok", max_tokens=64, messages=[{"role": "user", "content": "stream me please"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert final.content[0].text == "echo: stream me please"
    assert final.usage.output_tokens > 0


def test_tool_calls_come_back_as_tool_use_blocks(client, upstream):
    m = client.messages.create(
        model="rich",
        max_tokens=64,
        tools=[
            {
                "name": "get_weather",
                "description": "weather of a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        messages=[{"role": "user", "content": "weather in Oslo?"}],
    )
    uses = [b for b in m.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and uses[0].input["city"] == "Oslo"
    assert m.stop_reason == "tool_use"
    tools = sent(upstream)["tools"]
    assert tools[0]["function"]["name"] == "get_weather"


def test_count_tokens(client):
    counted = client.messages.count_tokens(
        model="ok", messages=[{"role": "user", "content": "count these words please"}]
    )
    assert counted.input_tokens > 0


def test_the_key_is_checked_as_x_api_key(proxy):
    bad = anthropic.Anthropic(base_url=proxy, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        bad.messages.create(model="ok", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"model": "ok", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "ok", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}, "role"),
        (
            {
                "model": "ok",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"text": 1}]}],
            },
            "type",
        ),
        (
            {"model": "ok", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        ({"max_tokens": 5, "messages": []}, "model"),
        (
            {
                "model": "ok",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "hologram", "data": "x"}]}],
            },
            "hologram",
        ),
        (
            {
                "model": "ok",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t2", "content": "1"}],
                    },
                ],
            },
            "tool_use_id",
        ),
    ],
)
def test_bad_requests_get_anthropics_400(proxy, body, fragment):
    r = httpx.post(proxy + "/v1/messages", json=body, headers={"x-api-key": KEY})
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]


def test_unknown_model_and_upstream_failure_in_anthropics_shape(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(
            model="nope", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.APIStatusError) as e:
        client.messages.create(
            model="bad", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == 502 and e.value.body["error"]["type"] == "api_error"


def test_a_failed_stream_ends_with_an_error_event_not_message_stop(proxy):
    with httpx.stream(
        "POST",
        proxy + "/v1/messages",
        json={"model": "bad", "max_tokens": 8, "stream": True,
              "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": KEY},
        timeout=30,
    ) as r:  # fmt: skip
        text = "".join(r.iter_text())
    events = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert events[-1] == "error" and "message_stop" not in events


def test_a_stream_the_upstream_cuts_midway_ends_with_an_error_event(proxy):
    with httpx.stream(
        "POST",
        proxy + "/v1/messages",
        json={"model": "drop", "max_tokens": 8, "stream": True,
              "messages": [{"role": "user", "content": "one two three four"}]},
        headers={"x-api-key": KEY},
        timeout=30,
    ) as r:  # fmt: skip
        text = "".join(r.iter_text())
    events = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert "content_block_delta" in events  # it had started
    assert events[-1] == "error" and "message_stop" not in events
