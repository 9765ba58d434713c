"""The Anthropic Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``) over the
chat service: the same policy, knob, ledger and fallbacks as chat completions.

A Messages request is translated to a chat-completions request with litellm's own
Anthropic adapter (system, content blocks, images, tools and tool results, thinking), served
by :class:`~tokenskip.proxy.serving.service.ChatService` on whatever backend the model has, and the
answer translated back: a ``message`` object, or the event stream ``message_start`` ...
``content_block_delta`` ... ``message_stop``. Errors come in Anthropic's shape
(``{"type": "error", "error": {"type", "message"}}``) with Anthropic's statuses (a schema
error is 400, not 422).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

from tokenskip.proxy.api.translator import Translator
from tokenskip.proxy.errors import ProxyError, anthropic_error
from tokenskip.proxy.protocol import savings_usage, sse_payloads

error_response = anthropic_error
"""Anthropic's error shape (built in :mod:`tokenskip.proxy.errors`, which renders every
error of /v1/messages with it)."""

PATH = "/v1/messages"


def _adapter() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm.llms.anthropic.pass_through.adapters.transformation import AnthropicAdapter

    return AnthropicAdapter()


def check(body: Any) -> dict[str, Any]:
    """The parts of a Messages body the gateway needs, checked as Anthropic checks them."""
    if not isinstance(body, dict):
        raise ProxyError(400, "the request body must be a JSON object")
    for name, kind in (("model", str), ("messages", list), ("max_tokens", int)):
        value = body.get(name)
        if value is None:
            raise ProxyError(400, f"{name}: Field required", param=name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProxyError(400, f"{name}: must be a {kind.__name__}", param=name)
    if body["max_tokens"] < 1:
        raise ProxyError(400, "max_tokens: must be at least 1", param="max_tokens")
    for i, m in enumerate(body["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ProxyError(
                400, f"messages.{i}.role: must be 'user' or 'assistant'", param=f"messages.{i}"
            )
        content = m.get("content")
        if not isinstance(content, (str, list)):
            raise ProxyError(
                400,
                f"messages.{i}.content: must be a string or a list of content blocks",
                param=f"messages.{i}.content",
            )
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise ProxyError(
                        400,
                        f"messages.{i}.content.{j}: a content block needs a string 'type'",
                        param=f"messages.{i}.content.{j}",
                    )
                if block["type"] == "tool_result" and block.get("tool_use_id") not in _tool_uses(
                    body["messages"][i - 1] if i else None
                ):
                    raise ProxyError(
                        400,
                        f"messages.{i}.content.{j}: unexpected tool_use_id "
                        f"{block.get('tool_use_id')!r} in a tool_result block: each tool_result "
                        "block must have a corresponding tool_use block in the previous message",
                        param=f"messages.{i}.content.{j}.tool_use_id",
                    )
    return body


def _tool_uses(message: Any) -> set[str]:
    """The ids of the tool_use blocks of an assistant message."""
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return set()
    content = message.get("content")
    return {
        b["id"]
        for b in (content if isinstance(content, list) else [])
        if isinstance(b, dict) and b.get("type") == "tool_use" and isinstance(b.get("id"), str)
    }


TRANSLATED_BLOCKS = {
    "text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking",
}  # fmt: skip
"""Content block types litellm's adapter carries into chat completions."""


