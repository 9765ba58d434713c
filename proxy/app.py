"""The FastAPI app: factory, lifespan and thin routes over :class:`ChatService`.

``create_app()`` reads settings from the environment (``TOKENSKIP_*``), which is how
``tokenskip serve`` and multi-worker uvicorn configure every worker the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from proxy.config import GatewayConfig, Settings, get_settings, load_config
from proxy.errors import ProxyError, install_handlers, validation_message
from proxy.ledger import Ledger
from proxy.metrics import Metrics
from proxy.multi_query import (
    Batcher,
    MultiQuery,
    MultiQueryRequest,
    batched_completion,
    batched_stream,
)
from proxy.protocol import ChatCompletionRequest, error_body
from proxy.service import ChatService

M = TypeVar("M", bound=BaseModel)


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over the limit, by header or by bytes actually sent."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._reject(send)
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send)

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


class _TooLarge(Exception):
    pass


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None) -> FastAPI:
    settings = settings or get_settings()
    config = config or load_config(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        ledger = Ledger(config.ledger_url)
        service = ChatService(config, ledger, metrics)
        app.state.service, app.state.ledger, app.state.metrics = service, ledger, metrics
        app.state.multi_query = MultiQuery(service)
        app.state.batcher = Batcher(app.state.multi_query)
        # Models and tokenizers are loaded: move them out of the collector's sight, so full
        # collections under load do not walk millions of long-lived objects (p99 stalls).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await service.aclose()
            ledger.close()
            gc.unfreeze()  # hand everything back to the collector before the process exits

    app = FastAPI(title="tokenskip proxy", version="0.1.0", lifespan=lifespan)
    install_handlers(app)
    keys = frozenset(config.api_keys)

    def authorize(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        token = (
            header[7:].strip()
            if header.lower().startswith("bearer ")
            else request.headers.get("api-key", "")
        )
        if token not in keys:
            raise ProxyError(
                401,
                "Incorrect API key provided. Pass a gateway key as 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )

    def service_of(request: Request) -> ChatService:
        return request.app.state.service

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(
        request: Request, service: ChatService = Depends(service_of)
    ) -> Response:
        body = await read_body(request, ChatCompletionRequest)
        if body is None:
            return Response(status_code=499)  # the client left while sending; nothing to answer
        batcher: Batcher = request.app.state.batcher
        if batcher.settings(body.model) is not None:
            answer = await until_disconnected(request, batcher.submit(body))
            if answer is not None:
                if body.stream:
                    return StreamingResponse(
                        batched_stream(body, answer),
                        media_type="text/event-stream",
                        headers={"cache-control": "no-cache", "x-tokenskip-batched": "true"},
                    )
                return JSONResponse(
                    batched_completion(body, answer), headers={"x-tokenskip-batched": "true"}
                )
        prepared = await service.prepare(body)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            headers = {**prepared.headers(), "cache-control": "no-cache"}
            return StreamingResponse(
                service.stream(prepared, include_usage),
                media_type="text/event-stream",
                headers=headers,
            )
        result = await until_disconnected(request, service.complete(prepared))
        return JSONResponse(result, headers=prepared.headers(result["usage"]))

    @app.post("/v1/multi_query", dependencies=[Depends(authorize)])
    async def multi_query(request: Request) -> Response:
        """Many queries over one context in one call (Query-OPT); one answer per query."""
        body = await read_body(request, MultiQueryRequest)
        if body is None:
            return Response(status_code=499)
        mq: MultiQuery = request.app.state.multi_query
        return JSONResponse(await until_disconnected(request, mq.run(body)))

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "tokenskip-local" if e.is_local else "tokenskip",
                }
                for name, e in config.models.items()
            ],
        }

    @app.get("/v1/savings", dependencies=[Depends(authorize)])
    async def savings(
        request: Request, since: str | None = None, until: str | None = None
    ) -> dict[str, Any]:
        return request.app.state.ledger.totals(_when(since, "since"), _when(until, "until"))

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": sorted(config.models)}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    return BodySizeLimit(app, settings.max_body_bytes)  # type: ignore[return-value]


async def read_body(request: Request, model: type[M]) -> M | None:
    """The JSON body validated as ``model``: 400 for bad JSON, 422 for a bad schema, None
    when the client left while sending."""
    try:
        raw = await request.body()
    except ClientDisconnect:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyError(
            400, f"the request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise ProxyError(422, message, param=param) from None


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
            raise ProxyError(499, "the client closed the connection", code="client_closed")


def _when(value: str | None, name: str) -> float | None:
    """Unix seconds or ISO-8601 → unix seconds."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ProxyError(
            400, f"{name} must be unix seconds or ISO-8601, got {value!r}", param=name
        ) from None
