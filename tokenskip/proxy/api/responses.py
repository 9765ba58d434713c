"""The OpenAI Responses API (``POST /v1/responses``) over the chat service: the same policy,
knob, ledger and fallbacks as chat completions.

``input`` (a string or items), ``instructions``, tools and the sampling fields are translated
to a chat-completions request with litellm's own Responses transformation, served by
:class:`~tokenskip.proxy.serving.service.ChatService` on the model's backend, and the answer built
back into a ``response`` object. Streams follow the Responses event sequence:
``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta`` ..., the matching ``.done``
events, then ``response.completed`` with usage (function calls arrive as whole
``function_call`` items when the call is complete). The gateway stores no responses, so a
``previous_response_id`` is refused with a 400 that says to send the conversation instead.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from tokenskip.proxy.api.translator import Translator
from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.protocol import savings_usage, sse_payloads

CHAT_FIELDS = {
    "messages",
    "model",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "stream",
    "stream_options",
    "user",
    "response_format",
    "reasoning_effort",
    "service_tier",
    "seed",
    "logprobs",
    "top_logprobs",
    "metadata",
}
"""What of litellm's translation goes upstream (it may add its own bookkeeping keys)."""

CALLS = {"function_call": "function_call_output", "custom_tool_call": "custom_tool_call_output"}
"""Call items and the output items that answer them (matched by ``call_id``)."""
TRANSLATED_ITEMS = {"message", "reasoning", *CALLS, *CALLS.values()}
"""Input item types litellm's translation carries into chat completions."""
TRANSLATED_PARTS = {"input_text", "input_image", "input_file", "output_text", "refusal"}
"""Message content part types it carries."""


def _config() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm.responses.litellm_completion_transformation.transformation import (
        LiteLLMCompletionResponsesConfig,
    )

    return LiteLLMCompletionResponsesConfig


