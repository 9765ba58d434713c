"""Errors in OpenAI's shape, and the handlers that make every failure one."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenskip.proxy.protocol import error_body, short

log = logging.getLogger(__name__)


class ProxyError(Exception):
    """A failure with the status, type and code a client should see."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status,
            message,
            type_,
            code,
            param,
        )
        self.accounted = False
        """True once the service wrote this request's ledger row (routed requests)."""

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.type, self.code, self.param),
            status_code=self.status,
            headers=headers,
        )


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line from pydantic errors, and the first offending parameter."""
    parts, param = [], None
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        param = param or loc or None
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts), param


def served_endpoints(app: Any) -> list[str]:
    """``METHOD /path`` of every public route, read from the app's OpenAPI document (which
    sees routes however they were included; the documentation pages are not in it)."""
    paths = app.openapi().get("paths", {}) if hasattr(app, "openapi") else {}
    return [
        f"{method.upper()} {path}"
        for path, ops in paths.items()
        for method in sorted(ops)
        if method != "head"
    ]


UNCOUNTED_PATHS = ("/healthz", "/metrics", "/docs", "/redoc", "/openapi.json")


def record_refusal(request: Request, exc: ProxyError) -> None:
    """The ledger row and metric of a request refused before it reached a model (401, 404,
    4xx schema errors, 413...) or failed outside the service; routed requests have theirs."""
    if exc.accounted or request.url.path.startswith(UNCOUNTED_PATHS):
        return
    service = getattr(request.app.state, "service", None)
    if service is not None:
        with contextlib.suppress(Exception):  # accounting never changes the answer
            service.record_refusal(getattr(request.state, "model", None), exc.status, exc.message)
    exc.accounted = True


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    499: "invalid_request_error",
    500: "api_error",
    502: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error as Anthropic's API gives one (422 becomes 400, as Anthropic answers schema
    errors)."""
    status = 400 if status == 422 else status
    default = "api_error" if status >= 500 else "invalid_request_error"
    kind = ANTHROPIC_ERROR_TYPES.get(status, default)
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}},
        status_code=status,
        headers=headers,
    )


def render(
    request: Request, error: ProxyError, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The error in the shape of the API the request was for (Anthropic's on /v1/messages)."""
    if request.url.path.startswith("/v1/messages"):
        return anthropic_error(error.status, error.message, headers)
    return error.response(headers=headers)


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProxyError)
    async def _proxy_error(request: Request, exc: ProxyError) -> JSONResponse:
        record_refusal(request, exc)
        return render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        error = ProxyError(422, message, param=param)
        record_refusal(request, error)
        return render(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = ProxyError(
                404,
                f"Unknown path {request.method} {short(request.url.path)}; this gateway serves "
                + ", ".join(served_endpoints(request.app)),
                code="unknown_path",
            )
            record_refusal(request, error)
            return render(request, error)
        code = "method_not_allowed" if exc.status_code == 405 else None
        message = str(exc.detail)
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow", "")
            message = f"{request.method} is not allowed on {short(request.url.path)}; use {allowed}"
        error = ProxyError(exc.status_code, message, code=code)
        record_refusal(request, error)
        return render(request, error, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        error = ProxyError(500, f"internal error: {type(exc).__name__}", "server_error")
        record_refusal(request, error)
        return render(request, error)
