"""Pass-through of the Responses and Messages APIs to upstreams that speak them.

A ``/v1/responses`` request for an OpenAI-protocol deployment, or a ``/v1/messages`` request
for an Anthropic one, is not translated: the body goes to the upstream's own endpoint with
every field as the client sent it (tools, function-call and tool-use items, structured output,
images, reasoning items, fields the gateway has never heard of), and the upstream's answer
comes back as it came. Three things change, nothing else:

- ``model`` names the deployment's model instead of the gateway's name for it (and the
  answer names the gateway's again);
- the ``tokenskip`` field is the gateway's and stays here;
- the texts the policy compresses (context in user turns and instructions, tool outputs;
  never assistant turns, content marked ``cache_control`` or anything before the last such
  mark) are replaced by their compressed form, judged exactly as in chat completions
  (:func:`tokenskip.proxy.serving.prompt.compress_messages`).

When none of that changes a byte, the client's bytes are forwarded as they are. Non-stream
answers gain the gateway's savings beside the upstream's ``usage`` and a ``tokenskip``
object; streams are relayed event by event without a byte changed, and read on the side for
the ledger. A stream the upstream cuts mid-event ends with the API's own ``error`` event
(the partial event is not forwarded), never with a half event or silence.

Requests the gateway must rewrite more deeply (the CoT knob, a model with fallbacks, which
may be of another protocol) are translated to chat completions instead
(:mod:`tokenskip.proxy.api.responses`, :mod:`tokenskip.proxy.api.anthropic`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from tokenskip.proxy import jsonio
from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.infra.backends.base import BackendError
from tokenskip.proxy.infra.backends.direct import TRANSPORT_ERRORS
from tokenskip.proxy.infra.backends.native import MISSING
from tokenskip.proxy.jsonio import JSONBody
from tokenskip.proxy.protocol import savings_usage
from tokenskip.proxy.serving.exchange import Exchange
from tokenskip.proxy.serving.prepare import Plan, compress_prompt, merged_policy
from tokenskip.proxy.serving.service import ChatService

log = logging.getLogger(__name__)
Path = tuple[Any, ...]
HOP_HEADERS = {
    "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
    "content-type", "date", "server", "te", "trailer", "upgrade", "proxy-authenticate",
}  # fmt: skip
"""Upstream response headers that describe the upstream connection, not the answer; every
other one (request ids, rate-limit state, processing time) reaches the client."""


def upstream_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}


_EVENT_END = re.compile(rb"\r?\n\r?\n")


# -- the texts compression may change --------------------------------------------------------
@dataclass
class View:
    """A native body's texts as chat messages (what compression judges), and where each of
    their parts lives in the body."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[tuple[int, int], Path] = field(default_factory=dict)

    def add(self, role: str, texts: list[tuple[Path, str, Any]], cache_control: Any = None) -> None:
        """One message of ``(path, text, cache_control)`` parts; ``cache_control`` on the
        message itself marks a breakpoint the texts do not carry (an image, a tool call)."""
        index = len(self.messages)
        parts = []
        for j, (path, text, mark) in enumerate(texts):
            part: dict[str, Any] = {"type": "text", "text": text}
            if mark:
                part["cache_control"] = mark
            parts.append(part)
            self.paths[(index, j)] = path
        message: dict[str, Any] = {"role": role, "content": parts}
        if cache_control:
            message["cache_control"] = cache_control
        self.messages.append(message)


def responses_view(body: dict[str, Any]) -> View:
    view = View()
    if isinstance(body.get("instructions"), str):
        view.add("system", [(("instructions",), body["instructions"], None)])
    data = body.get("input")
    if isinstance(data, str):
        view.add("user", [(("input",), data, None)])
        return view
    for k, item in enumerate(data if isinstance(data, list) else []):
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = str(item.get("role"))
            content = item.get("content")
            if isinstance(content, str):
                view.add(role, [(("input", k, "content"), content, None)])
            elif isinstance(content, list):
                view.add(role, _parts(content, ("input", k, "content"), ("input_text",)))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            if isinstance(output, str):
                view.add("tool", [(("input", k, "output"), output, None)])
            elif isinstance(output, list):
                view.add("tool", _parts(output, ("input", k, "output"), ("input_text",)))
        else:
            view.add("other", [])
    return view


