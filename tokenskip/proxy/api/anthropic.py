"""The Anthropic Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``) over the
chat service: the same policy, knob, ledger and fallbacks as chat completions.

Written from Anthropic's API reference (the official SDK's types, generated from it), not
borrowed from an adapter: a Messages request becomes a chat-completions request field by
field (:func:`to_chat`), the chat service answers it on whatever backend the model has, and
the answer comes back as Anthropic's ``message`` object (:func:`from_chat`) or its event
stream (:func:`events`):

- ids are ``msg_...``; every key the reference's ``Message`` always carries is there
  (``stop_sequence`` and the cache counts of ``usage`` included, null or 0 when none);
- ``stop_reason`` says what stopped the answer: ``stop_sequence`` with the sequence when the
  backend names it (a local model, vLLM's ``stop_reason``), ``max_tokens``, ``tool_use``,
  ``refusal``, else ``end_turn``;
- ``usage.input_tokens`` excludes the prompt tokens the upstream read from its cache (they
  are ``cache_read_input_tokens``), as Anthropic counts them; the stream's ``message_start``
  carries the input tokens as :func:`count_tokens` counts them (the model's own count for a
  local model), and ``message_delta`` the upstream's final counts;
- tool definitions, ``tool_choice``, ``tool_use`` and ``tool_result`` blocks go both ways
  (streamed tool input as ``input_json_delta``); images and PDF documents become chat
  content parts; previous turns' thinking blocks are left out, as Anthropic leaves them out
  of the context.

What chat completions cannot carry (server tools, citations' sources, containers, MCP
servers...) is refused by name (400), never dropped; a model whose upstream speaks Messages
gets every field as sent (:mod:`tokenskip.proxy.serving.native`). Errors come in
Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``) with Anthropic's
statuses (a schema error is 400, not 422).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from tokenskip.proxy.api.translator import Translator, chat_chunks, chat_request
from tokenskip.proxy.errors import ProxyError, anthropic_error
from tokenskip.proxy.protocol import savings_usage
from tokenskip.proxy.serving.exchange import Exchange

error_response = anthropic_error
"""Anthropic's error shape (built in :mod:`tokenskip.proxy.errors`, which renders every
error of /v1/messages with it)."""

PATH = "/v1/messages"
FIELDS = {
    "model", "messages", "max_tokens", "system", "stream", "metadata", "stop_sequences",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
    "tokenskip",
}  # fmt: skip
"""The request fields a chat-completions upstream can honour. ``service_tier`` picks among
Anthropic's capacity tiers, which another upstream does not have: it is read and left there."""
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""Chat ``finish_reason`` → Messages ``stop_reason``."""


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


TRANSLATED_BLOCKS = {"text", "image", "document", "tool_use", "tool_result", "thinking",
                     "redacted_thinking"}  # fmt: skip
"""Content block types chat completions can carry."""


def translatable(body: dict[str, Any]) -> dict[str, Any]:
    """The body, if chat completions can carry all of it: a field, block or tool it cannot
    is refused by name rather than dropped (a same-protocol upstream gets every one as sent:
    :mod:`tokenskip.proxy.serving.native`)."""
    extra = sorted(k for k, v in body.items() if k not in FIELDS and v is not None)
    if extra:
        raise ProxyError(
            400,
            f"{extra[0]}: this model's upstream takes chat completions, which have no such "
            f"field; send it to a model whose upstream speaks the Messages API "
            f"(translated fields: {', '.join(sorted(FIELDS - {'tokenskip'}))})",
            param=extra[0],
        )
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise ProxyError(400, f"tools.{i}.name: Field required", param=f"tools.{i}.name")
        if tool.get("type") not in (None, "custom"):
            raise ProxyError(
                400,
                f"tools.{i}: the server tool {tool.get('type')!r} runs on Anthropic's servers; "
                "a chat-completions upstream takes client tools (name, input_schema) only",
                param=f"tools.{i}.type",
            )
    for i, m in enumerate(body["messages"]):
        content = m.get("content")
        for j, block in enumerate(content if isinstance(content, list) else []):
            where = f"messages.{i}.content.{j}"
            if block["type"] not in TRANSLATED_BLOCKS:
                raise ProxyError(
                    400,
                    f"{where}: content blocks of type {block['type']!r} cannot be sent to this "
                    "model (its upstream takes chat completions, which carry only "
                    f"{', '.join(sorted(TRANSLATED_BLOCKS))})",
                    param=f"{where}.type",
                )
            _part(block, where)  # refuses a source chat completions cannot carry
    return body


# -- request: Messages → chat completions ---------------------------------------------------
def _part(block: dict[str, Any], where: str) -> dict[str, Any] | None:
    """A user content block as a chat content part (None: a block that is no part)."""
    kind = block["type"]
    keep = {"cache_control": block["cache_control"]} if block.get("cache_control") else {}
    if kind == "text":
        return {"type": "text", "text": block.get("text") or "", **keep}
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if kind == "image":
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        elif source.get("type") == "url":
            url = source.get("url")
        else:
            url = None
        if not isinstance(url, str):
            raise ProxyError(
                400,
                f"{where}.source: an image goes to a chat-completions upstream as base64 data "
                "or a URL (not a file id)",
                param=f"{where}.source",
            )
        return {"type": "image_url", "image_url": {"url": url}, **keep}
    if kind == "document":
        title = block.get("title")
        if source.get("type") == "text":
            text = str(source.get("data") or "")
            return {"type": "text", "text": f"{title}\n\n{text}" if title else text, **keep}
        if source.get("type") == "content" and isinstance(source.get("content"), (str, list)):
            inner = source["content"]
            text = (
                inner
                if isinstance(inner, str)
                else "\n\n".join(b.get("text", "") for b in inner if isinstance(b, dict))
            )
            return {"type": "text", "text": text, **keep}
        if source.get("type") == "base64" and source.get("media_type") == "application/pdf":
            file = {"filename": title or "document.pdf",
                    "file_data": f"data:application/pdf;base64,{source.get('data')}"}  # fmt: skip
            return {"type": "file", "file": file, **keep}
        raise ProxyError(
            400,
            f"{where}.source: a document goes to a chat-completions upstream as text or a "
            "base64 PDF (not a URL or a file id)",
            param=f"{where}.source",
        )
    return None


def _tool_message(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``tool_result`` block as the chat ``tool`` message answering its call."""
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            if not isinstance(inner, dict) or inner.get("type") != "text":
                raise ProxyError(
                    400,
                    f"{where}.content.{k}: a chat-completions tool message holds text only",
                    param=f"{where}.content.{k}",
                )
            texts.append(inner.get("text") or "")
        content = "\n".join(texts)
    text = content if isinstance(content, str) else ""
    if block.get("is_error"):
        text = f"Error: {text}"  # chat completions have no is_error: the text says it
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append({"role": "system", "content": system})
    elif isinstance(system, list) and system:
        out.append({"role": "system",
                    "content": [_part(b, f"system.{k}") for k, b in enumerate(system)]})  # fmt: skip
    for i, m in enumerate(body["messages"]):
        content = m["content"]
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        if m["role"] == "assistant":
            text = "".join(b.get("text") or "" for b in content if b["type"] == "text")
            calls = [
                {
                    "id": b.get("id"),
                    "type": "function",
                    "function": {
                        "name": b.get("name"),
                        "arguments": json.dumps(b.get("input") or {}),
                    },
                }
                for b in content
                if b["type"] == "tool_use"
            ]  # thinking blocks of earlier turns are no context (Anthropic drops them too)
            message: dict[str, Any] = {
                "role": "assistant",
                "content": text or (None if calls else ""),
            }
            if calls:
                message["tool_calls"] = calls
            out.append(message)
            continue
        parts = []
        for j, block in enumerate(content):
            where = f"messages.{i}.content.{j}"
            if block["type"] == "tool_result":
                out.append(_tool_message(block, where))  # tool answers come first
            elif (part := _part(block, where)) is not None:
                parts.append(part)
        if parts:
            out.append({"role": "user", "content": parts})
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if not isinstance(choice, dict):
        return {}
    kind = choice.get("type")
    mapped: Any = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
    if kind == "tool":
        mapped = {"type": "function", "function": {"name": choice.get("name")}}
    if mapped is None:
        raise ProxyError(400, f"tool_choice.type: unknown type {kind!r}", param="tool_choice.type")
    out: dict[str, Any] = {"tool_choice": mapped}
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions request a Messages request stands for (``tokenskip`` kept)."""
    chat: dict[str, Any] = {
        "model": body["model"],
        "messages": _messages(body),
        "max_tokens": body["max_tokens"],
    }
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        chat["user"] = user
    tools = body.get("tools")
    if tools:
        chat["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    **({"description": t["description"]} if t.get("description") else {}),
                    "parameters": t.get("input_schema") or {"type": "object"},
                },
            }
            for t in tools
        ]
        chat.update(_tool_choice(body.get("tool_choice")))
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
        chat["thinking"] = thinking  # litellm reads it for models that think
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if body.get("tokenskip") is not None:
        chat["tokenskip"] = body["tokenskip"]
    return chat


# -- answer: chat completion → Message ------------------------------------------------------
def message_id(chat_id: Any) -> str:
    """A ``msg_`` id for a chat completion's id (the same request, in the ledger too)."""
    text = str(chat_id or "")
    return "msg_" + (text.removeprefix("chatcmpl-") or "0")


