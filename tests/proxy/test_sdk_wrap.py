"""tokenskip.wrap around the official openai and anthropic clients, against recording
upstreams on loopback: the same upstream messages as the gateway sends for the same policy
(a 20-turn conversation with documents and tool outputs), stream and non-stream, sync and
async, the SDK's own objects with the saving on them, and bad overrides refused before any
network call."""

import asyncio
import json

import anthropic
import httpx
import openai
import pytest

import tokenskip
from tests.proxy.fake_native import make_native_app
from tests.proxy.fake_upstream import make_upstream_app
from tests.proxy.servers import serve
from tests.proxy.test_cache_safety import SYSTEM, TURNS, add_turn, document, tool_rows
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

KEY = "sk-gateway"
POLICY = {"prompt_ratio": 0.7}


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app()) as url:
        yield url


@pytest.fixture(scope="module")
def native():
    with serve(make_native_app()) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(upstream, native, tmp_path_factory):
    policy = {"tokenizer": "smollm2", **POLICY}
    config = {
        "model_list": [
            {
                "model_name": "ok",
                "litellm_params": {"model": "openai/ok", "api_base": upstream + "/v1"},
                "tokenskip": policy,
            },
            {
                "model_name": "echo",
                "litellm_params": {"model": "openai/echo", "api_base": native + "/v1"},
                "tokenskip": policy,
            },
            {
                "model_name": "claude-echo",
                "litellm_params": {"model": "anthropic/echo", "api_base": native, "api_key": "k"},
                "tokenskip": policy,
            },
        ]
    }
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(api_keys=KEY, ledger_url=f"sqlite:///{ledger}")
    with serve(create_app(settings, parse_config(config, settings))) as url:
        yield url


def chat_sent(upstream):
    return httpx.get(upstream + "/_calls").json()["last_body"]


def native_sent(native):
    return json.loads(httpx.get(native + "/_calls").json()["last_raw"])


def test_the_wrapper_sends_what_the_gateway_sends_over_20_turns(gateway, upstream):
    through = openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0)
    wrapped = tokenskip.wrap(
        openai.OpenAI(base_url=upstream + "/v1", api_key="k", max_retries=0),
        policy=POLICY,
        tokenizer="smollm2",
    )
    conversation = [{"role": "system", "content": SYSTEM}]
    saved = 0
    for turn in range(1, TURNS + 1):
        add_turn(conversation, turn)
        through.chat.completions.create(model="ok", messages=conversation)
        by_gateway = chat_sent(upstream)["messages"]
        r = wrapped.chat.completions.create(model="ok", messages=conversation)
        by_wrapper = chat_sent(upstream)["messages"]
        assert json.dumps(by_wrapper) == json.dumps(by_gateway), f"turn {turn}"
        assert by_wrapper != conversation  # compressed: the comparison is not vacuous
        assert isinstance(r, openai.types.chat.ChatCompletion)
        assert r.tokenskip["prompt_tokens_saved"] > 0
        saved += r.tokenskip["prompt_tokens_saved"]
        conversation.append(r.choices[0].message.model_dump(exclude_none=True))
    assert saved > 0


RESPONSES_INPUT = [
    {
        "role": "user",
        "content": [{"type": "input_text", "text": document(4) + "\n\nSummarize section 2."}],
    },
    {"type": "function_call", "call_id": "c1", "name": "stock", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": tool_rows(4)},
]


def test_responses_and_messages_bodies_match_the_gateways(gateway, native):
    through = openai.OpenAI(base_url=gateway + "/v1", api_key=KEY, max_retries=0)
    wrapped = tokenskip.wrap(
        openai.OpenAI(base_url=native + "/v1", api_key="k", max_retries=0),
        policy=POLICY,
        tokenizer="smollm2",
    )
    kw = {"model": "echo", "instructions": SYSTEM, "input": RESPONSES_INPUT}
    through.responses.create(**kw)
    by_gateway = native_sent(native)
    r = wrapped.responses.create(**kw)
    by_wrapper = native_sent(native)
    assert by_wrapper["input"] == by_gateway["input"] != RESPONSES_INPUT
    assert by_wrapper["instructions"] == by_gateway["instructions"] == SYSTEM
    assert isinstance(r, openai.types.responses.Response) and r.tokenskip["prompt_tokens_saved"] > 0

    claude_through = anthropic.Anthropic(base_url=gateway, api_key=KEY, max_retries=0)
    claude = tokenskip.wrap(
        anthropic.Anthropic(base_url=native, api_key="k", max_retries=0),
        policy=POLICY,
        tokenizer="smollm2",
    )
    messages = [
        {"role": "user", "content": document(5) + "\n\nWhat did section 3 ship?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "stock", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": tool_rows(5)}],
        },
    ]
    claude_through.messages.create(
        model="claude-echo", max_tokens=32, system=SYSTEM, messages=messages
    )
    by_gateway = native_sent(native)
    m = claude.messages.create(model="echo", max_tokens=32, system=SYSTEM, messages=messages)
    by_wrapper = native_sent(native)
    assert by_wrapper["messages"] == by_gateway["messages"] != messages
    assert by_wrapper["system"] == SYSTEM
    assert isinstance(m, anthropic.types.Message) and m.tokenskip["prompt_tokens_saved"] > 0


