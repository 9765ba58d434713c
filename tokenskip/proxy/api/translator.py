"""The one interface of the gateway's API translators: a request in another API's shape
(Anthropic Messages, OpenAI Responses) answered by the chat service and given back in that
shape. :data:`tokenskip.proxy.api.anthropic.TRANSLATOR` and
:data:`tokenskip.proxy.api.responses.TRANSLATOR` implement it; ``routes`` serves both through
``routes._translated``, so the two APIs share one request path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tokenskip.proxy import jsonio
from tokenskip.proxy.errors import ProxyError, validation_message
from tokenskip.proxy.protocol import ChatCompletionRequest, sse_payloads
from tokenskip.proxy.serving.exchange import Exchange


@dataclass(frozen=True)
class Translator:
    """What the gateway needs to serve an API by translating it to chat completions."""

    api: str
    """The API's name in ``native`` (``messages`` or ``responses``): its same-protocol
    pass-through is tried first."""
    check: Callable[[Any], dict[str, Any]]
    """The request body checked field by field (the API's own 400s), as a dict."""
    translatable: Callable[[dict[str, Any]], dict[str, Any]]
    """The checked body with what cannot be translated refused by name (400)."""
    to_chat: Callable[[dict[str, Any]], dict[str, Any]]
    """The chat-completions request the body stands for (``tokenskip`` kept)."""
    from_chat: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
    """``(chat completion, checked body)`` → the API's response object."""
    events: Callable[[AsyncIterator[str], dict[str, Any], Exchange], AsyncIterator[bytes]]
    """``(the chat service's SSE lines, checked body, the request's exchange)`` → the API's
    event stream."""


def chat_request(data: dict[str, Any]) -> ChatCompletionRequest:
    """A translated request as the chat service takes it; what it cannot be is the client's
    mistake (a 4xx naming the field), never a 500."""
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise ProxyError(422, message, param=param) from None


async def chat_chunks(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The chat service's SSE lines as parsed chunks (``[DONE]`` left out), which both
    translators' event streams are built from."""
    async for line in lines:
        for data in sse_payloads(line):
            if data != "[DONE]":
                yield jsonio.loads(data.encode())[0]
