"""The Responses and Messages APIs in front of upstreams that speak them: every field the
client sends reaches the upstream as sent, every byte the upstream answers reaches the client,
compression changes only the texts it compresses, and faults end in each API's own error
shape. The official ``openai`` and ``anthropic`` SDKs talk to a real gateway on loopback; the
upstream is a real HTTP server speaking both protocols (``tests/proxy/fake_native.py``)."""

import json

import anthropic
import httpx
import openai
import pytest

from tests.proxy.fake_native import ARGUMENTS, X_PROVIDER, make_native_app
from tests.proxy.servers import serve
from tokenskip.lossless import lossless
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

KEY = "sk-gateway-native"
UPSTREAM_KEY = "sk-upstream-secret"
OFF = {"enabled": False}
WORDS = {"prompt_ratio": 0.7}
"""The default policy with words dropped from documents (off by default)."""
DOC = " ".join(
    f"Section {i}. The reservoir on the north ridge held water for the town through the dry "
    f"season of year {1900 + i}, and the council kept its records in the old mill."
    for i in range(40)
)
TOOL_JSON = json.dumps(
    [{"id": i, "name": f"item {i}", "tags": ["a", "b"], "price": i * 1.5} for i in range(60)],
    indent=4,
)


@pytest.fixture(scope="module")
def upstream():
    with serve(make_native_app()) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    openai_base = {"api_base": upstream + "/v1", "api_key": UPSTREAM_KEY}
    anthropic_base = {"api_base": upstream, "api_key": UPSTREAM_KEY}

    def oa(name, model, policy=OFF, **extra):
        return {"model_name": name, "litellm_params": {"model": f"openai/{model}", **openai_base,
                                                       **extra}, "tokenskip": policy}  # fmt: skip

    def an(name, model, policy=OFF, **extra):
        return {"model_name": name, "litellm_params": {"model": f"anthropic/{model}",
                                                       **anthropic_base, **extra},
                "tokenskip": policy}  # fmt: skip

    config = {
        "model_list": [
            oa("rich", "rich"),  # same name upstream: nothing to rewrite
            oa("agent", "rich"),
            oa("echo", "echo", WORDS),  # the default policy, words dropped
            oa("fail", "fail500"),
            oa("bad", "bad400"),
            oa("cut", "cut"),
            oa("limited", "ratelimit"),
            oa("stall", "stall", timeout=1),
            an("claude-rich", "rich"),
            an("claude-echo", "echo", WORDS),
            an("claude-fail", "fail500"),
            an("claude-bad", "bad400"),
            an("claude-overload", "overload"),
            an("claude-cut", "cut"),
            an("claude-limited", "ratelimit"),
        ],
        "router_settings": {"num_retries": 0},
    }
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(api_keys=KEY, ledger_url=f"sqlite:///{ledger}")
    with serve(create_app(settings, parse_config(config, settings))) as url:
        yield url


def calls(upstream):
    return httpx.get(upstream + "/_calls").json()


def sent(upstream):
    return json.loads(calls(upstream)["last_raw"])


def post(proxy, path, body, **kw):
    headers = {"authorization": f"Bearer {KEY}", **kw.pop("headers", {})}
    return httpx.post(proxy + path, json=body, headers=headers, timeout=30, **kw)


def raw_stream(proxy, path, body):
    with httpx.stream(
        "POST", proxy + path, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=30
    ) as r:
        return r.status_code, b"".join(r.iter_bytes())


def savings(proxy):
    return httpx.get(proxy + "/v1/savings", headers={"authorization": f"Bearer {KEY}"}).json()


# -- Responses: requests ---------------------------------------------------------------------
TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Weather for a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                    "required": ["city"], "additionalProperties": False}, "strict": True},
    {"type": "web_search_preview", "search_context_size": "low"},
]  # fmt: skip
RESPONSES_FIELDS = {
    "tools": TOOLS,
    "tool_choice": {"type": "function", "name": "get_weather"},
    "text": {"format": {"type": "json_schema", "name": "answer", "strict": True,
                        "schema": {"type": "object", "properties": {"a": {"type": "number"}}}}},
    "input": [
        {"role": "user", "content": [
            {"type": "input_text", "text": "What is on this image, and the weather?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=",
             "detail": "low"},
            {"type": "input_file", "file_id": "file-abc"}]},
        {"id": "rs_0", "type": "reasoning", "summary": [], "encrypted_content": "gAAAA-prior"},
        {"type": "function_call", "call_id": "call_0", "name": "get_weather",
         "arguments": ARGUMENTS, "id": "fc_0"},
        {"type": "function_call_output", "call_id": "call_0", "output": "18 C, clear"},
        {"type": "computer_call_output", "call_id": "cc_0",
         "output": {"type": "computer_screenshot", "image_url": "data:image/png;base64,AA=="}},
    ],
    "reasoning": {"effort": "low", "summary": "auto"},
    "include": ["reasoning.encrypted_content"],
    "store": False,
    "max_output_tokens": 64,
    "metadata": {"trace": "t-1"},
    "x_new_provider_field": {"nested": [1, {"b": None}]},
}  # fmt: skip


