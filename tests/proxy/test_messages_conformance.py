"""Anthropic Messages conformance of the translated path, case by case from the API
reference (the official SDK's types, generated from it): the ``message`` object and its
keys, ``stop_reason`` and ``stop_sequence``, usage (cache reads apart), tool use both ways,
the event stream on the raw wire and through ``client.messages.stream``, and
``count_tokens`` against the ``usage`` of the same request.

Every backend a Messages request can be translated onto: an OpenAI-protocol upstream on
loopback (direct and through litellm), the embedded local model, a model whose first
deployment fails and falls back, and a model with the CoT knob on.
"""

import json

import anthropic
import httpx
import pytest

from tests.proxy import conformance
from tests.proxy.conformance import COUNT_TO_TEN
from tests.proxy.fake_upstream import RICH_TOOL_CALLS, RICH_USAGE, make_upstream_app
from tests.proxy.servers import serve

KEY = "sk-messages-conformance"
MESSAGE_KEYS = {"id", "type", "role", "content", "model", "stop_reason", "stop_sequence", "usage"}
"""The keys the reference's Message always carries."""
USAGE_KEYS = {"input_tokens", "output_tokens", "cache_creation_input_tokens",
              "cache_read_input_tokens"}  # fmt: skip
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app()) as url:
        yield url


@pytest.fixture(scope="module", params=["direct", "litellm"])
def gateway(request, upstream, tmp_path_factory, smol):
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    with conformance.gateway(upstream, request.param == "direct", KEY, ledger) as url:
        yield url


@pytest.fixture
def client(gateway):
    return anthropic.Anthropic(base_url=gateway, api_key=KEY, max_retries=0, timeout=60)


def post(gateway, body):
    return httpx.post(gateway + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=60)


def raw_events(gateway, body):
    """``(event name, data)`` of a streamed request, read off the wire."""
    return conformance.raw_events(gateway + "/v1/messages", body, {"x-api-key": KEY})


def sent(upstream):
    return httpx.get(upstream + "/_calls").json()["last_body"]


@pytest.mark.parametrize("model", ["ok", "local", "primary", "knob"])
def test_a_message_carries_every_key_of_the_reference(gateway, model):
    r = post(gateway, {"model": model, "max_tokens": 16,
                       "messages": [{"role": "user", "content": "Say hi."}]})  # fmt: skip
    assert r.status_code == 200, r.text
    m = r.json()
    assert m.keys() >= MESSAGE_KEYS
    assert m["id"].startswith("msg_") and m["type"] == "message" and m["role"] == "assistant"
    assert m["model"] == model
    assert m["content"] and m["content"][0]["type"] == "text"
    assert m["stop_reason"] in ("end_turn", "max_tokens") and m["stop_sequence"] is None
    assert m["usage"].keys() >= USAGE_KEYS
    assert all(isinstance(m["usage"][k], int) for k in USAGE_KEYS)
    assert m["usage"]["input_tokens"] > 0 and m["usage"]["output_tokens"] > 0


def test_a_stop_sequence_that_ended_the_answer_is_named(client):
    m = client.messages.create(
        model="ok", max_tokens=32, stop_sequences=["never", "there"],
        messages=[{"role": "user", "content": "hello there friend"}],
    )  # fmt: skip
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "there")
    assert m.content[0].text == "echo: hello "


def test_a_local_models_stop_sequence_is_named_streamed_or_not(client):
    asked = {"model": "local", "max_tokens": 30, "stop_sequences": [", 4"],
             "messages": [{"role": "user", "content": COUNT_TO_TEN}]}  # fmt: skip
    m = client.messages.create(**asked)
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", ", 4")
    assert m.content[0].text == "1, 2, 3"
    with client.messages.stream(**asked) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", ", 4")
    assert final.content[0].text == "1, 2, 3"


@pytest.mark.parametrize("model", ["ok", "local"])
def test_max_tokens_stops_the_answer_and_says_so(client, model):
    m = client.messages.create(
        model=model, max_tokens=2, messages=[{"role": "user", "content": COUNT_TO_TEN}]
    )
    assert m.stop_reason == "max_tokens" and m.stop_sequence is None
    assert m.usage.output_tokens == 2


def test_cache_reads_are_apart_from_input_tokens(client):
    m = client.messages.create(
        model="rich", max_tokens=64, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "weather in Oslo?"}],
    )  # fmt: skip
    cached = RICH_USAGE["prompt_tokens_details"]["cached_tokens"]
    assert m.usage.cache_read_input_tokens == cached
    assert m.usage.input_tokens == RICH_USAGE["prompt_tokens"] - cached
    assert m.usage.output_tokens == RICH_USAGE["completion_tokens"]