def check(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("conversation"):
        raise ProxyError(
            400,
            "conversation is not supported: this gateway stores no conversations; send the "
            "conversation so far in input instead",
            param="conversation",
            code="unsupported_parameter",
        )
    if body.get("previous_response_id"):
        raise ProxyError(
            400,
            "previous_response_id is not supported: this gateway stores no responses; send "
            "the conversation so far in input instead",
            param="previous_response_id",
            code="unsupported_parameter",
        )
    data = body.get("input")
    if not isinstance(data, (str, list)) or (isinstance(data, str) and not data):
        raise ProxyError(400, "input must be a non-empty string or a list of items", param="input")
    if isinstance(data, list):
        calls: set[str] = set()
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise ProxyError(400, f"input[{i}] must be an object", param=f"input[{i}]")
            kind = item.get("type", "message" if "role" in item else None)
            if not isinstance(kind, str):
                raise ProxyError(
                    400, f"input[{i}] needs a string 'type' (or a 'role')", param=f"input[{i}]"
                )
            if kind in CALLS and isinstance(item.get("call_id"), str):
                calls.add(item["call_id"])
            if kind in CALLS.values() and item.get("call_id") not in calls:
                raise ProxyError(
                    400,
                    f"No tool call found for {kind} with call_id {item.get('call_id')!r}: each "
                    "tool output in input must follow the call it answers",
                    param=f"input[{i}].call_id",
                    code="invalid_tool_output",
                )
    return body


def translatable(body: dict[str, Any]) -> dict[str, Any]:
    """The body, if chat completions can carry all of it: an item or content part of a type
    the translation does not know is refused by name rather than dropped (a same-protocol
    upstream gets every type as sent: :mod:`tokenskip.proxy.serving.native`)."""
    data = body.get("input")
    for i, item in enumerate(data if isinstance(data, list) else []):
        kind = item.get("type", "message")
        if kind not in TRANSLATED_ITEMS:
            raise ProxyError(
                400,
                f"input[{i}]: items of type {kind!r} cannot be sent to this model (its upstream "
                f"takes chat completions, which carry only {', '.join(sorted(TRANSLATED_ITEMS))})",
                param=f"input[{i}].type",
                code="unsupported_item_type",
            )
        content = item.get("content")
        for j, part in enumerate(
            content if kind == "message" and isinstance(content, list) else []
        ):
            part_kind = part.get("type") if isinstance(part, dict) else None
            if part_kind not in TRANSLATED_PARTS:
                raise ProxyError(
                    400,
                    f"input[{i}].content[{j}]: content parts of type {part_kind!r} cannot be "
                    f"sent to this model (known: {', '.join(sorted(TRANSLATED_PARTS))})",
                    param=f"input[{i}].content[{j}].type",
                    code="unsupported_content_type",
                )
    return body


def params_of(body: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in body.items()
        if k not in ("model", "input", "stream", "tokenskip") and v is not None
    }


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    stream = bool(body.get("stream"))
    try:
        chat = _config().transform_responses_api_request_to_chat_completion_request(
            model=body["model"], input=body["input"], responses_api_request=params_of(body),
            stream=stream,
        )  # fmt: skip
    except (ValueError, TypeError, KeyError) as exc:
        raise ProxyError(400, f"cannot read this Responses request: {exc}") from None
    chat = {k: v for k, v in chat.items() if k in CHAT_FIELDS and v is not None}
    if not chat.get("messages"):
        raise ProxyError(400, "input holds no message the model can answer", param="input")
    chat["model"] = body["model"]
    if stream:
        chat["stream"], chat["stream_options"] = True, {"include_usage": True}
    else:
        chat.pop("stream", None)
        chat.pop("stream_options", None)
    if body.get("tokenskip") is not None:
        chat["tokenskip"] = body["tokenskip"]
    return chat


def from_chat(result: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as a ``response`` object, the gateway's savings beside."""
    response = _config().transform_chat_completion_response_to_responses_api_response(
        request_input=body["input"],
        responses_api_request=params_of(body),
        chat_completion_response={k: v for k, v in result.items() if k != "tokenskip"},
    )
    out = response.model_dump(exclude_none=True)
    out["model"] = body["model"]
    out.setdefault("usage", {}).update(savings_usage(result.get("usage") or {}))
    out["tokenskip"] = result.get("tokenskip")
    return out


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


async def events(chunks: AsyncIterator[str], body: dict[str, Any]) -> AsyncIterator[bytes]:
    """The chat service's SSE lines as the Responses API's event stream."""
    rid, created, seq = f"resp_{uuid.uuid4().hex}", int(time.time()), 0
    msg_id = f"msg_{uuid.uuid4().hex}"
    shell = {
        "id": rid,
        "object": "response",
        "created_at": created,
        "model": body["model"],
        "status": "in_progress",
        "output": [],
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
    }

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        out = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return _sse(out)

    yield event("response.created", response=shell)
    yield event("response.in_progress", response=shell)
    text: list[str] = []
    reasoning: list[str] = []
    output: list[dict[str, Any]] = []

    def reasoning_item() -> list[bytes]:
        item = {"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "".join(reasoning)}]}  # fmt: skip
        at = len(output)
        output.append(item)
        return [
            event("response.output_item.added", output_index=at, item=item),
            event("response.output_item.done", output_index=at, item=item),
        ]

    calls: dict[int, dict[str, Any]] = {}
    finish, usage, info, failure = "stop", None, None, None
    opened = False
    at_message = 0
    async for line in chunks:
        for data in sse_payloads(line):
            if data == "[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                failure = chunk["error"]
                continue
            if chunk.get("usage"):
                usage, info = chunk["usage"], chunk.get("tokenskip")
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    reasoning.append(delta["reasoning_content"])
                if delta.get("content"):
                    if not opened:
                        opened = True
                        if reasoning:  # the reasoning came first: its item goes first
                            for data in reasoning_item():
                                yield data
                        at_message = len(output)
                        item = {"id": msg_id, "type": "message", "role": "assistant",
                                "status": "in_progress", "content": []}  # fmt: skip
                        yield event(
                            "response.output_item.added", output_index=at_message, item=item
                        )
                        part = {"type": "output_text", "text": "", "annotations": []}
                        yield event("response.content_part.added", item_id=msg_id,
                                    output_index=at_message, content_index=0, part=part)  # fmt: skip
                    text.append(delta["content"])
                    yield event("response.output_text.delta", item_id=msg_id, output_index=at_message,
                                content_index=0, delta=delta["content"], logprobs=[])  # fmt: skip
                for call in delta.get("tool_calls") or []:
                    slot = calls.setdefault(
                        call.get("index", 0), {"id": None, "name": "", "arguments": ""}
                    )
                    slot["id"] = call.get("id") or slot["id"]
                    fn = call.get("function") or {}
                    slot["name"] += fn.get("name") or ""
                    slot["arguments"] += fn.get("arguments") or ""
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    if failure is not None:
        shell = {**shell, "status": "failed", "error": {"code": failure.get("code") or "server_error",
                                                      "message": failure.get("message", "")}}  # fmt: skip
        yield event("response.failed", response=shell)
        return
    if reasoning and not output:
        for data in reasoning_item():
            yield data
    if opened:
        full = "".join(text)
        part = {"type": "output_text", "text": full, "annotations": []}
        yield event("response.output_text.done", item_id=msg_id, output_index=at_message,
                    content_index=0, text=full, logprobs=[])  # fmt: skip
        yield event("response.content_part.done", item_id=msg_id, output_index=at_message,
                    content_index=0, part=part)  # fmt: skip
        item = {"id": msg_id, "type": "message", "role": "assistant", "status": "completed",
                "content": [part]}  # fmt: skip
        yield event("response.output_item.done", output_index=at_message, item=item)
        output.append(item)
    for _, slot in sorted(calls.items()):
        item = {"id": f"fc_{uuid.uuid4().hex}", "type": "function_call", "status": "completed",
                "call_id": slot["id"], "name": slot["name"], "arguments": slot["arguments"]}  # fmt: skip
        at = len(output)
        yield event(
            "response.output_item.added", output_index=at, item={**item, "status": "in_progress"}
        )
        yield event("response.output_item.done", output_index=at, item=item)
        output.append(item)
    done = {
        **shell,
        "status": "completed" if finish != "length" else "incomplete",
        "output": output,
    }
    if finish == "length":
        done["incomplete_details"] = {"reason": "max_output_tokens"}
    if usage is not None:
        details = usage.get("completion_tokens_details") or {}
        done["usage"] = {
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": details.get("reasoning_tokens") or 0},
            **savings_usage(usage),
        }  # fmt: skip
    done["tokenskip"] = info
    yield event(
        "response.completed" if finish != "length" else "response.incomplete", response=done
    )


TRANSLATOR = Translator(
    api="responses",
    check=check,
    translatable=translatable,
    to_chat=to_chat,
    from_chat=from_chat,
    events=lambda chunks, body, x: events(chunks, body),
)
"""OpenAI Responses ⇄ chat completions."""