def test_the_clients_bytes_reach_the_upstream_unchanged(proxy, upstream):
    body = b'{ "model" : "rich",\n  "input": "caf\\u00e9 \xe2\x98\x95",  "x_odd": [1.50, 2e3] }'
    r = httpx.post(
        proxy + "/v1/responses",
        content=body,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert calls(upstream)["last_raw"].encode() == body
    headers = calls(upstream)["last_headers"]
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # never the gateway's key


@pytest.mark.parametrize("field", sorted(RESPONSES_FIELDS))
def test_each_responses_field_reaches_the_upstream_as_sent(proxy, upstream, field):
    body = {"model": "agent", "input": "Hi", field: RESPONSES_FIELDS[field]}
    r = post(proxy, "/v1/responses", body)
    assert r.status_code == 200, r.text
    got = sent(upstream)
    assert got[field] == RESPONSES_FIELDS[field]
    assert got["model"] == "rich" and "tokenskip" not in got
    assert set(got) == set(body)


def test_the_upstreams_response_reaches_the_client_whole(proxy, upstream):
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)
    response = client.responses.create(model="agent", input="Weather in Paris?", tools=TOOLS)
    upstream_answer = json.loads(calls(upstream)["last_answer"])
    got = response.model_dump(exclude_unset=True)
    for key, value in upstream_answer.items():
        if key == "model":
            assert got[key] == "agent"
        elif key == "usage":
            assert {k: got[key][k] for k in value} == value  # the gateway only adds beside
        else:
            assert got[key] == value, key
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "function_call", "message"]
    assert response.output[1].arguments == ARGUMENTS
    assert got["x_provider"] == X_PROVIDER
    assert got["usage"]["prompt_tokens_saved"] == 0


def test_the_upstreams_response_headers_reach_the_client(proxy):
    from tests.proxy.fake_native import PROVIDER_HEADERS

    for path, body in (("/v1/responses", {"model": "agent", "input": "x"}),
                       ("/v1/messages", {"model": "claude-rich", "max_tokens": 8,
                                         "messages": [{"role": "user", "content": "x"}]})):  # fmt: skip
        for stream in (False, True):
            r = post(proxy, path, {**body, "stream": stream})
            assert r.status_code == 200
            for name, value in PROVIDER_HEADERS.items():
                assert r.headers[name] == value, (path, stream, name)
            assert r.headers["x-tokenskip-cot-method"] == "none"


def test_a_responses_stream_is_the_upstreams_bytes(proxy, upstream):
    status, data = raw_stream(
        proxy, "/v1/responses", {"model": "agent", "input": "Weather?", "stream": True}
    )
    assert status == 200
    assert data == calls(upstream)["last_answer"].encode()
    assert b"response.function_call_arguments.delta" in data
    assert b"response.provider.custom_event" in data


def test_the_sdks_stream_helper_assembles_a_passed_through_stream(proxy):
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)
    with client.responses.stream(model="agent", input="Weather?", tools=TOOLS[:1]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    assert final.output[1].arguments == ARGUMENTS
    assert final.output_text.startswith("Checking the weather.")


def test_compression_changes_only_the_texts_it_compresses(proxy, upstream):
    body = {
        "model": "echo",
        "instructions": "Answer from the records only.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": DOC}]},
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": TOOL_JSON},
            {"role": "user", "content": "Which year did section 3 cover?"},
        ],
        "tools": TOOLS[:1],
        "x_new_provider_field": 7,
    }
    r = post(proxy, "/v1/responses", body)
    assert r.status_code == 200, r.text
    got = sent(upstream)
    assert got["input"][2]["output"] == lossless(TOOL_JSON).text != TOOL_JSON
    assert len(got["input"][0]["content"][0]["text"]) < len(DOC)
    assert "1903" in got["input"][0]["content"][0]["text"]  # numbers are guarded
    for key in ("instructions", "tools", "x_new_provider_field"):
        assert got[key] == body[key]
    assert got["input"][1] == body["input"][1] and got["input"][3] == body["input"][3]
    answer = r.json()
    assert answer["usage"]["prompt_tokens_saved"] > 0
    kinds = {part["kind"] for part in answer["tokenskip"]["compressed"]}
    assert kinds == {"context", "tool_output"}
    assert int(r.headers["x-tokenskip-prompt-tokens-saved"]) > 0


