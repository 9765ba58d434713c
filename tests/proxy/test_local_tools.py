"""Tool calls from a local model whose chat template defines them.

The parser is checked on what Qwen2.5's real chat template writes; the gateway end to end on
the embedded SmolLM2 weights served with that template (real uvicorn on loopback, the
official openai and anthropic clients). SmolLM2 was never tuned for tools, which makes it a
fair test of both paths: forced to call a named function it writes a well-formed call, and
left to itself it writes malformed ones, which must come back as text.
"""

import json
from pathlib import Path

import anthropic
import openai
import pytest
from transformers import AutoTokenizer

from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config
from tokenskip.runtime.tool_calls import HERMES, CallBuffer, parse, template_messages, tool_format

KEY = "sk-test-key"
TEMPLATE = (Path(__file__).parent / "data" / "qwen2.5_chat_template.jinja").read_text()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def qwen_tokenizer(smol, tmp_path_factory):
    """The embedded tokenizer with Qwen2.5's chat template (a tool-calling template)."""
    path = tmp_path_factory.mktemp("tokenizer")
    smol.tokenizer.save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def assistant_text(tokenizer, calls, content=""):
    """What the template writes for an assistant turn with these calls (the model's output)."""
    message = {"role": "assistant", "content": content, "tool_calls": calls}
    rendered = tokenizer.apply_chat_template(template_messages([*ASK, message]), tokenize=False)
    turn = rendered.rsplit("<|im_start|>assistant", 1)[1]
    return turn.removesuffix("<|im_end|>\n").lstrip("\n")


def openai_call(name, arguments):
    return {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def test_the_qwen_template_is_recognised_and_smollm2s_is_not(qwen_tokenizer, smol):
    assert tool_format(qwen_tokenizer) == HERMES
    assert tool_format(smol.tokenizer) is None


def test_calls_written_by_the_real_template_parse_back(qwen_tokenizer):
    calls = [
        openai_call("get_weather", {"city": "Paris"}),
        openai_call("get_time", {"city": 'Zürich, "CH"'}),
    ]
    text = assistant_text(qwen_tokenizer, calls, content="Let me look that up.")
    assert text.count("<tool_call>") == 2
    parsed = parse(text, HERMES, {"get_weather", "get_time"})
    assert parsed is not None
    assert parsed.content == "Let me look that up."
    got = [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls
    ]
    assert got == [("get_weather", {"city": "Paris"}), ("get_time", {"city": 'Zürich, "CH"'})]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in parsed.tool_calls)
    assert len({c["id"] for c in parsed.tool_calls}) == 2


def test_the_template_renders_tools_calls_and_results(qwen_tokenizer):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [openai_call("get_weather", {"city": "Paris"})],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    rendered = qwen_tokenizer.apply_chat_template(
        template_messages(history), tools=[WEATHER], tokenize=False, add_generation_prompt=True
    )
    assert '"name": "get_weather"' in rendered and "<tools>" in rendered
    # the arguments are written as an object, not as the JSON string OpenAI sends
    assert '"arguments": {"city": "Paris"}' in rendered
    assert '<tool_response>\n{"temp_c": 21}\n</tool_response>' in rendered


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n</tool_call>',
        '<tool_call>\n{"name": "Paris", "arguments": {}}\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": ["Paris"]}\n</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {}}\nand then some more text',
        "The weather is fine.",
    ],
    ids=[
        "bad-json",
        "unknown-function",
        "arguments-not-an-object",
        "never-closed-before-text",
        "no-call",
    ],
)
def test_malformed_or_absent_calls_are_text(text):
    assert parse(text, HERMES, {"get_weather"}) is None


def test_an_unclosed_call_at_the_very_end_is_still_a_call():
    # stopped at the close tag (parallel_tool_calls: false), which the engine strips
    parsed = parse(
        '<tool_call>\n{"name": "get_weather", "arguments": {}}\n', HERMES, {"get_weather"}
    )
    assert parsed is not None and parsed.content is None
    assert parsed.tool_calls[0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris"}\n}\n```',
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    ],
    ids=["bare", "fenced", "list"],
)
def test_a_call_written_without_its_tags_is_read_when_it_is_the_whole_answer(text):
    # what Qwen2.5-Coder-0.5B writes (reports/local_tools.md)
    parsed = parse(text, HERMES, {"get_weather"})
    assert parsed is not None and parsed.content is None
    assert [json.loads(c["function"]["arguments"]) for c in parsed.tool_calls] == [
        {"city": "Paris"}
    ]


@pytest.mark.parametrize(
    "text",
    [
        'Here is the call: {"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"name": "say_hello", "arguments": {"to": "Ana"}}',
        '{"city": "Paris"}',
        "[1, 2, 3]",
    ],
    ids=["inside-prose", "not-offered", "no-name", "plain-list"],
)
def test_json_that_is_not_a_whole_call_of_an_offered_function_stays_text(text):
    assert parse(text, HERMES, {"get_weather"}) is None


def test_an_answer_that_opens_like_a_bare_call_is_held_to_the_end():
    text = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    buffer = CallBuffer(HERMES)
    assert "".join(buffer.feed(ch) for ch in text) == ""
    held, parsed = buffer.finish({"get_weather"})
    assert held == text and parsed is not None
    other = CallBuffer(HERMES)
    assert "".join(other.feed(ch) for ch in "{not json} but prose") == ""
    held, parsed = other.finish({"get_weather"})
    assert (held, parsed) == ("{not json} but prose", None)


