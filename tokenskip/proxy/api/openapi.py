"""The OpenAPI document: the request models the routes validate themselves, the bearer
scheme, and errors in the shape the gateway really sends."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from tokenskip.proxy.protocol import (
    AnthropicError,
    ChatCompletionRequest,
    ErrorResponse,
    MessagesRequest,
    MultiQueryRequest,
    ResponsesRequest,
)

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


ANTHROPIC_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": AnthropicError, "description": text}
    for status, text in (
        (400, "bad JSON, a field outside its schema, or a request the gateway cannot serve"),
        (401, "missing or wrong gateway key"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "rate limited upstream"),
        (500, "internal error"),
        (502, "the upstream failed after retries and fallbacks"),
        (504, "the upstream timed out"),
    )
}
"""The Messages API's errors, in Anthropic's shape (a schema error is 400 there)."""


def request_body(model: type[BaseModel]) -> dict[str, Any]:
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
    for model in (ChatCompletionRequest, MultiQueryRequest, MessagesRequest, ResponsesRequest):
        extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(extra.pop("$defs", {}))
        schemas[model.__name__] = extra
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    doc["components"]["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "description": "a gateway key"},
        "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "x-api-key",
                       "description": "a gateway key, as Anthropic clients send it"},
    }  # fmt: skip
    for path, ops in doc.get("paths", {}).items():
        for op in ops.values():
            if path.startswith("/v1/messages"):
                op["security"] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
            elif path.startswith("/v1/"):
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
