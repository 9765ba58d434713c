"""No input the client controls produces a 500, a hang, a dropped field or a lost ledger row.

Each test is one defect an independent fuzzing and load run found (issue: "a gateway that
never breaks what passes through it"), against a real server on loopback.
"""

import asyncio
import json
import logging
import socket
import threading

import httpx
import pytest

from tests.proxy.fake_upstream import make_upstream_app
from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config
from tokenskip.proxy.infra.ledger import Ledger, LedgerRow
from tokenskip.proxy.serving.exchange import Exchange

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app()) as url:
        yield url


@pytest.fixture(scope="module", params=["direct", "litellm"])
def gateway(request, upstream, tmp_path_factory):
    base = {"api_base": upstream + "/v1", "api_key": "k"}
    config = {
        "model_list": [
            {"model_name": "ok", "litellm_params": {"model": "openai/ok", **base}},
            {"model_name": "bad", "litellm_params": {"model": "openai/fail500", **base}},
        ],
        "router_settings": {"num_retries": 0, "timeout": 5, "fallbacks": [{"bad": ["ok"]}]},
        "tokenskip_settings": {"direct_openai_compatible": request.param == "direct"},
    }
    settings = Settings(
        ledger_url=f"sqlite:///{tmp_path_factory.mktemp('l') / 'l.db'}", max_body_bytes=MAX_BODY
    )
    app = create_app(settings, parse_config(config, settings))
    with serve(app) as url:
        yield url, app.app


def post(url, body, **kw):
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=20, **kw)


def ask(content="hi", **kw):
    return {"model": "ok", "messages": [{"role": "user", "content": content}], **kw}


def assert_openai_error(r, status, code=None):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.mark.parametrize("ratio", [5e-324, 1e-300, 0.001])
def test_a_tiny_ratio_is_refused_not_an_overflow(gateway, ratio):
    r = post(gateway[0], ask(tokenskip={"cot_ratio": ratio}))
    error = assert_openai_error(r, 422)
    assert "cot_ratio" in (error["param"] or "") + error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_is_a_400_naming_the_field(gateway, stream):
    flag = "true" if stream else "false"
    raw = (
        '{"model": "ok", "stream": '
        + flag
        + ', "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    )
    r = httpx.post(
        gateway[0] + "/v1/chat/completions",
        content=raw.encode(),
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(r, 400, "invalid_unicode")
    assert error["param"] == "messages[0].content"


def test_a_lone_surrogate_in_multi_query(gateway):
    raw = '{"model": "ok", "context": "x", "queries": ["a\\udc00"]}'
    r = httpx.post(gateway[0] + "/v1/multi_query", content=raw.encode())
    assert_openai_error(r, 400, "invalid_unicode")


def test_deep_nesting_is_a_400(gateway):
    deep = "[" * 5000 + "]" * 5000
    raw = '{"model": "ok", "messages": [{"role": "user", "content": "x"}], "x": ' + deep + "}"
    r = httpx.post(gateway[0] + "/v1/chat/completions", content=raw.encode())
    assert_openai_error(r, 400, "invalid_json")


def test_a_chunked_body_over_the_limit_is_a_413(gateway):
    def body():
        yield b'{"model": "ok", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1024 + 4):
            yield b"x" * 1024
        yield b'"}]}'

    r = httpx.post(gateway[0] + "/v1/chat/completions", content=body(), timeout=20)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_openai_error(r, 413, "request_too_large")


@pytest.mark.parametrize("text", [7, None, ["a"]])
def test_a_non_string_text_part_is_a_422(gateway, text):
    message = {"role": "user", "content": [{"type": "text", "text": text}]}
    r = post(gateway[0], {"model": "ok", "messages": [message]})
    error = assert_openai_error(r, 422)
    assert "text" in error["message"]
    r = httpx.post(
        gateway[0] + "/v1/multi_query",
        json={"model": "ok", "context": [message], "queries": ["q"]},
    )
    assert_openai_error(r, 422)


def test_a_message_without_content_is_a_400_at_once(gateway):
    r = post(gateway[0], {"model": "ok", "messages": [{"role": "user"}]})
    error = assert_openai_error(r, 400, "missing_content")
    assert error["param"] == "messages[0].content"
    assert r.elapsed.total_seconds() < 1.5  # refused before any upstream retry
    ok = post(
        gateway[0],
        {
            "model": "ok",
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "{}"},
            ],
        },
    )
    assert ok.status_code == 200, ok.text


def test_405_names_the_allowed_methods(gateway):
    r = httpx.get(gateway[0] + "/v1/chat/completions")
    assert_openai_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


def test_a_huge_model_name_is_not_echoed_whole(gateway):
    r = post(gateway[0], {"model": "m" * 60_000, "messages": [{"role": "user", "content": "x"}]})
    error = assert_openai_error(r, 404, "model_not_found")
    assert len(error["message"]) < 400


def test_an_unknown_path_lists_what_is_served(gateway):
    for path in ("/v1/completions", "/v1/embeddings", "/v1/responses/resp_1"):
        error = assert_openai_error(httpx.post(gateway[0] + path, json={}), 404, "unknown_path")
        assert "POST /v1/chat/completions" in error["message"] and path in error["message"]
        assert "POST /v1/responses" in error["message"] and "POST /v1/messages" in error["message"]