# -- Responses: faults -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, status, fragment",
    [("fail", 502, "upstream exploded"), ("bad", 400, "String should match"),
     ("stall", 504, "timed out"), ("limited", 429, "Rate limit")],
)  # fmt: skip
def test_responses_upstream_failures_in_openais_shape(proxy, model, status, fragment):
    r = post(proxy, "/v1/responses", {"model": model, "input": "x"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_a_responses_stream_cut_mid_event_ends_with_an_error_event(proxy):
    before = savings(proxy)["totals"]
    status, data = raw_stream(
        proxy, "/v1/responses", {"model": "cut", "input": "x", "stream": True}
    )
    assert status == 200
    events = [e for e in data.decode().split("\n\n") if e.strip()]
    payloads = [json.loads(e.split("data: ", 1)[1]) for e in events]  # every event is whole
    assert [p["type"] for p in payloads] == ["response.created", "response.in_progress", "error"]
    assert payloads[-1]["code"] == "upstream_incomplete"
    assert payloads[-1]["sequence_number"] == 2
    after = savings(proxy)["totals"]
    assert after["requests"] == before["requests"] + 1
    assert after["errors"] == before["errors"] + 1


def test_the_sdk_sees_a_cut_stream_as_an_error_event(proxy):
    client = openai.OpenAI(base_url=proxy + "/v1", api_key=KEY, max_retries=0)
    events = list(client.responses.create(model="cut", input="x", stream=True))
    assert events[-1].type == "error" and "broke off" in events[-1].message


# -- Messages --------------------------------------------------------------------------------
MESSAGES_FIELDS = {
    "tools": [
        {"name": "get_weather", "description": "Weather", "input_schema": {
            "type": "object", "properties": {"city": {"type": "string"}}},
         "cache_control": {"type": "ephemeral"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
    ],
    "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this, and the weather?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "doc"}, "citations": {"enabled": True}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Need the tool.", "signature": "sig-0"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "tool_use", "id": "toolu_0", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_0", "content": [
                {"type": "text", "text": "18 C"}], "is_error": False},
            {"type": "search_result", "source": "s", "title": "t",
             "content": [{"type": "text", "text": "x"}]}]},
    ],
    "stop_sequences": ["\n\nHuman:"],
    "metadata": {"user_id": "u-1"},
    "service_tier": "auto",
    "x_new_provider_field": {"nested": [1, {"b": None}]},
}  # fmt: skip


@pytest.fixture
def claude(proxy):
    return anthropic.Anthropic(base_url=proxy, api_key=KEY, max_retries=0, timeout=30)


@pytest.mark.parametrize("field", sorted(MESSAGES_FIELDS))
def test_each_messages_field_reaches_the_upstream_as_sent(proxy, upstream, field):
    body = {"model": "claude-rich", "max_tokens": 4096,
            "messages": [{"role": "user", "content": "Hi"}], field: MESSAGES_FIELDS[field]}  # fmt: skip
    r = post(proxy, "/v1/messages", body, headers={"anthropic-beta": "fancy-2026-01-01"})
    assert r.status_code == 200, r.text
    got = sent(upstream)
    assert got[field] == MESSAGES_FIELDS[field]
    assert got["model"] == "rich" and set(got) == set(body)
    headers = calls(upstream)["last_headers"]
    assert headers["x-api-key"] == UPSTREAM_KEY and "authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "fancy-2026-01-01"


def test_the_upstreams_message_reaches_the_client_whole(claude, upstream):
    message = claude.messages.create(
        model="claude-rich", max_tokens=64, messages=[{"role": "user", "content": "Weather?"}]
    )
    upstream_answer = json.loads(calls(upstream)["last_answer"])
    got = message.model_dump(exclude_unset=True)
    for key, value in upstream_answer.items():
        if key == "model":
            assert got[key] == "claude-rich"
        elif key == "usage":
            assert {k: got[key][k] for k in value} == value
        else:
            assert got[key] == value, key
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]


