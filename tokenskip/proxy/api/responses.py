"""The OpenAI Responses API (``POST /v1/responses``) over the chat service: the same policy,
knob, ledger and fallbacks as chat completions.

Written from OpenAI's API reference (the official SDK's types, generated from it), not
borrowed from a library's transformation: ``input`` (a string or items), ``instructions``,
function tools, ``tool_choice``, ``text.format``, ``reasoning.effort`` and the sampling
fields become a chat-completions request (:func:`to_chat`); the answer comes back as a
``response`` object (:func:`from_chat`) or its event stream (:func:`events`), both built by
one function (:func:`response_object`):

- ids are ``resp_...`` (the same request's id in the ledger), ``msg_``, ``fc_`` and ``rs_``
  for its items; every key the reference's Response carries is there (null when unset);
- ``status`` is ``incomplete`` with ``incomplete_details.reason`` (``max_output_tokens``,
  ``content_filter``) when the answer was cut; a refusal is a ``refusal`` content part;
- function calls go both ways (``function_call`` items up as assistant ``tool_calls``,
  ``function_call_output`` items as ``tool`` messages), streamed as
  ``response.function_call_arguments.delta`` events;
- usage carries ``input_tokens_details.cached_tokens`` and
  ``output_tokens_details.reasoning_tokens`` as the upstream reported them.

What chat completions cannot carry (hosted tools, item types, ``truncation: auto``...) is
refused by name (400), never dropped; a model whose upstream speaks Responses gets every
field as sent (:mod:`tokenskip.proxy.serving.native`). The gateway stores no responses, so
``previous_response_id`` and ``conversation`` are refused with a 400 that says to send the
conversation instead, and every response says ``store: false``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from tokenskip.proxy.api.translator import Translator, chat_chunks
from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.protocol import savings_usage
from tokenskip.proxy.serving.exchange import Exchange

FIELDS = {
    "model", "input", "instructions", "stream", "tools", "tool_choice", "parallel_tool_calls",
    "temperature", "top_p", "max_output_tokens", "text", "reasoning", "metadata", "user",
    "safety_identifier", "prompt_cache_key", "service_tier", "store", "truncation",
    "top_logprobs", "include", "background", "stream_options", "tokenskip",
}  # fmt: skip
"""Request fields a chat-completions upstream can honour (``store`` is read and answered
truthfully: this gateway stores nothing)."""
CALLS = {"function_call": "function_call_output"}
"""Call items and the output items that answer them (matched by ``call_id``)."""
TRANSLATED_ITEMS = {"message", "reasoning", *CALLS, *CALLS.values()}
"""Input item types chat completions can carry."""
TRANSLATED_PARTS = {"input_text", "input_image", "input_file", "output_text", "refusal"}
"""Message content part types chat completions can carry."""
INCLUDE = {"message.output_text.logprobs"}
"""``include`` values a chat-completions upstream can provide."""
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
"""Chat ``finish_reason`` → the Response's ``incomplete_details.reason``."""


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
    """The body, if chat completions can carry all of it: a field, tool, item or content
    part they cannot is refused by name rather than dropped (a same-protocol upstream gets
    every one as sent: :mod:`tokenskip.proxy.serving.native`)."""
    extra = sorted(k for k, v in body.items() if k not in FIELDS and v is not None)
    if extra:
        raise ProxyError(
            400,
            f"{extra[0]}: this model's upstream takes chat completions, which have no such "
            "field; send it to a model whose upstream speaks the Responses API",
            param=extra[0],
            code="unsupported_parameter",
        )
    for name, allowed in (("truncation", (None, "disabled")), ("background", (None, False))):
        if body.get(name) not in allowed:
            raise ProxyError(
                400,
                f"{name}: {body[name]!r} is not supported for this model (its upstream takes "
                "chat completions)",
                param=name,
                code="unsupported_parameter",
            )
    unknown = sorted(set(body.get("include") or []) - INCLUDE)
    if unknown:
        raise ProxyError(
            400,
            f"include: {unknown[0]!r} cannot be provided by this model's upstream (it takes "
            f"chat completions; it can include {', '.join(sorted(INCLUDE))})",
            param="include",
            code="unsupported_parameter",
        )
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise ProxyError(
                400,
                f"tools[{i}]: the {kind!r} tool runs on OpenAI's servers; a chat-completions "
                "upstream takes function tools only",
                param=f"tools[{i}].type",
                code="unsupported_tool_type",
            )
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
            _part(part, f"input[{i}].content[{j}]")  # refuses a file id chat cannot carry
    return body


# -- request: Responses → chat completions --------------------------------------------------
def _part(part: dict[str, Any], where: str) -> dict[str, Any]:
    """A Responses content part as a chat content part."""
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal") or ""}
    if kind == "input_image":
        if not isinstance(part.get("image_url"), str):
            raise ProxyError(
                400,
                f"{where}: an image goes to a chat-completions upstream as image_url (a URL or "
                "a data URL), not a file id",
                param=f"{where}.image_url",
            )
        image = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    file = {k: part[k] for k in ("file_data", "file_id", "filename") if part.get(k)}
    if not file:
        raise ProxyError(
            400, f"{where}: an input_file needs file_data or file_id", param=f"{where}"
        )
    return {"type": "file", "file": file}