def test_tool_use_comes_back_and_tool_results_go_up(client, upstream):
    m = client.messages.create(
        model="rich", max_tokens=64, tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[{"role": "user", "content": "weather in Oslo?"}],
    )  # fmt: skip
    assert m.stop_reason == "tool_use"
    uses = [b for b in m.content if b.type == "tool_use"]
    assert [(u.id, u.name) for u in uses] == [
        (c["id"], c["function"]["name"]) for c in RICH_TOOL_CALLS
    ]
    assert uses[0].input == json.loads(RICH_TOOL_CALLS[0]["function"]["arguments"])
    body = sent(upstream)
    assert body["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "weather of a city",
        "parameters": WEATHER_TOOL["input_schema"]}}  # fmt: skip
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False

    client.messages.create(
        model="ok", max_tokens=32, tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": uses[0].id, "content": "12 °C, rain"},
                {"type": "tool_result", "tool_use_id": uses[1].id, "is_error": True,
                 "content": [{"type": "text", "text": "time service down"}]},
                {"type": "text", "text": "and tomorrow?"},
            ]},
        ],
    )  # fmt: skip
    messages = sent(upstream)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == [u.id for u in uses]
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == uses[0].input
    assert messages[2] == {"role": "tool", "tool_call_id": uses[0].id, "content": "12 °C, rain"}
    assert messages[3]["content"] == "Error: time service down"
    assert messages[4]["content"] == [{"type": "text", "text": "and tomorrow?"}]


def test_a_streamed_tool_use_arrives_as_input_json_deltas(gateway, client):
    body = {"model": "rich", "max_tokens": 64, "tools": [WEATHER_TOOL],
            "messages": [{"role": "user", "content": "weather in Oslo?"}]}  # fmt: skip
    events = raw_events(gateway, body)
    starts = [d["content_block"] for e, d in events if e == "content_block_start"]
    assert [b["name"] for b in starts if b["type"] == "tool_use"] == ["get_weather", "get_time"]
    assert any(e == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
               for e, d in events)  # fmt: skip
    with client.messages.stream(**body) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert uses[0].input == json.loads(RICH_TOOL_CALLS[0]["function"]["arguments"])
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("model", ["ok", "local", "primary"])
def test_the_event_stream_follows_the_reference(gateway, model):
    events = raw_events(gateway, {"model": model, "max_tokens": 16,
                                  "messages": [{"role": "user", "content": "Say hi."}]})  # fmt: skip
    names = [e for e, _ in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == [
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start.keys() >= MESSAGE_KEYS and start["id"].startswith("msg_")
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0  # the real count, not a zero
    # each block: start, deltas, stop, in order and by index
    opened = []
    for name, data in events[2:-2]:
        if name == "content_block_start":
            opened.append(data["index"])
        else:
            assert data["index"] == opened[-1]
    assert opened == list(range(len(opened))) and opened
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert delta["usage"].keys() >= USAGE_KEYS and delta["usage"]["output_tokens"] > 0


def test_a_local_models_count_tokens_start_event_and_usage_agree(client):
    asked = {"model": "local", "system": "Answer briefly.",
             "messages": [{"role": "user", "content": COUNT_TO_TEN}]}  # fmt: skip
    counted = client.messages.count_tokens(**asked).input_tokens
    m = client.messages.create(max_tokens=8, **asked)
    assert m.usage.input_tokens == counted
    with client.messages.stream(max_tokens=8, **asked) as stream:
        first = next(iter(stream))
        final = stream.get_final_message()
    assert first.type == "message_start" and first.message.usage.input_tokens == counted
    assert final.usage.input_tokens == counted


def test_count_tokens_counts_the_prompt_as_it_is_sent(client):
    def count(**kw):
        return client.messages.count_tokens(
            model="ok", messages=[{"role": "user", "content": "hi"}], **kw
        ).input_tokens

    brief = count(system="Be brief.")
    longer = count(system="Be brief. You are a careful assistant who answers in French.")
    assert longer > brief  # the system prompt is counted, through the model's chat template
    assert count(system="Be brief.", tools=[WEATHER_TOOL]) > brief  # and so are the tools


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"container": "c_1"}, "container"),
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "f_1"}}]}]}, "image"),
    ],
)  # fmt: skip
def test_what_chat_completions_cannot_carry_is_refused_by_name(gateway, extra, fragment):
    body = {"model": "ok", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    r = post(gateway, {**body, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and fragment in r.json()["error"]["message"]


def test_images_and_documents_reach_the_upstream_as_content_parts(client, upstream):
    client.messages.create(
        model="ok", max_tokens=8,
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain", "data": "a note"}},
            {"type": "text", "text": "describe"},
        ]}],
    )  # fmt: skip
    parts = sent(upstream)["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}
    assert parts[1] == {"type": "text", "text": "Notes\n\na note"}
    assert parts[2] == {"type": "text", "text": "describe"}