def _stop(choice: dict[str, Any], body: dict[str, Any], has_tools: bool) -> tuple[str, Any]:
    """``(stop_reason, stop_sequence)`` of a finished choice."""
    finish = choice.get("finish_reason") or "stop"
    matched = choice.get("stop_reason")
    if (
        finish == "stop"
        and isinstance(matched, str)
        and matched in (body.get("stop_sequences") or [])
    ):
        return "stop_sequence", matched
    if has_tools and finish == "stop":
        return "tool_use", None  # some upstreams say "stop" after tool calls
    return STOP_REASONS.get(finish, "end_turn"), None


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A chat usage object as Messages usage (the gateway's savings beside it)."""
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        **savings_usage(usage),
    }


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        error = ProxyError(
            502,
            f"the model called {function.get('name')!r} with arguments that are not JSON",
            "upstream_error",
            "upstream_invalid",
        )
        error.accounted = True  # the request's row is written: the upstream did answer
        raise error from None
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
            "input": value if isinstance(value, dict) else {"value": value}}  # fmt: skip


def from_chat(result: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as Anthropic's ``message`` object, the gateway's savings beside."""
    choice = (result.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        content.append(
            {"type": "thinking", "thinking": message["reasoning_content"], "signature": ""}
        )
    text = message.get("content") or message.get("refusal") or ""
    calls = message.get("tool_calls") or []
    if text or not calls:
        content.append({"type": "text", "text": text})
    content.extend(_tool_use(call) for call in calls)
    stop_reason, stop_sequence = _stop(choice, body, bool(calls))
    if message.get("refusal") and not message.get("content"):
        stop_reason = "refusal"
    return {
        "id": message_id(result.get("id")),
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(result.get("usage") or {}),
        "tokenskip": result.get("tokenskip"),
    }


# -- stream: chat chunks → Messages events --------------------------------------------------
def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


async def events(
    chunks: AsyncIterator[str], body: dict[str, Any], x: Exchange
) -> AsyncIterator[bytes]:
    """The chat service's SSE lines as Anthropic's stream: ``message_start`` (with the input
    tokens), ``ping``, each content block's start, deltas and stop, ``message_delta`` (stop
    reason, final usage), ``message_stop``; a failure ends it with an ``error`` event."""
    input_tokens = await x.prompt_tokens()
    started = False
    block: dict[str, Any] | None = None  # the open content block: its index and kind
    blocks = 0
    calls: dict[int, int] = {}  # a chat tool call's index → its block's index
    finish: dict[str, Any] = {}
    usage: dict[str, Any] = {}

    def start(chat_id: Any) -> list[bytes]:
        message = {
            "id": message_id(chat_id), "type": "message", "role": "assistant",
            "model": body["model"], "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 0},
        }  # fmt: skip
        return [_event("message_start", {"message": message}), _event("ping", {})]

    def open_block(kind: str, content_block: dict[str, Any], key: Any = None) -> list[bytes]:
        nonlocal block, blocks
        out = close_block()
        block = {"index": blocks, "kind": kind, "key": key}
        blocks += 1
        out.append(
            _event("content_block_start", {"index": block["index"], "content_block": content_block})
        )
        return out

    def close_block() -> list[bytes]:
        nonlocal block
        if block is None:
            return []
        out = [_event("content_block_stop", {"index": block["index"]})]
        block = None
        return out

    def delta(payload: dict[str, Any]) -> bytes:
        assert block is not None
        return _event("content_block_delta", {"index": block["index"], "delta": payload})

    async for obj in chat_chunks(chunks):
        if "error" in obj:
            error = obj["error"]
            kind = {
                "rate_limit_error": "rate_limit_error",
                "upstream_timeout": "timeout_error",
            }.get(str(error.get("type") or error.get("code")), "api_error")
            message = error.get("message") or "upstream error"
            yield _event("error", {"error": {"type": kind, "message": message}})
            return
        if not started:
            started = True
            for event in start(obj.get("id")):
                yield event
        if obj.get("usage"):
            usage = obj["usage"]
        for choice in obj.get("choices") or []:
            d = choice.get("delta") or {}
            if d.get("reasoning_content"):
                if block is None or block["kind"] != "thinking":
                    for event in open_block(
                        "thinking", {"type": "thinking", "thinking": "", "signature": ""}
                    ):
                        yield event
                yield delta({"type": "thinking_delta", "thinking": d["reasoning_content"]})
            if d.get("content"):
                if block is None or block["kind"] != "text":
                    for event in open_block("text", {"type": "text", "text": ""}):
                        yield event
                yield delta({"type": "text_delta", "text": d["content"]})
            for call in d.get("tool_calls") or []:
                index = call.get("index", 0)
                function = call.get("function") or {}
                if index not in calls:
                    use = {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": {},
                    }
                    for event in open_block("tool_use", use, index):
                        yield event
                    calls[index] = block["index"]  # type: ignore[index]
                if function.get("arguments"):
                    if block is None or block.get("key") != index:
                        continue  # a fragment of a block already closed: not sent interleaved
                    yield delta({"type": "input_json_delta", "partial_json": function["arguments"]})
            if choice.get("finish_reason"):
                finish = choice
    if not started:
        for event in start(None):
            yield event
    for event in close_block():
        yield event
    stop_reason, stop_sequence = _stop(finish, body, bool(calls))
    final = _usage(usage) if usage else {"output_tokens": 0}
    yield _event(
        "message_delta",
        {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": final},
    )
    yield _event("message_stop", {})


async def count_tokens(service: Any, body: dict[str, Any]) -> dict[str, Any]:
    """``/v1/messages/count_tokens``: the request planned as it would be sent (compressed,
    the CoT knob applied) and counted as its ``usage.input_tokens`` will be: the model's own
    count for a local model, an estimate in the model's tokenizer otherwise."""
    chat = chat_request(to_chat(translatable({**body, "max_tokens": body.get("max_tokens") or 1})))
    plan = await service.plan(chat)
    counter = service.models.counter(plan.entry)
    total = await service.prompt_tokens(plan)
    return {"input_tokens": total, "tokens_estimated": not (counter.exact and plan.entry.is_local)}


TRANSLATOR = Translator(
    api="messages",
    check=check,
    translatable=translatable,
    to_chat=to_chat,
    from_chat=from_chat,
    events=events,
)
"""Anthropic Messages ⇄ chat completions."""
