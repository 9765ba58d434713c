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
    """Backend facts beside the answer (a local model's ``forced_at``)."""
    reasoning_tokens: int | None = None
    """The upstream's ``completion_tokens_details.reasoning_tokens``, when it sent them."""
    raw: dict[str, Any] | None = None
    """The upstream's whole response body (OpenAI protocol), passed through to the client
    with only usage extended; None for backends that build their own (local models)."""
    stop_sequence: str | None = None
    """The stop string that ended the text, where the backend knows it (a local model)."""
    tool_calls: list[dict[str, Any]] | None = None
    """OpenAI ``tool_calls`` a local model made (an upstream's are in ``raw``)."""


@dataclass
class Delta:
    """One streamed piece: text, or the end (finish_reason and, if known, usage)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    forced_at: int | None = None
    """Local budget forcing: the output index where the answer cue went in."""
    stop_sequence: str | None = None
    """On the finishing delta: the stop string that ended the text, where known."""
    tool_calls: list[dict[str, Any]] | None = None
    """A local model's tool calls, as OpenAI streams them (with ``index``)."""
    raw: dict[str, Any] | None = None
    """The upstream's chunk as it came (OpenAI protocol), forwarded to the client as is; on
    the finishing delta, the upstream's usage chunk if it sent one."""


def reasoning_tokens_of(usage: Any) -> int | None:
    """``completion_tokens_details.reasoning_tokens`` of an OpenAI usage object or dict."""
    if usage is None:
        return None
    details = (
        usage.get("completion_tokens_details")
        if isinstance(usage, dict)
        else getattr(usage, "completion_tokens_details", None)
    )
    if details is None:
        return None
    value = (
        details.get("reasoning_tokens")
        if isinstance(details, dict)
        else getattr(details, "reasoning_tokens", None)
    )
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Backend(Protocol):
    name: str

    async def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion: ...

    def stream(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncIterator[Delta]: ...
