"""What the service needs from a backend, and the errors a backend may raise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


class BackendError(Exception):
    """An upstream failure already mapped to the HTTP status the client should see."""

    def __init__(
        self, status: int, message: str, type_: str = "upstream_error", code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code


@dataclass
class Completion:
    """A finished completion in backend-neutral form."""

    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    extra: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None
    """The upstream's whole response body (OpenAI protocol), passed through to the client
    with only usage extended; None for backends that build their own (local models)."""


@dataclass
class Delta:
    """One streamed piece: text, or the end (finish_reason and, if known, usage)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    raw: dict[str, Any] | None = None
    """The upstream's chunk as it came (OpenAI protocol), forwarded to the client as is; on
    the finishing delta, the upstream's usage chunk if it sent one."""


class Backend(Protocol):
    name: str

    async def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion: ...

    def stream(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncIterator[Delta]: ...