def test_streams_and_async_clients(upstream, native):
    question = [{"role": "user", "content": document(7) + "\n\nWhat did section 1 ship?"}]
    sync = tokenskip.wrap(openai.OpenAI(base_url=upstream + "/v1", api_key="k"), policy=POLICY)
    sync.chat.completions.create(model="ok", messages=question)
    expected = chat_sent(upstream)["messages"]
    stream = sync.chat.completions.create(model="ok", messages=question, stream=True)
    assert isinstance(stream, openai.Stream) and stream.tokenskip["prompt_tokens_saved"] > 0
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("echo: ") and chat_sent(upstream)["messages"] == expected

    async def run():
        client = tokenskip.wrap(
            openai.AsyncOpenAI(base_url=upstream + "/v1", api_key="k"), policy=POLICY
        )
        r = await client.chat.completions.create(model="ok", messages=question)
        assert chat_sent(upstream)["messages"] == expected
        s = await client.chat.completions.create(model="ok", messages=question, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in s if c.choices]
        claude = tokenskip.wrap(
            anthropic.AsyncAnthropic(base_url=native, api_key="k"), policy=POLICY
        )
        m = await claude.messages.create(model="echo", max_tokens=32, messages=question)
        sent = native_sent(native)["messages"][0]["content"]
        async with claude.messages.stream(model="echo", max_tokens=32, messages=question) as ms:
            streamed = await ms.get_final_message()
        return r, "".join(pieces), m, sent, streamed

    r, streamed_text, m, claude_sent, claude_streamed = asyncio.run(run())
    assert r.choices[0].message.content == streamed_text
    assert claude_sent == expected[0]["content"]  # the same policy path for both SDKs
    assert m.tokenskip["prompt_tokens_saved"] > 0 and m.content[0].text.startswith("echo")
    assert claude_streamed.content[0].text.startswith("echo")


def test_a_bad_override_is_the_sdks_400_before_any_call(upstream, native):
    client = tokenskip.wrap(openai.OpenAI(base_url=upstream + "/v1", api_key="k", max_retries=0))
    before = httpx.get(upstream + "/_calls").json()["total"]
    for bad in ({"prompt_ratio": 1.5}, {"prompt_ratoi": 0.5}, "half"):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model="ok",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"tokenskip": bad},
            )
        assert err.value.status_code == 400 and "tokenskip" in err.value.message
    assert httpx.get(upstream + "/_calls").json()["total"] == before
    claude = tokenskip.wrap(anthropic.Anthropic(base_url=native, api_key="k", max_retries=0))
    with pytest.raises(anthropic.BadRequestError, match="prompt_ratoi"):
        claude.messages.create(
            model="echo",
            max_tokens=8,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"tokenskip": {"prompt_ratoi": 0.5}},
        )
    # an override that is fine applies to that call only, and leaves other extra_body alone
    ok = client.chat.completions.create(
        model="ok",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"tokenskip": {"enabled": False}, "user": "u1"},
    )
    assert ok.tokenskip["enabled"] is False
    body = chat_sent(upstream)
    assert "tokenskip" not in body and body["user"] == "u1"


def test_wrap_refuses_what_it_cannot_wrap():
    with pytest.raises(TypeError, match="openai or anthropic client"):
        tokenskip.wrap(object())
    with pytest.raises(ValueError, match="unknown tokenskip policy keys"):
        tokenskip.wrap(openai.OpenAI(api_key="k"), policy={"ratio": 0.5})
    wrapped = tokenskip.wrap(openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9/v1"))
    assert str(wrapped.base_url) == "http://127.0.0.1:9/v1/"  # everything else is the client's
    assert wrapped.models is not None
