"""OpenAI Responses conformance of the translated path, case by case from the API reference
(the official SDK's types, generated from it): the ``response`` object and every key it
carries, ``status`` and ``incomplete_details``, output items and their ids, usage details,
function calls both ways, the event stream on the raw wire and through
``client.responses.stream``, and what chat completions cannot carry refused by name.

Every backend a Responses request can be translated onto: an OpenAI-protocol upstream on
loopback (direct and through litellm), the embedded local model, a model whose first
deployment fails and falls back, and a model with the CoT knob on.
"""

import json

import httpx
import openai
import pytest

from tests.proxy import conformance
from tests.proxy.conformance import COUNT_TO_TEN
from tests.proxy.fake_upstream import RICH_TOOL_CALLS, RICH_USAGE, make_upstream_app
from tests.proxy.servers import serve

KEY = "sk-responses-conformance"
RESPONSE_KEYS = {
    "id", "object", "created_at", "status", "error", "incomplete_details", "instructions",
    "max_output_tokens", "model", "output", "parallel_tool_calls", "previous_response_id",
    "reasoning", "store", "temperature", "text", "tool_choice", "tools", "top_p", "truncation",
    "usage", "user", "metadata",
}  # fmt: skip
"""The keys the reference's Response carries (null where unset)."""
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
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
    return openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(gateway, body):
    return httpx.post(
        gateway + "/v1/responses", json=body, headers={"authorization": f"Bearer {KEY}"},
        timeout=60,
    )  # fmt: skip


def raw_events(gateway, body):
    """The events of a streamed request, read off the wire."""
    return [
        data
        for _, data in conformance.raw_events(
            gateway + "/v1/responses", body, {"authorization": f"Bearer {KEY}"}
        )
    ]


def sent(upstream):
    return httpx.get(upstream + "/_calls").json()["last_body"]


@pytest.mark.parametrize("model", ["ok", "local", "primary", "knob"])
def test_a_response_carries_every_key_of_the_reference(gateway, model):
    r = post(gateway, {"model": model, "input": "Say hi.", "max_output_tokens": 16})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body.keys() >= RESPONSE_KEYS
    assert body["id"].startswith("resp_") and body["object"] == "response"
    assert body["status"] in ("completed", "incomplete") and body["error"] is None
    assert body["model"] == model and body["store"] is False
    assert body["max_output_tokens"] == 16 and body["previous_response_id"] is None
    [message] = body["output"]
    assert message["id"].startswith("msg_") and message["type"] == "message"
    assert message["role"] == "assistant" and message["status"] == body["status"]
    assert message["content"][0]["type"] == "output_text"
    assert message["content"][0]["annotations"] == []
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0


@pytest.mark.parametrize("model", ["ok", "local"])
def test_a_cut_answer_is_incomplete_and_says_why(client, model):
    r = client.responses.create(model=model, input=COUNT_TO_TEN, max_output_tokens=2)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 2


def test_usage_details_come_from_the_upstream(client):
    r = client.responses.create(model="rich", input="weather in Oslo?", tools=[WEATHER])
    assert r.usage.input_tokens == RICH_USAGE["prompt_tokens"]
    assert r.usage.input_tokens_details.cached_tokens == 16
    assert r.usage.output_tokens_details.reasoning_tokens == 5
    r = client.responses.create(model="reasoner", input="hello")
    assert [item.type for item in r.output] == ["reasoning", "message"]
    assert r.output[0].id.startswith("rs_") and r.output[0].content[0].text


def test_function_calls_come_back_and_their_outputs_go_up(client, upstream):
    r = client.responses.create(
        model="rich", input="weather in Oslo?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False,
    )  # fmt: skip
    calls = [item for item in r.output if item.type == "function_call"]
    assert [(c.call_id, c.name) for c in calls] == [
        (c["id"], c["function"]["name"]) for c in RICH_TOOL_CALLS
    ]
    assert all(c.id.startswith("fc_") and c.status == "completed" for c in calls)
    assert json.loads(calls[0].arguments) == json.loads(RICH_TOOL_CALLS[0]["function"]["arguments"])
    body = sent(upstream)
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "weather of a city",
        "parameters": WEATHER["parameters"]}}]  # fmt: skip
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False

    client.responses.create(
        model="ok", tools=[WEATHER],
        input=[
            {"role": "user", "content": "weather in Oslo?"},
            *[{"type": "function_call", "call_id": c.call_id, "name": c.name,
               "arguments": c.arguments} for c in calls],
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "12 °C"},
            {"type": "function_call_output", "call_id": calls[1].call_id, "output": "09:00"},
            {"role": "user", "content": "and tomorrow?"},
        ],
    )  # fmt: skip
    messages = sent(upstream)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == [c.call_id for c in calls]
    assert messages[2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "12 °C"}


def test_a_streamed_function_call_arrives_as_argument_deltas(gateway, client):
    body = {"model": "rich", "input": "weather in Oslo?", "tools": [WEATHER]}
    events = raw_events(gateway, body)
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [e["name"] for e in done] == ["get_weather", "get_time"]
    assert json.loads(done[0]["arguments"]) == json.loads(
        RICH_TOOL_CALLS[0]["function"]["arguments"]
    )
    with client.responses.stream(**body) as stream:
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]


@pytest.mark.parametrize("model", ["ok", "local", "primary"])
def test_the_event_stream_follows_the_reference(gateway, model):
    events = raw_events(gateway, {"model": model, "input": "Say hi.", "max_output_tokens": 16})
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1 and ids.pop().startswith("resp_")
    assert events[0]["response"].keys() >= RESPONSE_KEYS
    assert events[0]["response"]["status"] == "in_progress"
    # a message: added, its part added, text deltas, then done in reverse order
    order = [k for k in kinds if k.startswith(("response.output", "response.content_part"))]
    assert order[:2] == ["response.output_item.added", "response.content_part.added"]
    assert order[-3:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done"]  # fmt: skip
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == deltas
    assert final["usage"]["output_tokens"] > 0


def test_the_sdks_stream_helper_and_a_plain_call_agree(client):
    asked = {"model": "local", "input": COUNT_TO_TEN, "max_output_tokens": 40}
    plain = client.responses.create(**asked)
    with client.responses.stream(**asked) as stream:
        final = stream.get_final_response()
    assert final.output_text == plain.output_text and final.status == plain.status
    assert final.usage.input_tokens == plain.usage.input_tokens


def test_structured_output_reaches_the_upstream_as_response_format(client, upstream):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    client.responses.create(
        model="ok", input="x",
        text={"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert sent(upstream)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"tools": [{"type": "web_search"}]}, "web_search"),
        ({"truncation": "auto"}, "truncation"),
        ({"include": ["file_search_call.results"]}, "file_search_call.results"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": [{"type": "input_image", "file_id": "f_1"}]}, "input_image"),
    ],
)
def test_what_chat_completions_cannot_carry_is_refused_by_name(gateway, extra, fragment):
    r = post(gateway, {"model": "ok", "input": "x", **extra})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]
