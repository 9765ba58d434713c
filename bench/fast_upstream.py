"""A very fast OpenAI-compatible upstream for proxy benchmarks: a raw ASGI app, no framework.

``POST /v1/chat/completions`` returns a canned ``chat.completion``, ``POST /v1/responses`` a
canned Responses ``response`` and ``POST /v1/messages`` a canned Anthropic ``message``;
``GET /healthz`` and
``GET /v1/models`` answer for readiness checks; anything else is 404. It never streams.

By default ``usage.prompt_tokens`` is a fixed number, so the app costs next to nothing per
request. With ``FAST_UPSTREAM_TOKENIZER`` set to a ``tokenizer.json`` file, it counts the text
of every message content with that tokenizer (no special tokens: the proxy's own way of
counting), so a proxy that compresses prompts reports exact sent/original counts.

Run it with::

    uvicorn --app-dir bench fast_upstream:app --loop uvloop --http httptools \
        --log-level warning --port 8101
"""

from __future__ import annotations

import json
import os
from typing import Any

CANNED_TEXT = "The answer is 42."
CANNED_PROMPT_TOKENS = 12
CANNED_COMPLETION_TOKENS = 6
TOKENIZER_ENV = "FAST_UPSTREAM_TOKENIZER"

_JSON = [(b"content-type", b"application/json")]


def _load_counter() -> Any:
    """A ``text -> token count`` function from ``$FAST_UPSTREAM_TOKENIZER``, or None."""
    path = os.environ.get(TOKENIZER_ENV)
    if not path:
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids) if text else 0


def _content_text(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return []


def completion_body(request: dict[str, Any], count: Any) -> bytes:
    """The canned completion for a parsed request body."""
    prompt_tokens = CANNED_PROMPT_TOKENS
    if count is not None:
        prompt_tokens = sum(
            count(text)
            for m in request.get("messages", [])
            for text in _content_text(m.get("content"))
        )
    body = {
        "id": "chatcmpl-fastupstream",
        "object": "chat.completion",
        "created": 1700000000,
        "model": request.get("model", "m"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": CANNED_TEXT},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": CANNED_COMPLETION_TOKENS,
            "total_tokens": prompt_tokens + CANNED_COMPLETION_TOKENS,
        },
    }
    return json.dumps(body).encode()


def response_body(request: dict[str, Any]) -> bytes:
    """The canned Responses API answer."""
    body = {
        "id": "resp_fastupstream",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "model": request.get("model", "m"),
        "output": [
            {
                "id": "msg_fastupstream",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": CANNED_TEXT, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": CANNED_PROMPT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": CANNED_COMPLETION_TOKENS,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": CANNED_PROMPT_TOKENS + CANNED_COMPLETION_TOKENS,
        },
    }
    return json.dumps(body).encode()


def message_body(request: dict[str, Any]) -> bytes:
    """The canned Anthropic Messages answer."""
    body = {
        "id": "msg_fastupstream",
        "type": "message",
        "role": "assistant",
        "model": request.get("model", "m"),
        "content": [{"type": "text", "text": CANNED_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": CANNED_PROMPT_TOKENS, "output_tokens": CANNED_COMPLETION_TOKENS},
    }
    return json.dumps(body).encode()


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Any, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FastUpstream:
    """The ASGI app. The optional tokenizer loads at lifespan startup, not at import."""

    def __init__(self) -> None:
        self.count: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path.endswith(("/chat/completions", "/responses", "/messages")):
            raw = await _read_body(receive)
            try:
                request = json.loads(raw)
            except ValueError:
                return await _respond(send, 400, b'{"error": {"message": "bad json"}}')
            if path.endswith("/responses"):
                return await _respond(send, 200, response_body(request))
            if path.endswith("/messages"):
                return await _respond(send, 200, message_body(request))
            return await _respond(send, 200, completion_body(request, self.count))
        if method == "GET" and path in ("/healthz", "/health"):
            return await _respond(send, 200, b'{"status": "ok"}')
        if method == "GET" and path.endswith("/models"):
            return await _respond(send, 200, b'{"object": "list", "data": [{"id": "m"}]}')
        await _respond(send, 404, b'{"error": {"message": "not found"}}')

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.count = _load_counter()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


app = FastUpstream()
