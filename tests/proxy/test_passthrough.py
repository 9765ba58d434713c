"""What the gateway does not transform passes through: tool calls, logprobs, refusals,
fingerprints, usage details, on the direct path and through litellm, streamed or not."""

import json

import httpx
import openai
import pytest

from tests.proxy.fake_upstream import (
    RICH_EXTRA,
    RICH_LOGPROBS,
    RICH_TOOL_CALLS,
    RICH_USAGE,
    make_upstream_app,
)
from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "f"]}},
                "required": ["city"],
            },
            "strict": True,
        },
    }
]
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
}


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app()) as url:
        yield url


@pytest.fixture(scope="module", params=["direct", "litellm"])
def gateway(request, upstream, tmp_path_factory):
    config = {
        "model_list": [
            {
                "model_name": "agent",
                "litellm_params": {
                    "model": "openai/rich",
                    "api_base": upstream + "/v1",
                    "api_key": "k",
                },
            }
        ],
        "tokenskip_settings": {"direct_openai_compatible": request.param == "direct"},
    }
    settings = Settings(ledger_url=f"sqlite:///{tmp_path_factory.mktemp('l') / 'l.db'}")
    app = create_app(settings, parse_config(config, settings))
    with serve(app) as url:
        yield url, request.param


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway[0] + "/v1", api_key="unused", max_retries=0)


def last_body(upstream):
    return httpx.get(upstream + "/_calls").json()["last_body"]


ASK = {
    "model": "agent",
    "messages": [
        {"role": "user", "content": "Weather and time in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c0", "content": '{"temp": 3}'},
    ],
    "tools": TOOLS,
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "response_format": RESPONSE_FORMAT,
    "logprobs": True,
    "top_logprobs": 2,
}


def test_request_fields_reach_the_upstream_as_sent(client, upstream):
    client.chat.completions.create(**ASK)
    sent = last_body(upstream)
    for key in (
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "logprobs",
        "top_logprobs",
    ):
        assert sent[key] == ASK[key], key
    assert sent["messages"][1]["tool_calls"] == ASK["messages"][1]["tool_calls"]
    assert sent["messages"][2]["tool_call_id"] == "c0"


def test_tool_calls_logprobs_and_usage_details_come_back(client, gateway):
    r = client.chat.completions.create(**ASK)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.model_dump() for c in choice.message.tool_calls] == RICH_TOOL_CALLS
    assert choice.logprobs.model_dump() == RICH_LOGPROBS
    assert r.system_fingerprint == RICH_EXTRA["system_fingerprint"]
    assert r.service_tier == RICH_EXTRA["service_tier"]
    assert r.usage.completion_tokens_details.reasoning_tokens == 5
    assert r.usage.prompt_tokens_details.cached_tokens == 16
    assert r.usage.prompt_tokens == RICH_USAGE["prompt_tokens"]
    assert r.usage.model_extra["prompt_tokens_saved"] == 0  # the gateway's fields beside them
    if gateway[1] == "direct":
        assert r.id == "chatcmpl-rich-0001"  # the upstream's body, not a rebuilt one


def test_streamed_tool_call_deltas_assemble_to_the_same_calls(client):
    stream = client.chat.completions.create(
        **ASK, stream=True, stream_options={"include_usage": True}
    )
    calls: dict[int, dict] = {}
    finish, usage, logprobs = None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            if choice.logprobs is not None and choice.logprobs.content:
                logprobs.extend(lp.model_dump() for lp in choice.logprobs.content)
            for d in choice.delta.tool_calls or []:
                call = calls.setdefault(
                    d.index,
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = d.id or call["id"]
                if d.function is not None:
                    call["function"]["name"] += d.function.name or ""
                    call["function"]["arguments"] += d.function.arguments or ""
    assert [calls[i] for i in sorted(calls)] == RICH_TOOL_CALLS
    assert finish == "tool_calls"
    assert logprobs == RICH_LOGPROBS["content"]
    assert usage.completion_tokens_details.reasoning_tokens == 5
    assert usage.model_extra["prompt_tokens_saved"] == 0


def test_the_raw_stream_is_the_upstreams_chunks(gateway):
    url, mode = gateway
    if mode != "direct":
        pytest.skip("litellm re-serializes chunks; the field tests above cover that path")
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**ASK, "stream": True}, timeout=10
    ) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]"
    assert all(
        c["id"] == "chatcmpl-rich-0001" and c["system_fingerprint"] == "fp_fake_42" for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
    }
    assert not any(
        c.get("usage") for c in chunks
    )  # not asked for: the upstream's usage chunk is not sent
