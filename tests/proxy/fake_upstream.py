"""A small OpenAI-compatible chat-completions upstream for tests.

`make_upstream_app()` returns a FastAPI app serving POST /v1/chat/completions (and
/chat/completions) in OpenAI's wire format: JSON, or SSE when `stream` is true
(`data: {chunk}` events ending with `data: [DONE]`, plus a usage chunk with empty
`choices` when `stream_options.include_usage` is set). The request's `model` picks the
behaviour (litellm strips the provider prefix, so `openai/ok` arrives as `ok`):

    ok       answers "echo: " + the last user message; usage counts whitespace-separated
             words (prompt: all message contents; completion: the answer). Streams one
             chunk per word, spaces kept, so the pieces join to the non-stream answer. Cut
             before a ``stop`` string (named in the choice's ``stop_reason``, as vLLM does)
             or after ``max_tokens`` words (finish_reason "length").
    fail500  HTTP 500, OpenAI error body "upstream exploded".
    stall    sleeps 60 s (less once the client has gone), then like ok: for client timeouts.
    drop     stream: role chunk and two content chunks, then the connection is cut
             mid-body (no final chunk, no [DONE]); non-stream: HTTP 500.
    flaky    HTTP 500 on the first call after a reset, then like ok.
    slow     sleeps 0.3 s, then like ok.
    multi    like ok, but a multi-query prompt (its last user message holds "<answers>" and
             numbered queries "N. text") gets <answers>[{"id": N, "answer": "echo: text"}, ...]
             </answers>, in reverse order (answers must be matched by id).
    multi_garbage   a multi-query prompt gets prose without JSON; single queries like ok.
    multi_partial   a multi-query prompt gets every answer but the last id's.
    multi_loop      a multi-query prompt gets the first answer, then a second one that loops
             (a sum counting up) for LOOP_SENTENCES sentences without ever closing; streamed
             slowly (LOOP_PIECE_S per piece), so a client that stops reading is seen.
    multi_drop      like multi, but a streamed multi-query reply is cut like drop's.
    multi_echo      a multi-query prompt gets the instruction's example shape back: each
             answer is its own id ("1", "2", ...); single queries like ok.
    rich     an agent's answer: two parallel tool calls (finish_reason "tool_calls"), a
             refusal field, logprobs when asked, system_fingerprint, service_tier and usage
             details; streamed as OpenAI streams tool calls (id and name first, then the
             arguments in fragments, by index). RICH_* below are what it sends.
    reasoner a reasoning model: ``message.reasoning_content`` (REASONING) beside the echo
             answer, ``usage.completion_tokens_details.reasoning_tokens``; streamed as
             reasoning_content deltas first, then the content.
    continuer    reasons for CONTINUER_STEPS words ("step 1 ... step N"), then "Final answer:
             7"; cut at ``max_tokens`` words with finish_reason "length". With
             ``continue_final_message`` it continues the last (assistant) message: " 7".
    other    HTTP 404, code "model_not_found".

POST /v1/messages is a fake Anthropic Messages endpoint (a thinking block when the request
has ``thinking``, then the text "echo: ..."); POST /v1beta/models/{model}:generateContent a
fake Gemini one. Both record their last body under /_calls like the chat endpoint.

GET /_calls -> {"total", "by_model", "last_body", "last_auth", "pieces_streamed"} (content
chunks sent by the last stream); POST /_reset clears them
and re-arms flaky. With `api_key`, a request without `Authorization: Bearer <api_key>`
gets 401 (still recorded).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

STALL_S = 60.0
SLOW_S = 0.3
LOOP_SENTENCES = 2000
LOOP_PIECE_S = 0.001
MODELS = (
    "ok",
    "fail500",
    "stall",
    "drop",
    "flaky",
    "slow",
    "multi",
    "multi_garbage",
    "multi_partial",
    "multi_loop",
    "multi_drop",
    "multi_echo",
    "rich",
    "reasoner",
    "continuer",
)
REASONING = "The user wants an echo. I will repeat the message back."
CONTINUER_STEPS = 40
RICH_TOOL_CALLS = [
    {
        "id": "call_weather_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'},
    },
    {
        "id": "call_time_2",
        "type": "function",
        "function": {"name": "get_time", "arguments": '{"tz": "Europe/Oslo"}'},
    },
]
RICH_LOGPROBS = {
    "content": [
        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": []},
        {"token": "!", "logprob": -1.5, "bytes": [33], "top_logprobs": []},
    ],
    "refusal": None,
}
RICH_USAGE = {
    "prompt_tokens": 31,
    "completion_tokens": 17,
    "total_tokens": 48,
    "prompt_tokens_details": {"cached_tokens": 16, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 5,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
RICH_EXTRA = {"system_fingerprint": "fp_fake_42", "service_tier": "default"}


class UpstreamDropped(RuntimeError):
    """Raised inside the `drop` stream so uvicorn cuts the connection mid-body."""


def error_response(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    """An error in OpenAI's shape."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def content_text(content: Any) -> str:
    """A message's text: a plain string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def words(text: str) -> int:
    return len(text.split())


def echo_answer(messages: list[dict[str, Any]]) -> tuple[str, dict[str, int]]:
    """The `ok` answer and its usage."""
    users = [m for m in messages if m.get("role") == "user"]
    answer = "echo: " + (content_text(users[-1].get("content")) if users else "")
    prompt = sum(words(content_text(m.get("content"))) for m in messages)
    completion = words(answer)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    return answer, usage


def limited(answer: str, body: dict[str, Any]) -> tuple[str, str, str | None]:
    """The `ok` answer under the request's limits: cut before the first ``stop`` string that
    occurs in it (finish "stop", the string named in the choice's ``stop_reason`` as vLLM
    names it), or after ``max_tokens`` words (finish "length")."""
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    found = [(answer.find(s), s) for s in stops if s and s in answer]
    if found:
        at, stop = min(found)
        return answer[:at], "stop", stop
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    pieces = re.findall(r"\S+\s*", answer)
    if isinstance(limit, int) and len(pieces) > limit:
        return "".join(pieces[:limit]).rstrip(), "length", None
    return answer, "stop", None


def multi_answer(model: str, messages: list[dict[str, Any]], single: str) -> str:
    """The `multi*` answers to a multi-query prompt (see the module docstring)."""
    last = content_text(messages[-1].get("content")) if messages else ""
    if "<answers>" not in last:
        return single
    queries = re.findall(r"^(\d+)\. (.*)$", last, flags=re.M)
    if model == "multi_garbage":
        return "I am not sure how to format that, but the answers are probably fine."
    if model == "multi_partial":
        queries = queries[:-1]
    if model == "multi_echo":
        return (
            "<answers>"
            + json.dumps([{"id": int(i), "answer": i} for i, _ in queries])
            + "</answers>"
        )
    if model == "multi_loop":
        first = json.dumps([{"id": int(queries[0][0]), "answer": "echo: " + queries[0][1]}])
        loop = " ".join(
            f"He drove {n} hours, so he drove {n} + 3 = {n + 3} hours."
            for n in range(0, 3 * LOOP_SENTENCES, 3)
        )
        return f'<answers>{first[:-1]}, {{"id": {queries[1][0]}, "answer": "{loop}'
    items = [{"id": int(i), "answer": "echo: " + text} for i, text in reversed(queries)]
    return "<answers>" + json.dumps(items) + "</answers>"


def rich_answer(body: dict[str, Any], stream: bool) -> Any:
    """The `rich` model's reply (see the module docstring)."""
    completion_id, created = "chatcmpl-rich-0001", 1_700_000_000
    logprobs = RICH_LOGPROBS if body.get("logprobs") else None
    if not stream:
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": "rich",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": RICH_TOOL_CALLS,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": logprobs,
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": RICH_USAGE,
            **RICH_EXTRA,
        }

    def chunk(delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs is not None:
            choice["logprobs"] = lp
        return sse(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": "rich",
                "choices": [choice],
                **RICH_EXTRA,
            }
        )

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": None, "refusal": None})
        for index, call in enumerate(RICH_TOOL_CALLS):
            head = {"index": index, "id": call["id"], "type": "function"}
            head["function"] = {"name": call["function"]["name"], "arguments": ""}
            yield chunk({"tool_calls": [head]})
            args = call["function"]["arguments"]
            for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        if logprobs is not None:
            # as OpenAI sends them: beside the content they are the log-probabilities of
            yield chunk({"content": "Hi!"}, None, {"content": logprobs["content"], "refusal": None})
        yield chunk({}, "tool_calls")
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": "rich",
                    "choices": [],
                    "usage": RICH_USAGE,
                    **RICH_EXTRA,
                }
            )
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def reasoner_answer(body: dict[str, Any], stream: bool) -> Any:
    answer, usage = echo_answer(body["messages"])
    reasoning_tokens = words(REASONING)
    usage = {
        **usage,
        "completion_tokens": usage["completion_tokens"] + reasoning_tokens,
        "total_tokens": usage["total_tokens"] + reasoning_tokens,
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not stream:
        message = {"role": "assistant", "content": answer, "reasoning_content": REASONING}
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": "reasoner",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": "reasoner",
                "choices": [choice],
            }
        )

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        for piece in stream_pieces(REASONING):
            yield chunk({"reasoning_content": piece})
        for piece in stream_pieces(answer):
            yield chunk({"content": piece})
        yield chunk({}, "stop")
        yield sse(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": "reasoner",
                "choices": [],
                "usage": usage,
            }
        )
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def continuer_answer(body: dict[str, Any]) -> dict[str, Any]:
    limit = body.get("max_tokens") or 10_000
    if body.get("continue_final_message"):
        text, finish = " 7", "stop"
    else:
        steps = [f"step {i}" for i in range(1, CONTINUER_STEPS // 2 + 1)]
        pieces = " ".join(steps).split() + ["Final", "answer:", "7"]
        text = " ".join(pieces[:limit])
        finish = "length" if len(pieces) > limit else "stop"
    prompt = sum(words(content_text(m.get("content"))) for m in body["messages"])
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "continuer",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": words(text),
            "total_tokens": prompt + words(text),
        },
    }


