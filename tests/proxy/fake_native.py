"""A fake upstream that speaks the OpenAI Responses API and the Anthropic Messages API
themselves, on loopback, for the gateway's pass-through tests.

``POST /v1/responses`` (OpenAI protocol: the deployment's ``api_base`` ends in ``/v1``) and
``POST /v1/messages`` (Anthropic) answer by the request's ``model`` (``POST
/v1/messages/count_tokens`` answers 1000 + the request's words):

    rich       everything an agent's answer has: a reasoning item / thinking block, a
               function call / tool_use, text, and fields no SDK knows (``x_provider``);
               streamed as the real APIs stream them (argument and JSON deltas, reasoning
               summary deltas, pings, an event type no SDK knows).
    echo       the text "echo: " + every text of the request, joined, so a test sees what
               compression sent; usage counts words.
    fail500    HTTP 500 in the API's error shape.
    bad400     HTTP 400 in the API's error shape (the client's mistake, passed on).
    ratelimit  HTTP 429 in the API's error shape.
    overload   HTTP 529 (Messages) / 503 (Responses).
    stall      sleeps STALL_S before answering.
    cut        streams two whole events and half of a third, then drops the connection.

Every answer's exact bytes, and the exact bytes of the request, are kept:
``GET /_calls`` -> ``{"total", "last_raw", "last_headers", "last_answer"}`` (text).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

STALL_S = 30.0
X_PROVIDER = {"region": "loopback-1", "trace": ["a", "b"], "weights": {"w": 0.25}}
ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'
PROVIDER_HEADERS = {"x-request-id": "req_fake_1", "anthropic-ratelimit-requests-remaining": "49",
                    "openai-processing-ms": "12"}  # fmt: skip


class Dropped(Exception):
    """Raised inside a stream to cut the connection mid-body."""


def _texts(value: Any) -> list[str]:
    """Every ``text`` / string ``content`` / ``output`` / ``input`` string, in order."""
    if isinstance(value, str):
        return [value]
    found: list[str] = []
    if isinstance(value, list):
        for v in value:
            found += _texts(v)
    elif isinstance(value, dict):
        for key in ("instructions", "system", "input", "content", "text", "output", "messages"):
            if key in value:
                found += _texts(value[key])
    return found


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def responses_answer(model: str, body: dict[str, Any]) -> dict[str, Any]:
    rid = "resp_fake_1"
    output: list[dict[str, Any]] = []
    if model == "rich":
        output = [
            {"id": "rs_1", "type": "reasoning", "summary": [
                {"type": "summary_text", "text": "Weather needs a tool."}],
             "encrypted_content": "gAAAA-opaque"},
            {"id": "fc_1", "type": "function_call", "status": "completed",
             "call_id": "call_w1", "name": "get_weather", "arguments": ARGUMENTS},
            {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Checking the weather.",
                          "annotations": [{"type": "url_citation", "url": "https://x.test",
                                           "start_index": 0, "end_index": 3, "title": "x"}],
                          "logprobs": []}]},
        ]  # fmt: skip
    else:
        text = "echo: " + " ".join(_texts(body))
        output = [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}]  # fmt: skip
    words_in = len(" ".join(_texts(body)).split())
    words_out = sum(len(p["text"].split()) for i in output for p in i.get("content") or [])
    return {
        "id": rid, "object": "response", "created_at": 1700000000, "status": "completed",
        "model": model, "output": output, "parallel_tool_calls": True,
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools", []),
        "text": body.get("text", {"format": {"type": "text"}}),
        "usage": {"input_tokens": words_in, "input_tokens_details": {"cached_tokens": 3},
                  "output_tokens": words_out + 7,
                  "output_tokens_details": {"reasoning_tokens": 7}, "total_tokens":
                  words_in + words_out + 7},
        "x_provider": X_PROVIDER,
    }  # fmt: skip


def responses_events(answer: dict[str, Any]) -> list[bytes]:
    seq = iter(range(10_000))

    def ev(kind: str, **fields: Any) -> bytes:
        return _sse(kind, {"type": kind, "sequence_number": next(seq), **fields})

    shell = {**answer, "status": "in_progress", "output": [], "usage": None}
    out = [ev("response.created", response=shell), ev("response.in_progress", response=shell)]
    for i, item in enumerate(answer["output"]):
        start = {**item}
        if item["type"] == "function_call":
            start = {**item, "arguments": "", "status": "in_progress"}
        elif item["type"] == "message":
            start = {**item, "content": [], "status": "in_progress"}
        out.append(ev("response.output_item.added", output_index=i, item=start))
        if item["type"] == "reasoning":
            out.append(ev("response.reasoning_summary_text.delta", item_id=item["id"],
                          output_index=i, summary_index=0, delta=item["summary"][0]["text"]))  # fmt: skip
        if item["type"] == "function_call":
            for piece in (ARGUMENTS[:9], ARGUMENTS[9:]):
                out.append(ev("response.function_call_arguments.delta", item_id=item["id"],
                              output_index=i, delta=piece))  # fmt: skip
            out.append(ev("response.function_call_arguments.done", item_id=item["id"],
                          output_index=i, arguments=ARGUMENTS))  # fmt: skip
        if item["type"] == "message":
            part = item["content"][0]
            out.append(ev("response.content_part.added", item_id=item["id"], output_index=i,
                          content_index=0, part={**part, "text": ""}))  # fmt: skip
            words = part["text"].split(" ")
            for n, word in enumerate(words):
                out.append(ev("response.output_text.delta", item_id=item["id"], output_index=i,
                              content_index=0, delta=word if n == 0 else " " + word,
                              logprobs=[]))  # fmt: skip
            out.append(ev("response.provider.custom_event", x_provider=X_PROVIDER))
            out.append(ev("response.output_text.done", item_id=item["id"], output_index=i,
                          content_index=0, text=part["text"], logprobs=[]))  # fmt: skip
            out.append(ev("response.content_part.done", item_id=item["id"], output_index=i,
                          content_index=0, part=part))  # fmt: skip
        out.append(ev("response.output_item.done", output_index=i, item=item))
    out.append(ev("response.completed", response=answer))
    return out


def messages_answer(model: str, body: dict[str, Any]) -> dict[str, Any]:
    if model == "rich":
        content = [
            {"type": "thinking", "thinking": "Weather needs a tool.", "signature": "sig-1"},
            {"type": "text", "text": "Checking the weather.",
             "citations": [{"type": "char_location", "cited_text": "x", "document_index": 0,
                            "start_char_index": 0, "end_char_index": 1}]},
            {"type": "tool_use", "id": "toolu_w1", "name": "get_weather",
             "input": json.loads(ARGUMENTS)},
        ]  # fmt: skip
        stop = "tool_use"
    else:
        content = [{"type": "text", "text": "echo: " + " ".join(_texts(body))}]
        stop = "end_turn"
    words_in = len(" ".join(_texts(body)).split())
    return {
        "id": "msg_fake_1", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": words_in, "cache_creation_input_tokens": 2,
                  "cache_read_input_tokens": 5, "output_tokens": 11,
                  "service_tier": "standard"},
        "x_provider": X_PROVIDER,
    }  # fmt: skip


def messages_events(answer: dict[str, Any]) -> list[bytes]:
    start = {**answer, "content": [], "stop_reason": None,
             "usage": {**answer["usage"], "output_tokens": 1}}  # fmt: skip
    out = [_sse("message_start", {"type": "message_start", "message": start}),
           _sse("ping", {"type": "ping"})]  # fmt: skip
    for i, block in enumerate(answer["content"]):
        if block["type"] == "thinking":
            empty, deltas = (
                {"type": "thinking", "thinking": "", "signature": ""},
                [
                    {"type": "thinking_delta", "thinking": block["thinking"]},
                    {"type": "signature_delta", "signature": block["signature"]},
                ],
            )
        elif block["type"] == "tool_use":
            empty = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": ARGUMENTS[:9]},
                      {"type": "input_json_delta", "partial_json": ARGUMENTS[9:]}]  # fmt: skip
        else:
            empty = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": w + " "} for w in block["text"].split(" ")]
        out.append(_sse("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": empty}))  # fmt: skip
        for d in deltas:
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                    "delta": d}))  # fmt: skip
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": i}))
    out.append(_sse("provider_custom", {"type": "provider_custom", "x_provider": X_PROVIDER}))
    out.append(_sse("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": answer["stop_reason"],
                                                "stop_sequence": None},
                                      "usage": {"output_tokens": answer["usage"]["output_tokens"]}}))  # fmt: skip
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return out


def _error(api: str, status: int, message: str) -> Response:
    if api == "messages":
        kinds = {400: "invalid_request_error", 429: "rate_limit_error", 529: "overloaded_error"}
        kind = kinds.get(status, "api_error")
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def make_native_app() -> FastAPI:
    app = FastAPI(title="fake Responses + Messages upstream")
    calls: dict[str, Any] = {"total": 0, "last_raw": None, "last_headers": {}, "last_answer": None}

    @app.get("/_calls")
    async def get_calls() -> dict[str, Any]:
        return calls

    async def serve(api: str, request: Request) -> Response:
        raw = await request.body()
        calls["total"] += 1
        calls["last_raw"] = raw.decode()
        calls["last_headers"] = dict(request.headers)
        calls["last_answer"] = None
        body = json.loads(raw)
        model, stream = str(body.get("model")), bool(body.get("stream"))
        if model == "fail500":
            return _error(api, 500, "upstream exploded")
        if model == "bad400":
            return _error(api, 400, "tools.0.name: String should match pattern")
        if model == "ratelimit":
            return _error(api, 429, "Rate limit reached; retry after 1 s")
        if model == "overload":
            return _error(api, 529 if api == "messages" else 503, "Overloaded")
        if model == "stall":
            deadline = time.monotonic() + STALL_S
            while time.monotonic() < deadline and not await request.is_disconnected():
                await asyncio.sleep(0.05)
        answer = (responses_answer if api == "responses" else messages_answer)(model, body)
        if not stream:
            data = json.dumps(answer).encode()
            calls["last_answer"] = data.decode()
            return Response(data, media_type="application/json", headers=PROVIDER_HEADERS)
        events = (responses_events if api == "responses" else messages_events)(answer)

        async def gen() -> AsyncIterator[bytes]:
            sent = b""
            for i, event in enumerate(events):
                if model == "cut" and i == 2:
                    yield event[: len(event) // 2]
                    await asyncio.sleep(0.05)
                    raise Dropped("fake upstream cut the stream mid-event on purpose")
                sent += event
                calls["last_answer"] = sent.decode()
                yield event

        return StreamingResponse(gen(), media_type="text/event-stream", headers=PROVIDER_HEADERS)

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        return await serve("responses", request)

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await serve("messages", request)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> Response:
        raw = await request.body()
        calls["total"] += 1
        calls["last_raw"] = raw.decode()
        body = json.loads(raw)
        words = len(" ".join(_texts(body)).split())
        return Response(json.dumps({"input_tokens": words + 1000}), media_type="application/json",
                        headers=PROVIDER_HEADERS)  # fmt: skip

    return app