def test_the_stream_buffer_sends_text_and_holds_what_may_be_a_call():
    full = (
        'Checking <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    buffer, sent = CallBuffer(HERMES), []
    for ch in full:
        sent.append(buffer.feed(ch))
    assert "".join(sent) == "Checking "
    held, parsed = buffer.finish({"get_weather"})
    assert held == full[len("Checking ") :]
    assert parsed is not None and parsed.content is None
    plain = CallBuffer(HERMES)
    out = "".join(plain.feed(ch) for ch in "a < b and <tool")
    assert out == "a < b and "  # "<tool" might begin a call: held
    held, parsed = plain.finish({"get_weather"})
    assert (held, parsed) == ("<tool", None)


@pytest.fixture(scope="module")
def tool_model_dir(tmp_path_factory, smol):
    """The embedded SmolLM2 weights with Qwen2.5's chat template."""
    path = tmp_path_factory.mktemp("smol-tools")
    smol.model.save_pretrained(path)
    smol.tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").write_text(TEMPLATE)
    for stale in ("chat_template.json",):
        (path / stale).unlink(missing_ok=True)
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, tool_model_dir):
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(api_keys=KEY, ledger_url=f"sqlite:///{ledger}")
    config = parse_config(
        {
            "model_list": [
                {"model_name": "smol-tools", "local": {"model": str(tool_model_dir)}},
                {"model_name": "smollm2", "local": {"model": "smollm2"}},
            ]
        },
        settings,
    )
    with serve(create_app(settings, config)) as url:
        yield url


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0, timeout=120)


def weather_call(**kw):
    return {"model": "smol-tools", "messages": ASK, "tools": [WEATHER], "max_tokens": 40, **kw}


def test_a_named_tool_choice_comes_back_as_an_openai_tool_call(client):
    r = client.chat.completions.create(**weather_call(tool_choice=NAMED))
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0


def test_the_streamed_tool_call_is_the_same_call(client):
    plain = client.chat.completions.create(**weather_call(tool_choice=NAMED)).choices[0]
    stream = client.chat.completions.create(**weather_call(tool_choice=NAMED, stream=True))
    content, calls, finish = [], {}, None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content.append(delta.content or "")
        for c in delta.tool_calls or []:
            calls[c.index] = (c.function.name, c.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    expected = plain.message.tool_calls[0].function
    assert calls == {0: (expected.name, expected.arguments)}
    assert ("".join(content) or None) == plain.message.content


def test_a_malformed_call_is_returned_as_text_not_an_error(client):
    # left to choose, SmolLM2 names a city instead of a function: no call, its text
    r = client.chat.completions.create(**weather_call(tool_choice="required"))
    choice = r.choices[0]
    assert not choice.message.tool_calls
    assert choice.message.content.startswith("<tool_call>")
    assert choice.finish_reason == "length"
    stream = client.chat.completions.create(**weather_call(tool_choice="required", stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == choice.message.content


def test_tool_choice_none_renders_no_tools(client):
    r = client.chat.completions.create(**weather_call(tool_choice="none"))
    assert r.choices[0].finish_reason in ("stop", "length")
    assert not r.choices[0].message.tool_calls
    assert "<tool_call>" not in r.choices[0].message.content


def test_a_conversation_with_a_tool_result_is_answered(client):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [openai_call("get_weather", {"city": "Paris"})],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21, "sky": "clear"}'},
    ]
    r = client.chat.completions.create(
        model="smol-tools", messages=history, tools=[WEATHER], max_tokens=24
    )
    assert r.choices[0].message.content or r.choices[0].message.tool_calls


@pytest.mark.parametrize(
    "kw, param",
    [
        (dict(tool_choice={"type": "function", "function": {"name": "get_time"}}), "tool_choice"),
        (dict(tool_choice="sometimes"), "tool_choice"),
        (dict(tools=[{"type": "web_search"}]), "tools[0].type"),
    ],
    ids=["unknown-function", "bad-choice", "not-a-function"],
)
def test_invalid_tool_requests_are_400(client, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**{**weather_call(), **kw})
    assert err.value.body["param"] == param


def test_a_model_without_tool_calling_refuses_tools_by_name(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**{**weather_call(), "model": "smollm2"})
    assert err.value.body["param"] == "tools"
    assert "chat template defines no tool calls" in err.value.body["message"]


def test_the_responses_api_returns_a_function_call_item(client):
    r = client.responses.create(
        model="smol-tools",
        input="What is the weather in Paris?",
        tools=[{"type": "function", **WEATHER["function"]}],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
    )
    calls = [item for item in r.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    assert isinstance(json.loads(calls[0].arguments), dict)


def test_the_messages_api_returns_a_tool_use_block(gateway):
    client = anthropic.Anthropic(base_url=gateway, api_key=KEY, max_retries=0, timeout=120)
    m = client.messages.create(
        model="smol-tools",
        max_tokens=40,
        messages=ASK,
        tools=[
            {
                "name": "get_weather",
                "description": WEATHER["function"]["description"],
                "input_schema": WEATHER["function"]["parameters"],
            }
        ],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert m.stop_reason == "tool_use"
    uses = [b for b in m.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather"] and isinstance(uses[0].input, dict)