def messages_view(body: dict[str, Any]) -> View:
    view = View()
    system = body.get("system")
    if isinstance(system, str):
        view.add("system", [(("system",), system, None)])
    elif isinstance(system, list):
        view.add("system", _parts(system, ("system",), ("text",)))
    for k, message in enumerate(body.get("messages") or []):
        role, content = str(message.get("role")), message.get("content")
        if isinstance(content, str):
            view.add(role, [(("messages", k, "content"), content, None)])
            continue
        pending: list[tuple[Path, str, Any]] = []
        for j, block in enumerate(content or []):
            path = ("messages", k, "content", j)
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                pending.append((path + ("text",), block["text"], block.get("cache_control")))
                continue
            if pending:
                view.add(role, pending)
                pending = []
            inner = block.get("content")
            if kind == "tool_result" and isinstance(inner, str):
                view.add("tool", [(path + ("content",), inner, block.get("cache_control"))])
            elif kind == "tool_result" and isinstance(inner, list):
                texts = _parts(inner, path + ("content",), ("text",))
                view.add("tool", texts, block.get("cache_control"))
            else:  # images, documents, tool calls, thinking: never changed
                view.add("other", [], block.get("cache_control"))
        if pending:
            view.add(role, pending)
    return view


def _parts(content: list[Any], at: Path, kinds: tuple[str, ...]) -> list[tuple[Path, str, Any]]:
    return [
        (at + (j, "text"), p["text"], p.get("cache_control"))
        for j, p in enumerate(content)
        if isinstance(p, dict) and p.get("type") in kinds and isinstance(p.get("text"), str)
    ]


VIEWS = {"responses": responses_view, "messages": messages_view}


def put_text(body: Any, path: Path, value: str) -> None:
    """Set the text at ``path`` (keys and indexes) of a native body."""
    for key in path[:-1]:
        body = body[key]
    body[path[-1]] = value


