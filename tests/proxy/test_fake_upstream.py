"""The fake upstream speaks OpenAI's protocol: checked with the official client and litellm."""

from __future__ import annotations

import asyncio
import os
import time

import httpx
import openai
import pytest

from tests.proxy.fake_upstream import make_upstream_app
from tests.proxy.servers import serve

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "how are  you"}]},
]
ANSWER = "echo: how are  you"


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app(api_key="x")) as url:
        yield url


@pytest.fixture
def client(upstream):
    httpx.post(upstream + "/_reset", timeout=5).raise_for_status()
    with openai.OpenAI(base_url=upstream + "/v1", api_key="x", max_retries=0, timeout=10) as c:
        yield c


def calls(url: str) -> dict:
    return httpx.get(url + "/_calls", timeout=5).json()


def test_ok_non_stream(client, upstream):
    r = client.chat.completions.create(model="ok", messages=MESSAGES)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ANSWER
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 4, 9)
    seen = calls(upstream)
    assert seen["total"] == 1 and seen["by_model"] == {"ok": 1}
    assert seen["last_body"]["messages"] == MESSAGES
    assert seen["last_auth"] == "Bearer x"


def test_ok_stream_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="ok", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(d for d in deltas if d) == ANSWER
    assert len([d for d in deltas if d]) == 4  # one chunk per word
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 9


def test_stream_without_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="ok", messages=MESSAGES, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_fail500(client):
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="fail500", messages=MESSAGES)
    assert e.value.status_code == 500
    assert e.value.body["message"] == "upstream exploded"


def test_drop_cuts_the_stream(client):
    got = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for c in client.chat.completions.create(model="drop", messages=MESSAGES, stream=True):
            got.append(c.choices[0].delta.content)
    assert got == ["", "echo: ", "how "]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="drop", messages=MESSAGES)


def test_drop_is_an_incomplete_read_for_httpx(upstream):
    body = {"model": "drop", "stream": True, "messages": MESSAGES}
    lines = []
    headers = {"Authorization": "Bearer x"}
    with (
        pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"),
        httpx.stream(
            "POST", upstream + "/v1/chat/completions", json=body, headers=headers, timeout=10
        ) as r,
    ):
        lines.extend(line for line in r.iter_lines() if line)
    assert len(lines) == 3 and "data: [DONE]" not in lines


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert e.value.code == "model_not_found"


def test_wrong_key(upstream):
    with (
        openai.OpenAI(base_url=upstream + "/v1", api_key="y", max_retries=0, timeout=10) as c,
        pytest.raises(openai.AuthenticationError),
    ):
        c.chat.completions.create(model="ok", messages=MESSAGES)
    assert calls(upstream)["last_auth"] == "Bearer y"


def test_stall_times_out(client):
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).chat.completions.create(model="stall", messages=MESSAGES)
    assert time.monotonic() - start < 3


def test_slow(client):
    start = time.monotonic()
    r = client.chat.completions.create(model="slow", messages=MESSAGES)
    assert r.choices[0].message.content == ANSWER
    assert time.monotonic() - start >= 0.3


def test_flaky_fails_once_then_succeeds(client, upstream):
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="flaky", messages=MESSAGES)
    r = client.chat.completions.create(model="flaky", messages=MESSAGES)
    assert r.choices[0].message.content == ANSWER
    assert calls(upstream)["by_model"] == {"flaky": 2}
    httpx.post(upstream + "/_reset", timeout=5)
    assert calls(upstream)["total"] == 0
    with pytest.raises(openai.InternalServerError):  # reset re-arms it
        client.chat.completions.create(model="flaky", messages=MESSAGES)


def test_several_servers_and_plain_asgi_wrapper():
    inner = make_upstream_app()

    async def wrapper(scope, receive, send):  # a bare ASGI callable, not a FastAPI app
        await inner(scope, receive, send)

    with serve(wrapper) as a, serve(make_upstream_app()) as b:
        assert a != b
        for url in (a, b):
            r = httpx.post(
                url + "/v1/chat/completions", json={"model": "ok", "messages": MESSAGES}, timeout=5
            )
            assert r.json()["choices"][0]["message"]["content"] == ANSWER
        assert calls(a)["total"] == 1 and calls(b)["total"] == 1


def test_litellm_talks_to_it(upstream):
    """The proxy's path: litellm's openai provider, non-stream and stream with usage."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    kw = {"api_base": upstream + "/v1", "api_key": "x", "messages": MESSAGES, "timeout": 10}

    async def run():
        r = await litellm.acompletion(model="openai/ok", **kw)
        stream = await litellm.acompletion(
            model="openai/ok", stream=True, stream_options={"include_usage": True}, **kw
        )
        chunks = [c async for c in stream]
        return r, chunks

    r, chunks = asyncio.run(asyncio.wait_for(run(), 20))
    assert r.choices[0].message.content == ANSWER
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 4)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    usage = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usage and usage[-1].prompt_tokens == 5 and usage[-1].completion_tokens == 4
    assert calls(upstream)["last_body"]["model"] == "ok"


def test_litellm_errors_and_retries(upstream):
    """What the proxy sees from litellm: its own retries (the openai SDK's, 2 by default,
    off with max_retries=0) and a MidStreamFallbackError, never retried, on a cut stream."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm
    from litellm.exceptions import MidStreamFallbackError

    kw = {"api_base": upstream + "/v1", "api_key": "x", "messages": MESSAGES, "timeout": 10}

    async def consume(**more):
        stream = await litellm.acompletion(stream=True, **kw, **more)
        return [c async for c in stream]

    async def fail(coro):
        try:
            await asyncio.wait_for(coro, 20)
        except openai.APIError as e:
            return e
        raise AssertionError("no error")

    httpx.post(upstream + "/_reset", timeout=5)
    e = asyncio.run(fail(litellm.acompletion(model="openai/fail500", max_retries=0, **kw)))
    assert isinstance(e, litellm.InternalServerError) and isinstance(e, openai.InternalServerError)
    assert calls(upstream)["by_model"] == {"fail500": 1}

    e = asyncio.run(fail(litellm.acompletion(model="openai/fail500", **kw)))
    assert isinstance(e, litellm.InternalServerError)
    assert calls(upstream)["by_model"] == {"fail500": 4}  # 1 + 1 try and 2 retries

    e = asyncio.run(fail(consume(model="openai/drop")))
    assert isinstance(e, MidStreamFallbackError) and e.status_code == 500  # not 503
    assert e.generated_content == "echo: how "
    assert calls(upstream)["by_model"]["drop"] == 1


def test_serve_reports_a_failed_startup():
    async def broken(scope, receive, send):  # a lifespan that fails to start
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no model"})

    start = time.monotonic()
    with pytest.raises(RuntimeError, match="stopped before starting"), serve(broken):
        pass
    assert time.monotonic() - start < 5
