"""The OpenAI Responses API through the gateway, with the official ``openai`` SDK
(``client.responses``): string and item input, instructions, streams with the Responses
event sequence, function calls, reasoning, previous_response_id refused, and errors in
OpenAI's shape, over an OpenAI-protocol upstream on loopback (direct and through litellm).

The upstream speaks chat completions only: on the direct path the gateway first tries its
``/v1/responses`` (the same-protocol pass-through, ``test_native_passthrough.py``), sees the
endpoint is missing, and translates from then on, so every test here also covers that."""

import httpx
import openai
import pytest

from tests.proxy.fake_upstream import REASONING, make_upstream_app
from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config


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
            {"model_name": "reasoner", "litellm_params": {"model": "openai/reasoner", **base}},
            {"model_name": "bad", "litellm_params": {"model": "openai/fail500", **base}},
            {"model_name": "drop", "litellm_params": {"model": "openai/drop", **base}},
        ],
        "router_settings": {"num_retries": 0},
        "tokenskip_settings": {"direct_openai_compatible": request.param == "direct"},
    }
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(ledger_url=f"sqlite:///{ledger}")
    with serve(create_app(settings, parse_config(config, settings))) as url:
        yield url


@pytest.fixture
def client(proxy):
    return openai.OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0, timeout=30)


def sent(upstream):
    return httpx.get(upstream + "/_calls").json()["last_body"]


def test_string_input_with_instructions(client, upstream):
    r = client.responses.create(model="ok", input="hello there", instructions="Be brief.")
    assert r.object == "response" and r.status == "completed" and r.model == "ok"
    assert r.output_text == "echo: hello there"
    assert r.usage.input_tokens == 4 and r.usage.output_tokens == 3  # the upstream's counts
    body = sent(upstream)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert r.model_extra["tokenskip"]["cot_method"] == "none"


def test_item_input_and_max_output_tokens(client, upstream):
    r = client.responses.create(
        model="ok",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ],
        max_output_tokens=16,
    )
    assert r.output_text == "echo: second"
    body = sent(upstream)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    # the chat reference's field for it (max_tokens is deprecated there)
    assert body["max_completion_tokens"] == 16 and "max_tokens" not in body


def test_a_stream_has_the_responses_event_sequence(client):
    events = list(client.responses.create(model="ok", input="stream me please", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for needed in ("response.output_item.added", "response.output_text.delta",
                   "response.output_text.done", "response.output_item.done"):  # fmt: skip
        assert needed in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "echo: stream me please"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens > 0


def test_the_sdks_stream_helper_assembles_the_answer(client):
    with client.responses.stream(model="ok", input="helper stream") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "echo: helper stream"


def test_function_calls_come_back_as_items(client, upstream):
    tools = [{"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}]  # fmt: skip
    r = client.responses.create(model="rich", input="weather in Oslo?", tools=tools)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and '"Oslo"' in calls[0].arguments
    assert sent(upstream)["tools"][0]["function"]["name"] == "get_weather"
    streamed = list(
        client.responses.create(model="rich", input="weather?", tools=tools, stream=True)
    )
    items = [e.item for e in streamed if e.type == "response.output_item.done"]
    assert any(i.type == "function_call" and i.name == "get_weather" for i in items)


def test_reasoning_comes_back_as_a_reasoning_item(client):
    r = client.responses.create(model="reasoner", input="think first")
    kinds = [o.type for o in r.output]
    assert "reasoning" in kinds and r.output_text == "echo: think first"
    assert r.usage.output_tokens_details.reasoning_tokens == len(REASONING.split())


def test_a_streamed_reasoning_item_comes_first_with_its_index(client):
    events = list(client.responses.create(model="reasoner", input="think first", stream=True))
    added = [
        (e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"
    ]
    assert added == [(0, "reasoning"), (1, "message")]
    deltas = {e.output_index for e in events if e.type == "response.output_text.delta"}
    assert deltas == {1}
    final = events[-1].response
    assert [o.type for o in final.output] == ["reasoning", "message"]


def test_a_stored_conversation_is_refused_clearly(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="ok", input="again", extra_body={"conversation": "conv_1"})
    assert e.value.body["param"] == "conversation"


def test_previous_response_id_is_refused_clearly(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="ok", input="again", previous_response_id="resp_123")
    assert e.value.body["param"] == "previous_response_id"
    assert "stores no responses" in e.value.body["message"]


@pytest.mark.parametrize(
    "body, status",
    [
        ({"model": "ok"}, 422),
        ({"model": "ok", "input": ""}, 400),
        ({"model": "ok", "input": ["not an item"]}, 422),
        ({"model": "nope", "input": "x"}, 404),
        ({"input": "x"}, 422),
        ({"model": "ok", "input": [{"type": "mcp_list_tools", "server_label": "s"}]}, 400),
        (
            {"model": "ok", "input": [{"role": "user", "content": [{"type": "input_hologram"}]}]},
            400,
        ),
        (
            {
                "model": "ok",
                "input": [{"type": "function_call_output", "call_id": "c9", "output": "1"}],
            },
            400,
        ),
        ({"model": "ok", "input": [{"content": "no role, no type"}]}, 400),
    ],
)
def test_bad_requests_get_openai_shaped_errors(proxy, body, status):
    r = httpx.post(proxy + "/v1/responses", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) >= {"message", "type"}


def test_an_upstream_failure_is_a_502(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.responses.create(model="bad", input="x")
    assert e.value.status_code == 502


def test_an_unknown_item_type_is_refused_by_name_not_dropped(proxy, upstream):
    before = httpx.get(upstream + "/_calls").json()["total"]
    r = httpx.post(proxy + "/v1/responses", json={"model": "ok", "input": [
        {"role": "user", "content": "hi"}, {"type": "local_shell_call", "id": "x"}]})  # fmt: skip
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "input[1].type" and "local_shell_call" in r.text
    assert httpx.get(upstream + "/_calls").json()["total"] == before  # nothing went upstream


def test_a_stream_the_upstream_cuts_ends_in_response_failed(proxy):
    with httpx.stream(
        "POST", proxy + "/v1/responses", json={"model": "drop", "input": "one two three four",
                                              "stream": True}, timeout=30,
    ) as r:  # fmt: skip
        text = "".join(r.iter_text())
    kinds = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
