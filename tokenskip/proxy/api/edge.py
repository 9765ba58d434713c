"""The gateway's HTTP edge: body limits, validated bodies, and errors that keep the connection.

:class:`Edge` wraps the whole app (413 by Content-Length or by the bytes a chunked body really
sends; a last-resort OpenAI-shaped 500 that never resets the keep-alive connection).
:func:`read_body` turns a request body into a validated model with OpenAI-shaped 400/422s;
:func:`until_disconnected` cancels work whose client has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from tokenskip.proxy import jsonio
from tokenskip.proxy.errors import ProxyError, validation_message
from tokenskip.proxy.protocol import error_body

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class Edge:
    """ASGI middleware at the gateway's edge.

    - 413 for a body over the limit, by its Content-Length or, for a chunked body, by the
      bytes actually sent (raised as :class:`TooLarge` while the route reads it).
    - An error that escaped every handler becomes an OpenAI-shaped 500 (or, once a response
      has started, a clean end of it) and is logged, never re-raised, so the server keeps
      the client's keep-alive connection for its next request.
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._reject(send)
        received = 0
        started = False

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise TooLarge(self.max_bytes)
            return message

        async def tracked(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, tracked)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            error = (
                exc
                if isinstance(exc, ProxyError)
                else ProxyError(
                    500, f"internal error: {type(exc).__name__}", "server_error", "internal_error"
                )
            )
            await error.response()(scope, receive, send)

    async def _reject(self, send: Any) -> None:
        body = json.dumps(
            error_body(
                f"request body exceeds {self.max_bytes} bytes",
                "invalid_request_error",
                "request_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class TooLarge(ProxyError):
    """A body that passed the Content-Length check but sent more bytes (chunked)."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body exceeds {max_bytes} bytes", code="request_too_large")


async def read_body(request: Request, model: type[M]) -> M | None:
    """The JSON body validated as ``model``: 400 for bad JSON, 422 for a bad schema, None
    when the client left while sending."""
    read = await read_request(request, model)
    return None if read is None else read[0]


async def read_request(request: Request, model: type[M]) -> tuple[M, Any] | None:
    """The JSON body validated as ``model``, and the body as parsed (parsed once): 400 for
    bad JSON, 422 for a bad schema, None when the client left while sending."""
    try:
        raw = await request.body()
    except ClientDisconnect:
        return None
    try:
        data, clean = jsonio.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    except RecursionError:
        raise ProxyError(
            400, "the request body is nested too deeply to be a request", code="invalid_json"
        ) from None
    if not clean:  # orjson refuses a lone surrogate; json does not
        check_unicode(data)
    if isinstance(data, dict) and isinstance(data.get("model"), str):
        request.state.model = data["model"]  # for the ledger row of a refused request
    try:
        return model.model_validate(data), data
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise ProxyError(422, message, param=param) from None
    except RecursionError:
        raise ProxyError(
            400, "the request body is nested too deeply to be a request", code="invalid_json"
        ) from None


def check_unicode(data: Any) -> None:
    """400 for a string no tokenizer can take: a lone UTF-16 surrogate (JSON ``\\ud800``)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
        return
    except UnicodeEncodeError:
        pass
    except RecursionError:
        raise ProxyError(
            400, "the request body is nested too deeply to be a request", code="invalid_json"
        ) from None
    path = _surrogate_path(data, "")
    raise ProxyError(
        400,
        f"{path or 'the body'} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
        "escape), which is not text; send valid Unicode",
        param=path or None,
        code="invalid_unicode",
    )


def _surrogate_path(value: Any, path: str) -> str | None:
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str):
                    try:
                        k.encode("utf-8")
                    except UnicodeEncodeError:
                        return where or "a key"
                stack.append((v, f"{where}.{k}" if where else str(k)))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


async def until_disconnected(request: Request, work: Awaitable[Any], poll_s: float = 0.25) -> Any:
    """Await ``work``, cancelling it if the client goes away first (frees a local batch slot
    or an upstream connection). A request that finishes within ``poll_s`` never polls."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=poll_s)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            error = ProxyError(499, "the client closed the connection", code="client_closed")
            error.accounted = True  # the service wrote the cancelled request's row
            raise error
