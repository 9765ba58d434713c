"""The FastAPI app: factory, lifespan and thin routes over :class:`ChatService`.

``create_app()`` reads settings from the environment (``TOKENSKIP_*``), which is how
``tokenskip serve`` and multi-worker uvicorn configure every worker the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
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
from proxy.ledger import Ledger, default_url
from proxy.metrics import Metrics
from proxy.multi_query import (
    Batcher,
    MultiQuery,
    MultiQueryRequest,
    batched_completion,
    batched_stream,
)
from proxy.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    Health,
    ModelList,
    SavingsReport,
    error_body,
)
from proxy.service import ChatService

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


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None) -> FastAPI:
    settings = settings or get_settings()
    config = config or load_config(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        ledger = Ledger(config.ledger_url or default_url(settings.host, settings.port))
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

    @app.post(
        "/v1/chat/completions",
        dependencies=[Depends(authorize)],
        openapi_extra=_body(ChatCompletionRequest),
        responses={
            200: {
                "model": ChatCompletionResponse,
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "a chat completion, or an SSE stream of chunks when stream is true",
            },
            **ERRORS,
        },
        response_class=JSONResponse,
        summary="Chat completions (OpenAI protocol)",
    )
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

    @app.post(
        "/v1/multi_query",
        dependencies=[Depends(authorize)],
        openapi_extra=_body(MultiQueryRequest),
        responses={
            200: {"content": {"application/json": {"schema": {"type": "object"}}}},
            **ERRORS,
        },
        summary="Many queries over one context in one call (Query-OPT)",
    )
    async def multi_query(request: Request) -> Response:
        """Many queries over one context in one call (Query-OPT); one answer per query."""
        body = await read_body(request, MultiQueryRequest)
        if body is None:
            return Response(status_code=499)
        mq: MultiQuery = request.app.state.multi_query
        return JSONResponse(await until_disconnected(request, mq.run(body)))

    @app.get(
        "/v1/models",
        dependencies=[Depends(authorize)],
        response_model=ModelList,
        responses=ERRORS,
        summary="The served models",
    )
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

    @app.get(
        "/v1/savings",
        dependencies=[Depends(authorize)],
        response_model=SavingsReport,
        responses=ERRORS,
        summary="Ledger totals: tokens and cost saved, by model and by kind",
    )
    async def savings(
        request: Request, since: str | None = None, until: str | None = None
    ) -> dict[str, Any]:
        return request.app.state.ledger.totals(_when(since, "since"), _when(until, "until"))

    @app.get("/healthz", response_model=Health, summary="Liveness and the served models")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": sorted(config.models)}

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        summary="Prometheus metrics",
    )
    async def metrics(request: Request) -> Response:
        return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return Edge(app, settings.max_body_bytes)  # type: ignore[return-value]


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "bad JSON or a request the gateway cannot serve"),
        (401, "missing or wrong gateway key"),
        (404, "unknown model"),
        (413, "body too large"),
        (422, "a field outside its schema"),
        (429, "rate limited upstream"),
        (500, "internal error"),
        (502, "the upstream failed after retries and fallbacks"),
        (504, "the upstream timed out"),
    )
}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """An ``openapi_extra`` request body: the routes read and validate bodies themselves
    (to answer in OpenAI's error shape), so FastAPI cannot see the model."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the request models, the bearer scheme, and errors in the
    shape the gateway really sends (FastAPI's own 422 shape removed)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (ChatCompletionRequest, MultiQueryRequest):
        extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(extra.pop("$defs", {}))
        schemas[model.__name__] = extra
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    doc["components"]["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "description": "a gateway key"}
    }
    for path, ops in doc.get("paths", {}).items():
        for op in ops.values():
            if path.startswith("/v1/"):
                op["security"] = [{"bearerAuth": []}]
            responses = op.get("responses", {})
            if "422" in responses:
                responses["422"] = {
                    "description": "a field outside its schema",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                        }
                    },
                }
    app.openapi_schema = doc
    return doc


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
    except RecursionError:
        raise ProxyError(
            400, "the request body is nested too deeply to be a request", code="invalid_json"
        ) from None
    check_unicode(data)
    if isinstance(data, dict) and isinstance(data.get("model"), str):
        request.state.model = data["model"]  # for the ledger row of a refused request
    try:
        return model.model_validate(data)
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
