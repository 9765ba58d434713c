"""The one interface of the gateway's API translators: a request in another API's shape
(Anthropic Messages, OpenAI Responses) answered by the chat service and given back in that
shape. :data:`tokenskip.proxy.api.anthropic.TRANSLATOR` and
:data:`tokenskip.proxy.api.responses.TRANSLATOR` implement it; ``routes`` serves both through
``routes._translated``, so the two APIs share one request path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any


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
    events: Callable[[AsyncIterator[str], dict[str, Any]], AsyncIterator[bytes]]
    """``(the chat service's SSE lines, checked body)`` → the API's event stream."""