def stream_pieces(answer: str) -> list[str]:
    """One piece per word, trailing whitespace kept: "".join(pieces) == answer."""
    return re.findall(r"\S+\s*|\s+", answer)


def sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


async def stall(request: Request) -> None:
    """Sleep up to STALL_S, stopping early once the client has gone (so shutdown is quick)."""
    deadline = time.monotonic() + STALL_S
    while time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(0.05)


class _Calls:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.by_model: Counter[str] = Counter()
        self.last_body: Any = None
        self.last_auth: str | None = None
        self.flaky_failed = False
        self.pieces_streamed = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": sum(self.by_model.values()),
            "by_model": dict(self.by_model),
            "last_body": self.last_body,
            "last_auth": self.last_auth,
            "pieces_streamed": self.pieces_streamed,
        }


def make_upstream_app(api_key: str | None = None) -> FastAPI:
    """A fresh fake upstream (own call records). `api_key`: the only Bearer key accepted."""
    app = FastAPI(title="fake OpenAI upstream")
    calls = _Calls()

    @app.get("/_calls")
    async def get_calls() -> dict[str, Any]:
        return calls.snapshot()

    @app.post("/_reset")
    async def reset() -> dict[str, bool]:
        calls.reset()
        return {"ok": True}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        auth = request.headers.get("authorization")
        try:
            body = await request.json()
        except ValueError:
            body = None
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        calls.by_model[model] += 1
        calls.last_body = body
        calls.last_auth = auth

        if api_key is not None and auth != f"Bearer {api_key}":
            return error_response(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return error_response(
                400, "A JSON body with `messages` is required.", "invalid_request_error"
            )
        stream = bool(body.get("stream"))

        if model == "fail500":
            return error_response(500, "upstream exploded", "server_error")
        if model == "flaky" and not calls.flaky_failed:
            calls.flaky_failed = True
            return error_response(500, "upstream exploded (flaky)", "server_error")
        if model == "drop" and not stream:
            return error_response(500, "upstream dropped", "server_error")
        if model not in MODELS:
            return error_response(
                404,
                f"The model `{model}` does not exist.",
                "invalid_request_error",
                "model_not_found",
            )
        if model == "stall":
            await stall(request)
        elif model == "slow":
            await asyncio.sleep(SLOW_S)

        if model == "rich":
            return rich_answer(body, stream)
        if model == "reasoner":
            return reasoner_answer(body, stream)
        if model == "continuer":
            return continuer_answer(body)
        answer, usage = echo_answer(body["messages"])
        finish, matched = "stop", None
        if model == "ok":
            answer, finish, matched = limited(answer, body)
            usage["completion_tokens"] = words(answer)
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if model.startswith("multi"):
            answer = multi_answer(model, body["messages"], answer)
            usage["completion_tokens"] = words(answer)
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not stream:
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": finish,
                        **({"stop_reason": matched} if matched else {}),
                    }
                ],
                "usage": usage,
            }

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

        def chunk(
            delta: dict[str, Any], finish_reason: str | None = None, stop: str | None = None
        ) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            if stop is not None:
                choice["stop_reason"] = stop
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            }
            if include_usage:
                obj["usage"] = None
            return sse(obj)

        async def events() -> AsyncIterator[bytes]:
            calls.pieces_streamed = 0
            yield chunk({"role": "assistant", "content": ""})
            for i, piece in enumerate(stream_pieces(answer)):
                if i == 2 and (model == "drop" or model == "multi_drop" and "<answers>" in answer):
                    raise UpstreamDropped("fake upstream dropped the stream on purpose")
                yield chunk({"content": piece})
                calls.pieces_streamed += 1
                await asyncio.sleep(LOOP_PIECE_S if model == "multi_loop" else 0)
            if model == "drop":  # answers shorter than three words still get cut
                raise UpstreamDropped("fake upstream dropped the stream on purpose")
            yield chunk({}, finish, matched)
            if include_usage:
                yield sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/messages")
    async def anthropic_messages(request: Request) -> Any:
        body = await request.json()
        calls.by_model[str(body.get("model"))] += 1
        calls.last_body = body
        calls.last_auth = request.headers.get("x-api-key")
        text = "echo: " + content_text(body["messages"][-1].get("content"))
        blocks: list[dict[str, Any]] = []
        if body.get("thinking"):
            blocks.append({"type": "thinking", "thinking": REASONING, "signature": "sig-fake"})
        blocks.append({"type": "text", "text": text})
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": blocks,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": words(text) + words(REASONING)},
        }

    @app.post("/v1beta/models/{model}:generateContent")
    async def gemini_generate(model: str, request: Request) -> Any:
        body = await request.json()
        calls.by_model[model] += 1
        calls.last_body = body
        calls.last_auth = request.headers.get("x-goog-api-key")
        user = body["contents"][-1]["parts"][0].get("text", "")
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": "echo: " + user}]},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": words(user),
                "candidatesTokenCount": words(user) + 1,
                "thoughtsTokenCount": 12,
                "totalTokenCount": 2 * words(user) + 13,
            },
            "modelVersion": model,
        }

    return app