def test_a_messages_stream_is_the_upstreams_bytes(proxy, upstream, claude):
    body = {"model": "claude-rich", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "Weather?"}]}  # fmt: skip
    status, data = raw_stream(proxy, "/v1/messages", body)
    assert status == 200 and data == calls(upstream)["last_answer"].encode()
    with claude.messages.stream(
        model="claude-rich", max_tokens=64, messages=[{"role": "user", "content": "Weather?"}]
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[2].input == json.loads(ARGUMENTS)
    assert final.usage.output_tokens == 11


def test_cache_control_content_and_its_prefix_are_never_compressed(proxy, upstream):
    body = {
        "model": "claude-echo",
        "max_tokens": 64,
        "system": [{"type": "text", "text": DOC, "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": DOC}]},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": [
                {"type": "text", "text": DOC, "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                               "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": TOOL_JSON},
                {"type": "text", "text": DOC}]},
        ],
    }  # fmt: skip
    r = post(proxy, "/v1/messages", body)
    assert r.status_code == 200, r.text
    got = sent(upstream)
    assert got["system"] == body["system"]
    assert got["messages"][:4] == body["messages"][:4]  # up to the last breakpoint: as sent
    last = got["messages"][4]["content"]
    assert last[0]["content"] == lossless(TOOL_JSON).text != TOOL_JSON
    assert len(last[1]["text"]) < len(DOC)
    assert r.json()["usage"]["prompt_tokens_saved"] > 0


@pytest.mark.parametrize(
    "model, status, kind",
    [("claude-fail", 502, "api_error"), ("claude-bad", 400, "invalid_request_error"),
     ("claude-overload", 502, "api_error"), ("claude-limited", 429, "rate_limit_error")],
)  # fmt: skip
def test_messages_upstream_failures_in_anthropics_shape(claude, model, status, kind):
    with pytest.raises(anthropic.APIStatusError) as e:
        claude.messages.create(
            model=model, max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert e.value.status_code == status
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == kind


def test_a_messages_stream_cut_mid_event_ends_with_an_error_event(proxy, claude):
    body = {"model": "claude-cut", "max_tokens": 8, "stream": True,
            "messages": [{"role": "user", "content": "x"}]}  # fmt: skip
    status, data = raw_stream(proxy, "/v1/messages", body)
    events = [e for e in data.decode().split("\n\n") if e.strip()]
    kinds = [e.splitlines()[0] for e in events]
    assert kinds == ["event: message_start", "event: ping", "event: error"]
    assert json.loads(events[-1].split("data: ", 1)[1])["error"]["type"] == "api_error"
    with (
        pytest.raises(anthropic.APIStatusError),
        claude.messages.stream(
            model="claude-cut", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        stream.get_final_message()


# -- bad input -------------------------------------------------------------------------------
def test_a_tool_output_without_its_call_is_refused_on_both_paths(proxy):
    for model in ("agent", "echo"):
        r = post(proxy, "/v1/responses", {"model": model, "input": [
            {"type": "function_call_output", "call_id": "nope", "output": "1"}]})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].call_id"
    r = post(proxy, "/v1/messages", {"model": "claude-rich", "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "1"}]}]})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "tool_use_id" in r.json()["error"]["message"]


def test_messages_count_tokens_and_usage_are_in_the_ledger(proxy, claude):
    before = savings(proxy)["totals"]
    claude.messages.create(
        model="claude-rich", max_tokens=8, messages=[{"role": "user", "content": "a b c"}]
    )
    after = savings(proxy)["totals"]
    assert after["requests"] == before["requests"] + 1
    # the upstream's input (3 words) + cache writes (2) + cache reads (5)
    assert after["prompt_tokens_sent"] - before["prompt_tokens_sent"] == 10
    assert after["completion_tokens"] - before["completion_tokens"] == 11


def test_count_tokens_comes_from_the_anthropic_upstream_on_what_would_be_sent(claude, upstream):
    got = claude.messages.count_tokens(
        model="claude-rich", messages=[{"role": "user", "content": "a b c"}],
        system="be brief",
    )  # fmt: skip
    assert got.input_tokens == 1000 + 5
    sent_body = sent(upstream)
    assert sent_body["model"] == "rich" and sent_body["system"] == "be brief"
    assert "max_tokens" not in sent_body  # the client's body, not the gateway's check