# -- usage as each API reports it ------------------------------------------------------------
@dataclass
class Usage:
    """What an answer says it cost, read from a body or from stream events."""

    api: str
    prompt: int | None = None
    completion: int | None = None
    reasoning: int | None = None
    text: list[str] = field(default_factory=list)
    finished: bool = False
    failed: str | None = None
    sequence: int = -1

    def read(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        if self.api == "responses":
            self.prompt = _int(usage.get("input_tokens"), self.prompt)
            self.completion = _int(usage.get("output_tokens"), self.completion)
            details = usage.get("output_tokens_details") or {}
            self.reasoning = _int(details.get("reasoning_tokens"), self.reasoning)
            return
        if usage.get("input_tokens") is not None:
            self.prompt = sum(
                _int(usage.get(k), 0) or 0
                for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
            )
        self.completion = _int(usage.get("output_tokens"), self.completion)

    def read_body(self, body: dict[str, Any]) -> None:
        self.read(body.get("usage"))
        if self.api == "responses":
            for item in body.get("output") or []:
                for part in item.get("content") or [] if isinstance(item, dict) else []:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        self.text.append(part["text"])
        else:
            for block in body.get("content") or []:
                if isinstance(block, dict) and isinstance(block.get("text"), str):
                    self.text.append(block["text"])

    def read_event(self, raw: bytes) -> None:
        data = "\n".join(
            line[5:].strip()
            for line in raw.decode("utf-8", "replace").splitlines()
            if line.startswith("data:")
        )
        try:
            event = json.loads(data) if data else None
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        kind = str(event.get("type"))
        if isinstance(event.get("sequence_number"), int):
            self.sequence = event["sequence_number"]
        if self.api == "responses":
            if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
                self.text.append(event["delta"])
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                self.finished = True
                response = event.get("response") or {}
                self.read(response.get("usage"))
                if kind == "response.failed":
                    self.failed = str((response.get("error") or {}).get("message") or kind)
            elif kind == "error":
                self.finished, self.failed = True, str(event.get("message") or "error")
            return
        if kind == "message_start":
            self.read((event.get("message") or {}).get("usage"))
        elif kind == "message_delta":
            self.read(event.get("usage"))
        elif kind == "content_block_delta":
            text = (event.get("delta") or {}).get("text")
            if isinstance(text, str):
                self.text.append(text)
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            self.finished = True
            self.failed = str((event.get("error") or {}).get("message") or "error")


def _int(value: Any, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def error_event(api: str, exc: BackendError, sequence: int) -> bytes:
    """The API's own stream error event."""
    if api == "responses":
        event = {
            "type": "error",
            "code": exc.code or exc.type,
            "message": exc.message,
            "param": None,
            "sequence_number": sequence + 1,
        }
    else:
        kind = {429: "rate_limit_error", 504: "timeout_error"}.get(exc.status, "api_error")
        event = {"type": "error", "error": {"type": kind, "message": exc.message}}
    return f"event: error\ndata: {json.dumps(event)}\n\n".encode()


# -- the call --------------------------------------------------------------------------------
def overrides_of(body: dict[str, Any]) -> dict[str, Any]:
    """The request's ``tokenskip`` policy overrides (validated by the route's schema)."""
    found = body.get("tokenskip")
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if v is not None and k != "batch"}


def applies(service: ChatService, api: str, body: dict[str, Any]) -> bool:
    """Whether this request goes to the upstream's own endpoint (else it is translated)."""
    entry = service.models.entry(body["model"])
    native = service.models.native
    if native is None or native.target(entry.name, api) is None:
        return False
    if service.models.config.fallbacks.get(entry.name):
        return False  # a fallback may speak another protocol: translate
    return not merged_policy(entry, overrides_of(body)).controls_cot


def _prepare(
    service: ChatService, api: str, raw: bytes, body: dict[str, Any], overrides: dict[str, Any]
) -> tuple[Plan, bytes]:
    """The bytes to send and the request's plan (runs in a worker thread)."""
    started = time.perf_counter()
    models = service.models
    entry = models.entry(body["model"])
    policy = merged_policy(entry, overrides)
    target = models.native.target(entry.name, api)
    view = VIEWS[api](body)
    prompt = compress_prompt(models, service.metrics, entry, policy, view.messages)
    changed = prompt is not None and bool(prompt.parts)
    data = raw
    if changed or "tokenskip" in body or body.get("model") != target.model:
        out = copy.deepcopy(body) if changed else dict(body)
        for part in prompt.parts if changed else []:
            put_text(out, view.paths[(part.message, part.part)], part.after)
        out["model"] = target.model
        out.pop("tokenskip", None)
        data = jsonio.dumps(out)
    messages = prompt.messages if prompt is not None else view.messages
    plan = Plan(
        entry,
        messages,
        {},
        prompt,
        policy.prompt_ratio if policy.compresses_prompt else None,
        None,
        "none",
        models.counter(entry).exact,
        started,
        prefix_bytes=models.prefixes.observe(entry.name, messages) if changed else None,
        document_ratio=policy.document_ratio if policy.compresses_prompt else None,
    )
    return plan, data


async def forward(
    service: ChatService, request: Request, api: str, raw: bytes, body: dict[str, Any]
) -> Response | None:
    """Send the request to the model's same-protocol upstream and relay its answer; None
    when that upstream turns out not to have the endpoint (it is then remembered, logged,
    and the request translated by the caller)."""
    overrides = overrides_of(body)
    entry = service.models.entry(body["model"])
    if merged_policy(entry, overrides).compresses_prompt:  # compression: off the event loop
        plan, data = await asyncio.to_thread(_prepare, service, api, raw, body, overrides)
    else:  # nothing heavy to offload
        plan, data = _prepare(service, api, raw, body, overrides)
    backend = service.models.native
    target = backend.target(plan.entry.name, api)
    stream = bool(body.get("stream"))
    headers = {k.lower(): v for k, v in request.headers.items()}
    with service.exchange(plan, stream=stream) as x:
        try:
            response = await backend.send(target, data, stream, headers)
        except BackendError as exc:
            if exc.code == MISSING:
                x.void()  # translated by the caller, in an exchange of its own
                backend.missing.add((plan.entry.name, api))
                log.warning(
                    "model %s: the upstream has no %s endpoint; translating %s requests to "
                    "chat completions from now on",
                    plan.entry.name, api, api,
                )  # fmt: skip
                return None
            service.metrics.upstream_errors.labels(
                plan.entry.name, exc.code or str(exc.status)
            ).inc()
            raise ProxyError(exc.status, exc.message, exc.type, exc.code) from None
        x.served = plan.entry
        if not stream:
            return await _answer(service, x, api, response)
        x.hand_over()  # the relay accounts it when the stream ends
        return StreamingResponse(
            relay(service, x, api, response),
            media_type="text/event-stream",
            headers={**upstream_headers(response), **x.headers(), "cache-control": "no-cache"},
        )


async def count_tokens(
    service: ChatService, request: Request, raw: bytes, body: dict[str, Any]
) -> Response | None:
    """``/v1/messages/count_tokens`` from an Anthropic upstream's own endpoint, on the body
    as it would be sent (compressed); None when the upstream lacks it (the caller counts)."""
    import dataclasses

    overrides = overrides_of(body)
    p, data = await asyncio.to_thread(_prepare, service, "messages", raw, body, overrides)
    backend = service.models.native
    target = backend.target(p.entry.name, "messages")
    counting = dataclasses.replace(target, url=target.url + "/count_tokens")
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        response = await backend.send(counting, data, False, headers)
        found, _ = jsonio.loads(await response.read())
    except BackendError as exc:
        if exc.code == MISSING:
            return None
        error = ProxyError(exc.status, exc.message, exc.type, exc.code)
        error.accounted = True  # a count is no request to a model: no ledger row
        raise error from None
    except (ValueError, *TRANSPORT_ERRORS):
        raise ProxyError(502, "the upstream's token count is not JSON", "upstream_error") from None
    response.release()
    return JSONBody(found, headers=upstream_headers(response))


async def _answer(service: ChatService, x: Exchange, api: str, response: Any) -> Response:
    """The upstream's answer with the gateway's savings beside its usage (inside the
    exchange: a failure here is its outcome)."""
    usage = Usage(api)
    try:
        try:
            body, _ = jsonio.loads(await response.read())
        except TRANSPORT_ERRORS as exc:
            failure = service.models.native.transport_error(exc)
            raise ProxyError(failure.status, failure.message, failure.type, failure.code) from None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ProxyError(
                502,
                "the upstream answer is not a JSON object",
                "upstream_error",
                "upstream_invalid",
            )
    finally:
        response.release()
    usage.read_body(body)
    counted = await x.answered(
        usage.prompt, usage.completion, "".join(usage.text), reasoning_tokens=usage.reasoning
    )
    body["model"] = x.plan.entry.name
    body["usage"] = {**(body.get("usage") or {}), **savings_usage(counted)}
    body["tokenskip"] = x.info()
    return JSONBody(body, headers={**upstream_headers(response), **x.headers(counted)})


async def relay(service: ChatService, x: Exchange, api: str, response: Any) -> AsyncIterator[bytes]:
    """The upstream's events as they came, whole; its usage read on the side; the exchange
    accounted whatever happens (499 when the client leaves)."""
    usage = Usage(api)
    failure: BackendError | None = None
    buffer = b""
    with x:
        try:
            try:
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    while (end := _EVENT_END.search(buffer)) is not None:
                        event, buffer = buffer[: end.end()], buffer[end.end() :]
                        usage.read_event(event)
                        yield event
                if not usage.finished:
                    failure = BackendError(
                        502,
                        "the upstream stream broke off before its last event",
                        "upstream_error",
                        "upstream_incomplete",
                    )
            except TRANSPORT_ERRORS as exc:
                cut = service.models.native.transport_error(exc)
                failure = BackendError(
                    cut.status, f"the upstream stream broke off: {cut.message}", cut.type,
                    "upstream_incomplete",
                )  # fmt: skip
            if failure is not None:
                x.failed(failure.status, failure.message)
                service.metrics.upstream_errors.labels(
                    x.plan.entry.name, failure.code or "stream"
                ).inc()
                yield error_event(api, failure, usage.sequence)
                return
            await x.answered(
                usage.prompt,
                usage.completion,
                "".join(usage.text),
                reasoning_tokens=usage.reasoning,
            )
            if usage.failed:
                x.failed(502, usage.failed)
        finally:
            response.release()