def _content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    return [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content or [])]


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if body.get("instructions"):
        out.append({"role": "system", "content": body["instructions"]})
    data = body["input"]
    if isinstance(data, str):
        return [*out, {"role": "user", "content": data}]
    for i, item in enumerate(data):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role", "user")
            content = _content(item.get("content"), f"input[{i}]")
            if role == "assistant" and isinstance(content, list):
                content = "".join(p.get("text", "") for p in content)  # output_text parts
            out.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}  # fmt: skip
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            elif last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
                last["tool_calls"] = [call]  # the text before the call is the same turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": output or ""})
        # reasoning items of earlier turns are no context for a chat-completions upstream
    return out


def _tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise ProxyError(
        400,
        f"tool_choice: {choice!r} cannot be given to a chat-completions upstream (auto, none, "
        "required or a function)",
        param="tool_choice",
    )


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions request a Responses request stands for (``tokenskip`` kept)."""
    chat: dict[str, Any] = {"model": body["model"], "messages": _messages(body)}
    if not chat["messages"]:
        raise ProxyError(400, "input holds no message the model can answer", param="input")
    for name in ("temperature", "top_p", "parallel_tool_calls", "metadata", "user",
                 "safety_identifier", "prompt_cache_key", "service_tier"):  # fmt: skip
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = [
            {"type": "function", "function": {
                k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}}
            for t in body["tools"]
        ]  # fmt: skip
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    text = body.get("text") or {}
    form = text.get("format") or {}
    if form.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif form.get("type") == "json_schema":
        schema = {k: form[k] for k in ("name", "schema", "strict", "description") if k in form}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    if text.get("verbosity"):
        chat["verbosity"] = text["verbosity"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort:
        chat["reasoning_effort"] = effort
    if "message.output_text.logprobs" in (body.get("include") or []) or body.get("top_logprobs"):
        chat["logprobs"] = True
        if body.get("top_logprobs"):
            chat["top_logprobs"] = body["top_logprobs"]
    if body.get("stream"):
        chat["stream"], chat["stream_options"] = True, {"include_usage": True}
    if body.get("tokenskip") is not None:
        chat["tokenskip"] = body["tokenskip"]
    return chat


# -- answer: chat completion → Response -----------------------------------------------------
def _id(prefix: str, chat_id: Any = None) -> str:
    text = str(chat_id or "").removeprefix("chatcmpl-")
    return f"{prefix}_{text or uuid.uuid4().hex}"


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat usage object as the Response's (the gateway's savings beside it)."""
    if not usage:
        return None
    prompt, completion = (
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
    )
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
        **savings_usage(usage),
    }


