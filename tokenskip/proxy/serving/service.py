"""The chat service: a prepared request through its backend (with fallbacks) to an answer.

Routes hand it a validated request; :meth:`ChatService.open` plans it (policy, compression
and the CoT knob, :mod:`tokenskip.proxy.serving.prepare`) and opens its
:class:`~tokenskip.proxy.serving.exchange.Exchange`; :meth:`~ChatService.complete`,
:meth:`~ChatService.complete_watched` or :meth:`~ChatService.stream` run the exchange: call
the model's backend, fall back to the next model on a 5xx or 429 before any output, and
return a response body (or SSE lines); the exchange's exit writes the ledger row. The
models live in :mod:`tokenskip.proxy.serving.registry`, the ledger and metrics in
:mod:`tokenskip.proxy.infra.accounting`, the bodies the gateway builds in
:mod:`tokenskip.proxy.protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from tokenskip.multi_query import TailCheck
from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.infra.accounting import Accounting
from tokenskip.proxy.infra.backends.base import BackendError, Completion, Delta
from tokenskip.proxy.infra.backends.local import FORCING_PARAM
from tokenskip.proxy.infra.config import GatewayConfig, ModelEntry
from tokenskip.proxy.infra.ledger import Ledger
from tokenskip.proxy.infra.metrics import Metrics
from tokenskip.proxy.protocol import (
    DONE,
    ChatCompletionRequest,
    chunk_body,
    completion_body,
    error_body,
    now,
    sse,
)
from tokenskip.proxy.serving.exchange import Exchange
from tokenskip.proxy.serving.prepare import Plan, prepare, prompt_tokens
from tokenskip.proxy.serving.registry import Counter, Registry

log = logging.getLogger(__name__)


class ChatService:
    """Answers chat requests for one gateway over its models, ledger and metrics."""

    def __init__(self, config: GatewayConfig, ledger: Ledger, metrics: Metrics):
        self.config = config
        self.ledger = ledger
        self.metrics = metrics
        self.models = Registry(config)
        self.accounting = Accounting(ledger, metrics)

    @property
    def local(self) -> Any:
        """The local backend (its engines are the local models' schedulers)."""
        return self.models.local

    def counter(self, entry: ModelEntry) -> Counter:
        return self.models.counter(entry)

    async def aclose(self) -> None:
        await self.models.aclose()

    async def open(
        self, request: ChatCompletionRequest, *, batch_tokens_saved: int = 0
    ) -> Exchange:
        """The request planned, and its exchange opened (its savings count starts now)."""
        plan = await prepare(self.models, self.metrics, request)
        if batch_tokens_saved:
            plan = dataclasses.replace(plan, batch_tokens_saved=batch_tokens_saved)
        return self.exchange(plan, stream=bool(request.stream))

    async def plan(self, request: ChatCompletionRequest) -> Plan:
        """The request's plan alone, for what is counted and never sent (count_tokens)."""
        return await prepare(self.models, self.metrics, request)

    async def prompt_tokens(self, plan: Plan) -> int:
        """The plan's prompt as its model counts it (off the event loop)."""
        tokenizer = self.models.counter(plan.entry).tokenizer
        return await asyncio.to_thread(prompt_tokens, tokenizer, plan)

    def exchange(self, plan: Plan, *, stream: bool) -> Exchange:
        tokenizer = self.models.counter(plan.entry).tokenizer
        return Exchange(plan, self.accounting, tokenizer, stream=stream)

    def record_refusal(self, model: str | None, status: int, message: str) -> None:
        self.accounting.record_refusal(model, status, message)

    # -- fallbacks ------------------------------------------------------------------------
    def _upstream_failed(self, entry: ModelEntry, exc: BackendError) -> bool:
        """Count a failure; True if a fallback may be tried for it."""
        self.metrics.upstream_errors.labels(entry.name, exc.code or str(exc.status)).inc()
        return exc.status >= 500 or exc.status == 429

    def _fell_back(
        self, x: Exchange, failed: ModelEntry, nxt: ModelEntry, exc: BackendError
    ) -> None:
        """A fallback is never silent: logged, counted, and named in a response header."""
        log.warning(
            "request %s: model %s failed (%s %s); falling back to %s",
            x.plan.request_id,
            failed.name,
            exc.status,
            exc.code or exc.message[:120],
            nxt.name,
        )
        x.fell_back(failed, nxt)
        self.metrics.fallbacks.labels(x.plan.entry.name, nxt.name).inc()

    # -- answers --------------------------------------------------------------------------
    @staticmethod
    def _params(p: Plan, entry: ModelEntry) -> dict[str, Any]:
        """The request's parameters for ``entry``: budget forcing reaches local models only,
        and native reasoning fields only models of the kind they were set for (a fallback of
        another kind gets the client's own parameters)."""
        params = p.params
        if p.cot is not None and p.cot.fields and entry.reasoning != p.entry.reasoning:
            params = p.params_before_cot
        if entry.is_local or FORCING_PARAM not in params:
            return params
        return {k: v for k, v in params.items() if k != FORCING_PARAM}

    async def _complete_one(self, x: Exchange, entry: ModelEntry) -> Completion:
        p = x.plan
        backend = self.models.backend(entry)
        forcing = p.cot.forcing if p.cot is not None else None
        if forcing is None or entry.is_local or entry.continue_final is None:
            return await backend.complete(entry.name, p.messages, self._params(p, entry))
        return await self._forced_remote(x, entry, forcing)

    async def _forced_remote(self, x: Exchange, entry: ModelEntry, forcing: Any) -> Completion:
        """Budget forcing over an OpenAI-protocol upstream that continues a partial assistant
        message (vLLM, SGLang): reason up to the budget, then, if no answer is written, send
        the reasoning back with the cue as the assistant's unfinished turn
        (``continue_final_message``) for at most ``answer_tokens`` more."""
        p = x.plan
        backend = self.models.backend(entry)
        params = self._params(p, entry)
        cap = params.get("max_tokens") or params.get("max_completion_tokens")
        first = dict(params)
        first.pop("max_completion_tokens", None)
        first["max_tokens"] = min(forcing.budget, cap) if cap else forcing.budget
        head = await backend.complete(entry.name, p.messages, first)
        if head.finish_reason != "length" or forcing.answered(head.text):
            return head
        if cap and cap <= forcing.budget:
            return head  # the client's own cap ends it first
        message = ((head.raw or {}).get("choices") or [{}])[0].get("message") or {}
        if not head.text and message.get("reasoning_content"):
            # the server parses the reasoning out of content (vLLM --reasoning-parser):
            # continuing needs it in the partial message, so the budget's cut stands
            x.cot_note = (
                "the upstream returned the reasoning apart from content, so it cannot be "
                "continued with an answer cue; the reasoning was cut at the budget"
            )
            return head
        partial = head.text + forcing.cue
        left = cap - (head.completion_tokens or forcing.budget) if cap else None
        second = {
            **first,
            "max_tokens": max(1, min(forcing.answer_tokens, left))
            if left is not None
            else forcing.answer_tokens,
            "continue_final_message": True,
            "add_generation_prompt": False,
        }
        try:
            tail = await backend.complete(
                entry.name, [*p.messages, {"role": "assistant", "content": partial}], second
            )
        except BackendError as exc:
            # the reasoning already came back and was paid for
            x.cot_note = f"the answer call failed ({exc.status}); the reasoning is returned"
            return head
        x.forced_at = head.completion_tokens or forcing.budget
        text = partial + tail.text
        both = [
            head.prompt_tokens,
            tail.prompt_tokens,
            head.completion_tokens,
            tail.completion_tokens,
        ]
        known = all(n is not None for n in both)
        raw = None
        if tail.raw is not None:
            raw = dict(tail.raw)
            choice = dict((raw.get("choices") or [{}])[0])
            choice["message"] = {**(choice.get("message") or {}), "content": text}
            raw["choices"] = [choice, *(raw.get("choices") or [])[1:]]
            raw["usage"] = {
                **(raw.get("usage") or {}),
                "prompt_tokens": (head.prompt_tokens or 0) + (tail.prompt_tokens or 0),
                "completion_tokens": (head.completion_tokens or 0) + (tail.completion_tokens or 0),
            }
        return Completion(
            text=text,
            finish_reason=tail.finish_reason,
            prompt_tokens=(head.prompt_tokens or 0) + (tail.prompt_tokens or 0) if known else None,
            completion_tokens=(head.completion_tokens or 0) + (tail.completion_tokens or 0)
            if known
            else None,
            model=tail.model,
            raw=raw,
        )

    async def complete(self, x: Exchange) -> dict[str, Any]:
        """The answer as one chat completion body (the exchange accounted on the way out)."""
        with x:
            p = x.plan
            chain = self.models.chain(p.entry)
            for i, entry in enumerate(chain):
                try:
                    result = await self._complete_one(x, entry)
                    x.served = entry
                    break
                except BackendError as exc:
                    if self._upstream_failed(entry, exc) and i + 1 < len(chain):
                        self._fell_back(x, entry, chain[i + 1], exc)
                        continue
                    raise ProxyError(exc.status, exc.message, exc.type, exc.code) from None
            usage = await x.answered(
                result.prompt_tokens,
                result.completion_tokens,
                result.text,
                reasoning_tokens=result.reasoning_tokens,
                forced_at=result.extra.get("forced_at"),
            )
            return self._completion(
                x,
                result.text,
                result.finish_reason,
                usage,
                result.raw,
                result.stop_sequence,
                result.tool_calls,
            )

    async def complete_watched(
        self,
        x: Exchange,
        stop: Callable[[str], bool],
        *,
        prompt_tokens: int | None = None,
        every: int = 64,
        window: int = 4096,
    ) -> dict[str, Any]:
        """Like :meth:`complete`, but streamed from the backend and cut as soon as
        ``stop(the last window characters)`` says so (checked every ``every`` new characters,
        :class:`TailCheck`): then the finish reason is ``"stopped"``, the upstream call is
        closed, and the usage is the gateway's count (``tokens_estimated``): ``prompt_tokens``
        as the caller counted the prompt, the completion counted from the text received."""
        parts: list[str] = []
        watch = TailCheck(stop, every, window)
        end: list[Delta] = []
        stopped = False
        with x:
            try:
                async with contextlib.aclosing(self._pieces(x, end)) as pieces:
                    async for delta in pieces:
                        parts.append(delta.text)
                        if watch.feed(delta.text):
                            stopped = True
                            break
            except BackendError as exc:
                raise ProxyError(exc.status, exc.message, exc.type, exc.code) from None
            text = "".join(parts)
            if not end and not stopped:
                raise ProxyError(*_INCOMPLETE)
            last = end[0] if end else None
            reported = last.prompt_tokens if last is not None else None
            usage = await x.answered(
                reported if reported is not None else prompt_tokens,
                last.completion_tokens if last is not None else None,
                text,
            )
            return self._completion(x, text, last.finish_reason if last else "stopped", usage)

    def _completion(
        self,
        x: Exchange,
        text: str,
        finish_reason: str,
        usage: dict[str, Any],
        raw: dict[str, Any] | None = None,
        stop_sequence: str | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if raw is not None:
            # The upstream's body as it came (tool calls, logprobs, refusal, audio,
            # system_fingerprint, service_tier, usage details...); the gateway only names the
            # model it was asked for and adds its own accounting.
            body = dict(raw)
            body["model"] = x.model
            body["usage"] = {**(raw.get("usage") or {}), **usage}
            body["tokenskip"] = x.info()
            return body
        return completion_body(
            x.plan.request_id,
            now(),
            x.model,
            text,
            finish_reason,
            usage,
            x.info(),
            stop_sequence,
            tool_calls,
        )

    async def _deltas(self, x: Exchange) -> AsyncIterator[Delta]:
        """The backend's deltas, falling back to the next model only before any output."""
        p = x.plan
        chain = self.models.chain(p.entry)
        for i, entry in enumerate(chain):
            started = False
            try:
                async with contextlib.aclosing(
                    self.models.backend(entry).stream(
                        entry.name, p.messages, self._params(p, entry)
                    )
                ) as deltas:
                    async for delta in deltas:
                        started, x.served = True, entry
                        yield delta
                return
            except BackendError as exc:
                if not self._upstream_failed(entry, exc) or started or i + 1 == len(chain):
                    raise
                self._fell_back(x, entry, chain[i + 1], exc)

    async def _pieces(self, x: Exchange, end: list[Delta]) -> AsyncIterator[Delta]:
        """The backend's deltas up to the finishing one, which is put in ``end``."""
        async with contextlib.aclosing(self._deltas(x)) as deltas:
            async for delta in deltas:
                if delta.finish_reason is not None:
                    end.append(delta)
                    return
                yield delta

    async def stream(self, x: Exchange, include_usage: bool) -> AsyncIterator[str]:
        """SSE lines. From an OpenAI-protocol upstream its chunks are forwarded as they came
        (tool-call deltas, logprobs, refusals...); a local model's are built here: a role
        chunk, content chunks, a finish chunk. Then the usage chunk if asked, and [DONE].
        A failure ends the stream with an error event (its status in the exchange)."""
        created = now()
        p = x.plan

        def chunk(delta: dict[str, Any], finish: str | None = None, stop: str | None = None) -> str:
            return sse(chunk_body(p.request_id, created, x.model, delta, finish, stop))

        parts: list[str] = []
        passthrough = False
        with x:
            try:
                end: list[Delta] = []
                # aclosing: if the client leaves, the backend stream is closed (cancelled) now
                async with contextlib.aclosing(self._pieces(x, end)) as pieces:
                    first = True
                    async for delta in pieces:
                        if first:
                            passthrough, first = delta.raw is not None, False
                            if not passthrough:
                                yield chunk({"role": "assistant", "content": ""})
                        parts.append(delta.text)
                        if passthrough and delta.raw is not None:
                            yield sse({**delta.raw, "model": x.model})
                        elif delta.text:
                            yield chunk({"content": delta.text})
                        elif delta.tool_calls:
                            yield chunk({"tool_calls": delta.tool_calls})
                    if first and end and end[0].raw is None:
                        yield chunk({"role": "assistant", "content": ""})
                if not end:
                    raise BackendError(*_INCOMPLETE)
                last = end[0]
                usage = await x.answered(
                    last.prompt_tokens,
                    last.completion_tokens,
                    "".join(parts),
                    reasoning_tokens=last.reasoning_tokens,
                    forced_at=last.forced_at,
                )
            except BackendError as exc:
                x.failed(exc.status, exc.message)
                yield sse(error_body(exc.message, exc.type, exc.code))
                yield DONE
                return
            except Exception as exc:  # noqa: BLE001 - a stream ends cleanly whatever happened
                log.exception("stream of request %s failed", p.request_id)
                x.failed(500, f"{type(exc).__name__}: {exc}")
                body = error_body(
                    f"internal error: {type(exc).__name__}", "server_error", "internal_error"
                )
                yield sse(body)
                yield DONE
                return
            if not passthrough:
                yield chunk({}, last.finish_reason, last.stop_sequence)
            if include_usage:
                upstream = last.raw or {}
                body = {
                    "id": upstream.get("id", p.request_id),
                    "object": "chat.completion.chunk",
                    "created": upstream.get("created", created),
                    **upstream,
                    "model": x.model,
                    "choices": [],
                    "usage": {**(upstream.get("usage") or {}), **usage},
                    "tokenskip": x.info(),
                }
                yield sse(body)
            yield DONE


_INCOMPLETE = (
    502,
    "the backend stream ended without finishing",
    "upstream_error",
    "upstream_incomplete",
)