def translatable(body: dict[str, Any]) -> dict[str, Any]:
    """The body, if chat completions can carry all of it: a block of a type the adapter
    does not know is refused by name rather than dropped (a same-protocol upstream gets every
    type as sent: :mod:`tokenskip.proxy.serving.native`)."""
    for i, m in enumerate(body["messages"]):
        content = m.get("content")
        for j, block in enumerate(content if isinstance(content, list) else []):
            if block["type"] not in TRANSLATED_BLOCKS:
                raise ProxyError(
                    400,
                    f"messages.{i}.content.{j}: content blocks of type {block['type']!r} "
                    "cannot be sent to this model (its upstream takes chat completions, which "
                    f"carry only {', '.join(sorted(TRANSLATED_BLOCKS))})",
                    param=f"messages.{i}.content.{j}.type",
                )
    return body


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions request a Messages request stands for (``tokenskip`` kept)."""
    body = dict(body)
    tokenskip = body.pop("tokenskip", None)
    stream = bool(body.get("stream"))
    try:
        chat = _adapter().translate_completion_input_params(dict(body))
    except (ValueError, TypeError, KeyError) as exc:
        raise ProxyError(400, f"cannot read this Messages request: {exc}") from None
    if chat is None:
        raise ProxyError(400, "cannot read this Messages request")
    chat = {k: v for k, v in dict(chat).items() if v is not None}
    chat["model"] = body["model"]
    chat.pop("stream", None)
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if tokenskip is not None:
        chat["tokenskip"] = tokenskip
    return chat


def from_chat(result: dict[str, Any], model: str) -> dict[str, Any]:
    """A chat completion as Anthropic's ``message`` object, the gateway's savings beside."""
    from litellm import ModelResponse

    response = ModelResponse(**{k: v for k, v in result.items() if k != "tokenskip"})
    message = _adapter().translate_completion_output_params(response)
    out = message.model_dump(exclude_none=True) if hasattr(message, "model_dump") else dict(message)
    out["model"] = model
    out.setdefault("usage", {}).update(savings_usage(result.get("usage") or {}))
    out["tokenskip"] = result.get("tokenskip")
    return out


async def events(chunks: AsyncIterator[str], model: str) -> AsyncIterator[bytes]:
    """The chat service's SSE lines as Anthropic's stream events."""
    from litellm.types.utils import ModelResponseStream

    failure: list[dict[str, Any]] = []

    async def parsed() -> AsyncIterator[Any]:
        async for line in chunks:
            for data in sse_payloads(line):
                if data == "[DONE]":
                    return
                obj = json.loads(data)
                if "error" in obj:
                    failure.append(obj["error"])
                    return
                obj.pop("tokenskip", None)
                yield ModelResponseStream(**obj)

    stream = _adapter().translate_completion_output_params_streaming(parsed(), model=model)
    held: list[bytes] = []
    async for event in stream:
        data = event if isinstance(event, bytes) else str(event).encode()
        if data.startswith(b"event: message_stop"):
            held.append(data)  # sent last, and only if nothing failed
            continue
        yield data
    if failure:
        kind = {"rate_limit_error": "rate_limit_error", "upstream_timeout": "timeout_error"}.get(
            str(failure[0].get("type") or failure[0].get("code")), "api_error"
        )
        error = {
            "type": "error",
            "error": {"type": kind, "message": failure[0].get("message") or "upstream error"},
        }
        yield f"event: error\ndata: {json.dumps(error)}\n\n".encode()
        return
    for data in held:
        yield data


def count_tokens(service: Any, body: dict[str, Any]) -> dict[str, Any]:
    """``/v1/messages/count_tokens``: the prompt in the model's tokenizer (estimated when the
    gateway does not have the model's own)."""
    from tokenskip.proxy.serving.prompt import message_texts

    chat = to_chat({**body, "max_tokens": body.get("max_tokens") or 1})
    entry = service.models.entry(chat["model"])
    counter = service.models.counter(entry)
    total = sum(
        counter.tokenizer.count(text) for m in chat.get("messages", []) for text in message_texts(m)
    )
    if chat.get("tools"):
        total += counter.tokenizer.count(json.dumps(chat["tools"]))
    return {"input_tokens": total, "tokens_estimated": not counter.exact}


TRANSLATOR = Translator(
    api="messages",
    check=check,
    translatable=translatable,
    to_chat=to_chat,
    from_chat=lambda result, body: from_chat(result, body["model"]),
    events=lambda chunks, body: events(chunks, body["model"]),
)
"""Anthropic Messages ⇄ chat completions."""