def test_after_a_500_the_keep_alive_connection_serves_the_next_request(gateway, monkeypatch):
    url, app = gateway
    service = app.state.service
    original = service.open

    async def boom(request, **kw):
        if request.model == "ok" and request.user == "boom":
            raise RuntimeError("a bug")
        return await original(request, **kw)

    monkeypatch.setattr(service, "open", boom)
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(ask(user="boom")).encode()
    good = json.dumps(ask()).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        f = sock.makefile("rb")
        for payload, status in ((body, 500), (good, 200)):
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            line = f.readline()
            assert line.startswith(f"HTTP/1.1 {status}".encode()), line
            headers = {}
            while (h := f.readline()) not in (b"\r\n", b""):
                k, v = h.decode().split(":", 1)
                headers[k.lower()] = v.strip()
            data = f.read(int(headers["content-length"]))
            if status == 500:
                assert json.loads(data)["error"]["type"] == "server_error"
                assert headers.get("connection") != "close"


def test_an_unexpected_error_mid_stream_ends_with_an_error_event(gateway, monkeypatch):
    url, _ = gateway

    async def broken(*a, **k):
        raise RuntimeError("accounting bug")

    monkeypatch.setattr(Exchange, "answered", broken)
    with httpx.stream("POST", url + "/v1/chat/completions", json=ask(stream=True), timeout=20) as r:
        lines = [line for line in r.iter_lines() if line]
    monkeypatch.undo()
    assert json.loads(lines[-2][6:])["error"]["type"] == "server_error"
    assert lines[-1] == "data: [DONE]"


def test_a_fallback_is_named_in_a_header_counted_and_logged(gateway, caplog):
    url, _ = gateway
    with caplog.at_level(logging.WARNING, logger="tokenskip.proxy.serving.service"):
        r = post(url, {"model": "bad", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    assert r.headers["x-tokenskip-fallback"] == "bad->ok"
    assert r.json()["tokenskip"]["fallbacks"] == ["bad->ok"]
    assert any("falling back to ok" in rec.getMessage() for rec in caplog.records)
    metrics = httpx.get(url + "/metrics").text
    assert 'tokenskip_fallbacks_total{fallback="ok",model="bad"}' in metrics


def test_refused_requests_are_in_the_ledger_and_the_metrics(gateway):
    url, app = gateway
    before = app.state.ledger.totals()["totals"]
    post(url, {"model": "nope", "messages": [{"role": "user", "content": "x"}]})  # 404
    post(url, {"model": "ok", "messages": []})  # 422
    httpx.post(url + "/v1/nowhere", json={})  # 404 path
    after = app.state.ledger.totals()["totals"]
    assert after["requests"] == before["requests"] + 3
    assert after["errors"] == before["errors"] + 3
    metrics = httpx.get(url + "/metrics").text
    assert 'tokenskip_requests_total{model="nope",status="404"}' in metrics
    assert 'tokenskip_requests_total{model="ok",status="422"}' in metrics


def test_one_poisoned_row_among_40_concurrent_requests_loses_nothing(gateway):
    url, app = gateway
    ledger = app.state.ledger
    before = ledger.totals()["totals"]["requests"]

    async def burst():
        async with httpx.AsyncClient(timeout=30) as c:
            bodies = [ask(f"q{i}") for i in range(39)]
            bodies.insert(17, ask("poison", tokenskip={"cot_ratio": 1e-300}))
            return await asyncio.gather(
                *(c.post(url + "/v1/chat/completions", json=b) for b in bodies)
            )

    responses = asyncio.run(burst())
    assert sorted(r.status_code for r in responses) == [200] * 39 + [422]
    assert ledger.totals()["totals"]["requests"] == before + 40


def test_the_ledger_writes_every_other_row_when_one_is_refused(tmp_path, monkeypatch, caplog):
    import tokenskip.proxy.infra.ledger as ledger_module

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", flush_interval_s=0.5)
    real = ledger_module.valid_row

    def poisoned(row):
        values = real(row)
        if row.request_id == "poison":
            values["status"] = None  # a NOT NULL column: this row's insert fails
        return values

    monkeypatch.setattr(ledger_module, "valid_row", poisoned)

    def row(i):
        return LedgerRow(
            request_id="poison" if i == 7 else f"r{i}",
            model="m",
            backend="direct",
            status=200,
            stream=False,
            latency_ms=1.0,
            prompt_tokens_original=10**30 if i == 3 else 10,  # clamped, not an overflow
            prompt_tokens_sent=5,
            completion_tokens=float("nan") if i == 5 else 2,
        )

    with caplog.at_level(logging.ERROR, logger="tokenskip.proxy.infra.ledger"):
        threads = [threading.Thread(target=ledger.record, args=(row(i),)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = ledger.rows(100)
    ledger.close()
    assert len(rows) == 40
    failed = [r for r in rows if r["request_id"] == "poison"]
    assert failed[0]["error"].startswith("accounting failed")
    assert sum("request poison rejected" in rec.getMessage() for rec in caplog.records) == 1