def response_object(
    body: dict[str, Any],
    rid: str,
    created: int,
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    finish: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``response`` object with every key the reference gives it, from the request and
    what is known of the answer so far."""
    incomplete = INCOMPLETE.get(finish or "")
    if incomplete and status == "completed":
        status = "incomplete"
    text = body.get("text") or {"format": {"type": "text"}}
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": body.get("service_tier"),
        "store": False,
        "temperature": body.get("temperature"),
        "text": text,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs"),
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "usage": _usage(usage),
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _message_item(
    mid: str, text: str, refusal: str | None, logprobs: Any, status: str
) -> dict[str, Any]:
    if refusal and not text:
        part: dict[str, Any] = {"type": "refusal", "refusal": refusal}
    else:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
    return {"id": mid, "type": "message", "status": status, "role": "assistant", "content": [part]}


def _reasoning_item(chat_id: Any, text: str) -> dict[str, Any]:
    return {"id": _id("rs", chat_id), "type": "reasoning",
            "summary": [], "content": [{"type": "reasoning_text", "text": text}]}  # fmt: skip


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {"id": _id("fc", call.get("id")), "type": "function_call", "status": status,
            "call_id": call.get("id"), "name": function.get("name"),
            "arguments": function.get("arguments") or ""}  # fmt: skip


def from_chat(result: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as a ``response`` object, the gateway's savings beside."""
    choice = (result.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason") or "stop"
    item_status = "incomplete" if finish in INCOMPLETE else "completed"
    output: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        output.append(_reasoning_item(result.get("id"), message["reasoning_content"]))
    text, refusal = message.get("content") or "", message.get("refusal")
    calls = message.get("tool_calls") or []
    if text or refusal or not calls:
        logprobs = (choice.get("logprobs") or {}).get("content")
        output.append(_message_item(_id("msg", result.get("id")), text, refusal,
                                    _logprobs(logprobs), item_status))  # fmt: skip
    output.extend(_call_item(call) for call in calls)
    out = response_object(
        body, _id("resp", result.get("id")), int(result.get("created") or time.time()),
        status="completed", output=output, usage=result.get("usage"), finish=finish,
    )  # fmt: skip
    out["tokenskip"] = result.get("tokenskip")
    return out


def _logprobs(content: Any) -> list[dict[str, Any]]:
    """Chat logprobs as the Response's (token, logprob, bytes, top_logprobs)."""
    return [
        {"token": t.get("token"), "logprob": t.get("logprob"), "bytes": t.get("bytes") or [],
         "top_logprobs": [{"token": x.get("token"), "logprob": x.get("logprob"),
                           "bytes": x.get("bytes") or []} for x in t.get("top_logprobs") or []]}
        for t in content or []
    ]  # fmt: skip


# -- stream: chat chunks → Responses events -------------------------------------------------
def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


async def events(
    chunks: AsyncIterator[str], body: dict[str, Any], x: Exchange
) -> AsyncIterator[bytes]:
    """The chat service's SSE lines as the Responses API's event stream: created and
    in_progress; each output item added, its deltas (text, function-call arguments), its
    done events; then completed (or incomplete, or failed) with the whole response."""
    rid, created, seq = _id("resp", x.plan.request_id), int(time.time()), 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal seq
        out = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return _sse(out)

    def shell(status: str, **kw: Any) -> dict[str, Any]:
        return response_object(body, rid, created, status=status, **kw)

    yield event("response.created", response=shell("in_progress", output=[]))
    yield event("response.in_progress", response=shell("in_progress", output=[]))
    output: list[dict[str, Any]] = []
    reasoning: list[str] = []
    text: list[str] = []
    message_at: int | None = None
    mid = _id("msg", x.plan.request_id)
    calls: dict[int, dict[str, Any]] = {}  # chat tool-call index → its item and output index
    finish, usage, info, failure = "stop", None, None, None

    def close_reasoning() -> list[bytes]:
        if not reasoning or any(item["type"] == "reasoning" for item in output):
            return []
        item = _reasoning_item(x.plan.request_id, "".join(reasoning))
        output.append(item)
        at = len(output) - 1
        return [event("response.output_item.added", output_index=at, item={**item, "content": []}),
                event("response.output_item.done", output_index=at, item=item)]  # fmt: skip

    async for chunk in chat_chunks(chunks):
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
                if message_at is None:
                    for done in close_reasoning():
                        yield done
                    output.append(_message_item(mid, "", None, [], "in_progress"))
                    message_at = len(output) - 1
                    yield event("response.output_item.added", output_index=message_at,
                                item={**output[message_at], "content": []})  # fmt: skip
                    part = {
                        "type": "output_text",
                        "text": "",
                        "annotations": [],
                        "logprobs": [],
                    }
                    yield event("response.content_part.added", item_id=mid,
                                output_index=message_at, content_index=0, part=part)  # fmt: skip
                text.append(delta["content"])
                yield event("response.output_text.delta", item_id=mid, output_index=message_at,
                            content_index=0, delta=delta["content"], logprobs=[])  # fmt: skip
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                function = call.get("function") or {}
                if index not in calls:
                    for done in close_reasoning():
                        yield done
                    item = _call_item({"id": call.get("id"), "function": {
                        "name": function.get("name"), "arguments": ""}}, "in_progress")  # fmt: skip
                    output.append(item)
                    calls[index] = {"item": item, "at": len(output) - 1}
                    yield event("response.output_item.added", output_index=len(output) - 1,
                                item=dict(item))  # fmt: skip
                slot = calls[index]
                if function.get("arguments"):
                    slot["item"]["arguments"] += function["arguments"]
                    yield event("response.function_call_arguments.delta",
                                item_id=slot["item"]["id"], output_index=slot["at"],
                                delta=function["arguments"])  # fmt: skip
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if failure is not None:
        error = {
            "code": failure.get("code") or "server_error",
            "message": failure.get("message", ""),
        }
        yield event("response.failed", response=shell("failed", output=output, error=error))
        return
    for done in close_reasoning():
        yield done
    item_status = "incomplete" if finish in INCOMPLETE else "completed"
    if message_at is not None:
        full = "".join(text)
        item = _message_item(mid, full, None, [], item_status)
        output[message_at] = item
        part = item["content"][0]
        yield event("response.output_text.done", item_id=mid, output_index=message_at,
                    content_index=0, text=full, logprobs=[])  # fmt: skip
        yield event("response.content_part.done", item_id=mid, output_index=message_at,
                    content_index=0, part=part)  # fmt: skip
        yield event("response.output_item.done", output_index=message_at, item=item)
    for slot in calls.values():
        item = {**slot["item"], "status": "completed"}
        output[slot["at"]] = item
        yield event("response.function_call_arguments.done", item_id=item["id"],
                    output_index=slot["at"], name=item["name"], arguments=item["arguments"])  # fmt: skip
        yield event("response.output_item.done", output_index=slot["at"], item=item)
    if not output:  # an empty answer is still a message
        output.append(_message_item(mid, "", None, [], item_status))
    done = shell("completed", output=output, usage=usage, finish=finish)
    done["tokenskip"] = info
    kind = "response.incomplete" if done["status"] == "incomplete" else "response.completed"
    yield event(kind, response=done)


TRANSLATOR = Translator(
    api="responses",
    check=check,
    translatable=translatable,
    to_chat=to_chat,
    from_chat=from_chat,
    events=events,
)
"""OpenAI Responses ⇄ chat completions."""
