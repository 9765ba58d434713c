"""The gateway's routes: thin handlers over the chat service, multi-query and the ledger.

Each handler reads and validates its own body (:func:`tokenskip.proxy.api.edge.read_body`, so
errors come in OpenAI's shape) and hands the work to the objects the app's lifespan put on
``app.state``.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from tokenskip.proxy.api import anthropic
from tokenskip.proxy.api import responses as responses_api
from tokenskip.proxy.api.edge import read_body, read_request, until_disconnected
from tokenskip.proxy.api.openapi import ANTHROPIC_ERRORS, ERRORS, request_body
from tokenskip.proxy.api.translator import Translator, chat_request
from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.jsonio import JSONBody
from tokenskip.proxy.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    Health,
    MessagesRequest,
    ModelList,
    MultiQueryRequest,
    ResponsesRequest,
    SavingsReport,
)
from tokenskip.proxy.serving import native
from tokenskip.proxy.serving.batcher import Batcher, batched_completion, batched_stream
from tokenskip.proxy.serving.multi_query import MultiQuery
from tokenskip.proxy.serving.service import ChatService

router = APIRouter()


def authorize(request: Request) -> None:
    """401 unless the request carries one of the gateway's keys (when it has any). Each
    handler calls it first: as a FastAPI dependency it would cost more than the whole rest
    of a pass-through request's own work (dependency solving, and a thread-pool hop for a
    plain ``def``)."""
    keys = request.app.state.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    token = (
        header[7:].strip()
        if header.lower().startswith("bearer ")
        else request.headers.get("api-key", "") or request.headers.get("x-api-key", "")
    )
    if token not in keys:
        raise ProxyError(
            401,
            "Incorrect API key provided. Pass a gateway key as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )


@router.post(
    "/v1/chat/completions",
    openapi_extra=request_body(ChatCompletionRequest),
    responses={
        200: {
            "model": ChatCompletionResponse,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "a chat completion, or an SSE stream of chunks when stream is true",
        },
        **ERRORS,
    },
    response_class=JSONBody,
    summary="Chat completions (OpenAI protocol)",
)
async def chat_completions(request: Request) -> Response:
    authorize(request)
    service: ChatService = request.app.state.service
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
            return JSONBody(
                batched_completion(body, answer), headers={"x-tokenskip-batched": "true"}
            )
    x = await service.open(body)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        headers = {**x.headers(), "cache-control": "no-cache"}
        return StreamingResponse(
            service.stream(x, include_usage),
            media_type="text/event-stream",
            headers=headers,
        )
    result = await until_disconnected(request, service.complete(x))
    return JSONBody(result, headers=x.headers(result["usage"]))


@router.post(
    "/v1/messages",
    openapi_extra=request_body(MessagesRequest),
    responses={
        200: {
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
            "description": "an Anthropic message, or its event stream when stream is true",
        },
        **ANTHROPIC_ERRORS,
    },
    response_class=JSONBody,
    summary="Messages (Anthropic protocol)",
)
async def messages(request: Request) -> Response:
    authorize(request)
    service: ChatService = request.app.state.service
    return await _translated(request, service, MessagesRequest, anthropic.TRANSLATOR)


@router.post(
    "/v1/responses",
    openapi_extra=request_body(ResponsesRequest),
    responses={
        200: {
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
            "description": "a response object, or its event stream when stream is true",
        },
        **ERRORS,
    },
    response_class=JSONBody,
    summary="Responses (OpenAI protocol)",
)
async def responses(request: Request) -> Response:
    authorize(request)
    service: ChatService = request.app.state.service
    return await _translated(request, service, ResponsesRequest, responses_api.TRANSLATOR)


async def _translated(
    request: Request, service: ChatService, schema: type[BaseModel], api: Translator
) -> Response:
    """A request in another API's shape: its same-protocol pass-through when the model has
    one, else translated to chat completions, served, and answered in that API's shape."""
    read = await read_request(request, schema)  # validated once, parsed once
    if read is None:
        return Response(status_code=499)
    raw = api.check(read[1])
    if native.applies(service, api.api, raw):
        answer = await native.forward(service, request, api.api, await request.body(), raw)
        if answer is not None:
            return answer
    chat = chat_request(api.to_chat(api.translatable(raw)))
    x = await service.open(chat)
    if chat.stream:
        headers = {**x.headers(), "cache-control": "no-cache"}
        return StreamingResponse(
            api.events(service.stream(x, True), raw, x),
            media_type="text/event-stream",
            headers=headers,
        )
    result = await until_disconnected(request, service.complete(x))
    return JSONBody(api.from_chat(result, raw), headers=x.headers(result["usage"]))


@router.post(
    "/v1/messages/count_tokens",
    openapi_extra=request_body(MessagesRequest),
    responses={
        200: {"content": {"application/json": {"schema": {"type": "object"}}}},
        **ANTHROPIC_ERRORS,
    },
    summary="Count a Messages request's input tokens (Anthropic protocol)",
)
async def count_tokens(request: Request) -> Response:
    authorize(request)
    service: ChatService = request.app.state.service
    read = await read_request(request, MessagesRequest)
    if read is None:
        return Response(status_code=499)
    raw = read[1]
    sent = await request.body()
    checked = anthropic.check({"max_tokens": 1, **raw})
    if native.applies(service, "messages", checked):
        answer = await native.count_tokens(service, request, sent, raw)
        if answer is not None:
            return answer
    return JSONBody(await anthropic.count_tokens(service, checked))


@router.post(
    "/v1/multi_query",
    openapi_extra=request_body(MultiQueryRequest),
    responses={
        200: {"content": {"application/json": {"schema": {"type": "object"}}}},
        **ERRORS,
    },
    summary="Many queries over one context in one call (Query-OPT)",
)
async def multi_query(request: Request) -> Response:
    """Many queries over one context in one call (Query-OPT); one answer per query."""
    authorize(request)
    body = await read_body(request, MultiQueryRequest)
    if body is None:
        return Response(status_code=499)
    mq: MultiQuery = request.app.state.multi_query
    return JSONBody(await until_disconnected(request, mq.run(body)))


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=ERRORS,
    summary="The served models",
)
async def models(request: Request) -> dict[str, Any]:
    authorize(request)
    config = request.app.state.config
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


@router.get(
    "/v1/savings",
    response_model=SavingsReport,
    responses=ERRORS,
    summary="Ledger totals: tokens and cost saved, by model and by kind",
)
async def savings(
    request: Request, since: str | None = None, until: str | None = None
) -> dict[str, Any]:
    authorize(request)
    return request.app.state.ledger.totals(_when(since, "since"), _when(until, "until"))


@router.get("/healthz", response_model=Health, summary="Liveness and the served models")
async def healthz(request: Request) -> dict[str, Any]:
    backlog = request.app.state.ledger.backlog
    return {
        "status": "degraded" if len(backlog) else "ok",
        "models": sorted(request.app.state.config.models),
        "ledger": {"backlog_rows": len(backlog), "dropped_rows": backlog.dropped},
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")


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
