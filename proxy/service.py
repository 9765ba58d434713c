"""The chat service: policy → prompt compression → CoT knob → backend → accounting.

Routes hand it a validated request; it returns a response body (or an SSE stream) plus the
savings headers. Compression runs in a worker thread, never on the event loop. Every request
routed to a model, failed or cancelled ones included, leaves exactly one ledger row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.backends.base import BackendError, Delta
from proxy.backends.direct import DirectBackend
from proxy.backends.local import LocalBackend
from proxy.backends.upstream import cost
from proxy.config import GatewayConfig, ModelEntry
from proxy.cot import apply_cot_ratio
from proxy.errors import ProxyError
from proxy.ledger import Ledger, LedgerRow
from proxy.local.early_exit import early_exit_policy
from proxy.local.speculative import speculative_settings
from proxy.metrics import Metrics
from proxy.prompt import PromptCompression, PromptSettings, compress_messages, message_texts
from proxy.protocol import ChatCompletionRequest, completion_id, error_body, now, short
from tokenskip.errors import TokenskipError
from tokenskip.models import DEFAULT_MODEL, load_model, load_tokenizer
from tokenskip.multi_query import TailCheck
from tokenskip.scorers import CachedScorer, HeuristicScorer, SelfInfoScorer, TokenClassifierScorer
from tokenskip.tokens import TextTokenizer

log = logging.getLogger(__name__)

LOCAL_UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "response_format",
)
"""Request fields a local model cannot honour: refused by name rather than ignored."""


@dataclass
class Counter:
    """The tokenizer that counts a model's tokens, and whether it is that model's own."""

    tokenizer: TextTokenizer
    exact: bool


@dataclass
class Prepared:
    """A request after policy, compression and the CoT knob, ready for its backend."""

    entry: ModelEntry
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    prompt: PromptCompression | None
    prompt_ratio: float | None
    cot_ratio: float | None
    cot_method: str
    exact: bool
    started: float
    request_id: str = field(default_factory=completion_id)
    served: ModelEntry | None = None
    """The entry that actually answered (differs from ``entry`` after a fallback)."""
    batch_tokens_saved: int = 0
    """Input tokens a merged multi-query call saved against one call per query."""
    counting: Any = None
    """The savings count running beside the upstream call (an asyncio future), or None."""
    fallbacks: list[str] = field(default_factory=list)
    """``failed->next`` for every fallback taken, in order."""

    def headers(self, usage: dict[str, Any] | None = None) -> dict[str, str]:
        """Savings headers: from the final usage when known (non-streaming), else what is
        known before generation (streaming: the saving, not yet the upstream's count)."""
        h = {
            "x-tokenskip-cot-method": self.cot_method,
            "x-tokenskip-tokens-estimated": str(not self.exact).lower(),
        }
        if self.fallbacks:
            h["x-tokenskip-fallback"] = ",".join(self.fallbacks)
        if self.prompt is None or self.prompt.counted:
            # a stream starts before a large part is counted: its final usage chunk says
            h["x-tokenskip-prompt-tokens-saved"] = str(
                self.prompt.saved_tokens if self.prompt else 0
            )
        if usage is not None:
            h["x-tokenskip-prompt-tokens-original"] = str(usage["prompt_tokens_original"])
            h["x-tokenskip-prompt-tokens-saved"] = str(usage["prompt_tokens_saved"])
            h["x-tokenskip-tokens-estimated"] = str(usage["tokens_estimated"]).lower()
        return h


class ChatService:
    """Owns the backends, tokenizers, scorers, ledger and metrics of one gateway."""

    def __init__(self, config: GatewayConfig, ledger: Ledger, metrics: Metrics):
        self.config = config
        self.ledger = ledger
        self.metrics = metrics
        self.local = LocalBackend()
        self.remote = None
        self.direct = None
        self._counters: dict[str, Counter] = {}
        self._scorers: dict[tuple[str, str], Any] = {}
        self._self_info_lm: Any = None
        self._lazy_lock = threading.RLock()
        self._load_local()
        model_list = config.litellm_model_list()
        if model_list:
            from proxy.backends.remote import RemoteBackend

            self.remote = RemoteBackend(model_list, config.router_settings)
        direct = {e.name: e.litellm_params for e in config.models.values() if e.backend == "direct"}
        if direct:
            self.direct = DirectBackend(direct, config.router_settings)
        for entry in config.models.values():
            self.counter(entry)  # load tokenizers now, not on a request's event loop

    # -- setup ----------------------------------------------------------------------------
    def _load_local(self) -> None:
        bases: dict[str, list[ModelEntry]] = {}
        for entry in self.config.models.values():
            if entry.is_local:
                bases.setdefault(entry.local_model, []).append(entry)
        for base, entries in bases.items():
            loaded = load_model(base)
            if any(e.kernels for e in entries):
                from proxy.local.kernels import install

                log.info("%s: %d modules on the kernel path", base, install(loaded.model))
            adapters = {e.name: e.adapter for e in entries if e.adapter}
            spec = next((e.speculative for e in entries if e.speculative is not None), None)
            exits = next((e.early_exit for e in entries if e.early_exit is not None), None)
            self.local.add_engine(
                base,
                loaded.model,
                loaded.tokenizer,
                max_batch=self.config.local_max_batch,
                adapters=adapters,
                speculative=None if spec is None else speculative_settings(base, loaded, spec),
                early_exit=None if exits is None else early_exit_policy(base, loaded, exits),
            )
            for e in entries:
                self.local.serve(e.name, base, e.name if e.adapter else None)
            if base == DEFAULT_MODEL and not adapters:
                # Reused by the self-info prompt scorer; not when adapters are injected into
                # it, since the engine switches them while the scorer may be running.
                self._self_info_lm = loaded.model
            counter = Counter(TextTokenizer(loaded.tokenizer, name=base), exact=True)
            for e in entries:
                self._counters[e.name] = counter

    async def aclose(self) -> None:
        self.local.close()
        if self.direct is not None:
            await self.direct.aclose()

    def counter(self, entry: ModelEntry) -> Counter:
        found = self._counters.get(entry.name)
        if found is not None:
            return found
        with self._lazy_lock:  # worker threads may ask at once: load each tokenizer once
            return self._counter_locked(entry)

    def _counter_locked(self, entry: ModelEntry) -> Counter:
        found = self._counters.get(entry.name)
        if found is None:
            name = entry.tokenizer or DEFAULT_MODEL
            shared = next((c for n, c in self._counters.items() if c.tokenizer.name == name), None)
            tokenizer = (
                shared.tokenizer if shared else TextTokenizer(load_tokenizer(name), name=name)
            )
            found = self._counters[entry.name] = Counter(
                tokenizer, exact=entry.tokenizer is not None
            )
        return found

    def scorer(self, name: str, counter: Counter, model: str | None = None) -> Any:
        key = (name, counter.tokenizer.name, model or "")
        found = self._scorers.get(key)
        if found is not None:
            return found
        with self._lazy_lock:
            return self._scorer_locked(name, counter, model, key)

    def _scorer_locked(
        self, name: str, counter: Counter, model: str | None, key: tuple[str, str, str]
    ) -> Any:
        found = self._scorers.get(key)
        if found is None:
            try:
                found = self._build_scorer(name, counter, model)
            except (TokenskipError, OSError) as exc:
                raise ProxyError(
                    400, f"tokenskip: the {name} scorer cannot be loaded: {exc}", param="tokenskip"
                ) from None
            self._scorers[key] = found
        return found

    def _build_scorer(self, name: str, counter: Counter, model: str | None) -> Any:
        if name == "heuristic":
            return CachedScorer(HeuristicScorer(counter.tokenizer))
        if name == "classifier":
            return CachedScorer(TokenClassifierScorer.from_pretrained(model))
        if model and model != DEFAULT_MODEL:
            loaded = load_model(model)
            return CachedScorer(
                SelfInfoScorer(loaded.model, TextTokenizer(loaded.tokenizer, model))
            )
        if self._self_info_lm is None:
            self._self_info_lm = load_model(DEFAULT_MODEL).model
        lm_tokenizer = self.counter_for_model(DEFAULT_MODEL)
        return CachedScorer(SelfInfoScorer(self._self_info_lm, lm_tokenizer))

    def counter_for_model(self, name: str) -> TextTokenizer:
        for c in self._counters.values():
            if c.tokenizer.name == name:
                return c.tokenizer
        return TextTokenizer(load_tokenizer(name), name=name)

    def backend(self, entry: ModelEntry) -> Any:
        return {"local": self.local, "direct": self.direct, "litellm": self.remote}[entry.backend]

    def chain(self, entry: ModelEntry) -> list[ModelEntry]:
        """The model, then its fallbacks in order."""
        return [entry] + [
            self.config.models[name] for name in self.config.fallbacks.get(entry.name, ())
        ]

    def _upstream_failed(self, entry: ModelEntry, exc: BackendError) -> bool:
        """Count a failure; True if a fallback may be tried for it."""
        self.metrics.upstream_errors.labels(entry.name, exc.code or str(exc.status)).inc()
        return exc.status >= 500 or exc.status == 429

    def _fell_back(
        self, p: Prepared, failed: ModelEntry, nxt: ModelEntry, exc: BackendError
    ) -> None:
        """A fallback is never silent: logged, counted, and named in a response header."""
        log.warning(
            "request %s: model %s failed (%s %s); falling back to %s",
            p.request_id,
            failed.name,
            exc.status,
            exc.code or exc.message[:120],
            nxt.name,
        )
        p.fallbacks.append(f"{failed.name}->{nxt.name}")
        self.metrics.fallbacks.labels(p.entry.name, nxt.name).inc()

    def delimiter(self, entry: ModelEntry) -> str | None:
        if entry.is_local:
            return self.local.models[entry.name].delimiter or entry.delimiter
        return entry.delimiter

    # -- request path ---------------------------------------------------------------------
    def _prepare_sync(self, request: ChatCompletionRequest, started: float) -> Prepared:
        entry = self.config.models.get(request.model)
        if entry is None:
            raise ProxyError(
                404,
                f"The model '{short(request.model)}' does not exist on this gateway; GET "
                "/v1/models lists the served models",
                code="model_not_found",
                param="model",
            )
        for i, m in enumerate(request.messages):
            if m.missing_content():
                raise ProxyError(
                    400,
                    f"messages[{i}] ({m.role}) has no content; give a string or a list of "
                    "content parts",
                    param=f"messages[{i}].content",
                    code="missing_content",
                )
        if entry.is_local:
            params = request.upstream_params()
            unsupported = [
                k
                for k in LOCAL_UNSUPPORTED
                if params.get(k) not in (None, False, [], "none")
                and not (k == "response_format" and (params[k] or {}).get("type") == "text")
            ]
            if unsupported:
                raise ProxyError(
                    400,
                    f"the local model '{entry.name}' cannot take {', '.join(unsupported)} "
                    "(it does not call tools or return log-probabilities); route the request to "
                    "a model that does, or leave these fields out",
                    param=unsupported[0],
                    code="unsupported_parameter",
                )
        overrides = (
            request.tokenskip.model_dump(exclude_none=True, exclude={"batch"})
            if request.tokenskip
            else {}
        )
        try:
            policy = entry.policy.merged(overrides)
        except ValueError as exc:
            raise ProxyError(400, f"tokenskip: {exc}", param="tokenskip") from None
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        counter = self.counter(entry)
        prompt = None
        prompt_ratio = policy.prompt_ratio if policy.compresses_prompt else None
        if policy.compresses_prompt:
            t0 = time.perf_counter()
            scorer = (
                self.scorer(policy.scorer, counter, policy.scorer_model)
                if policy.drops_words
                else None
            )
            prompt = compress_messages(
                messages,
                PromptSettings(
                    context_ratio=policy.prompt_ratio,
                    instruction_ratio=policy.instruction_ratio,
                    tool_ratio=policy.tool_ratio,
                    min_tokens=policy.prompt_min_tokens,
                    lossless=policy.lossless,
                    guards=policy.guards,
                    cache_safe=policy.cache_safe,
                ),
                tokenizer=counter.tokenizer,
                scorer=scorer,
                count=False,  # counted beside the upstream call (see prepare)
            )
            messages = prompt.messages
            self.metrics.compression_seconds.labels(entry.name).observe(time.perf_counter() - t0)
        cot_method, cot_ratio = "none", None
        if policy.controls_cot:
            cot_ratio = policy.cot_ratio
            messages, cot_method = apply_cot_ratio(
                messages,
                cot_ratio,
                delimiter=self.delimiter(entry),
                reference_tokens=policy.cot_reference_tokens,
            )
        return Prepared(
            entry,
            messages,
            request.upstream_params(),
            prompt,
            prompt_ratio,
            cot_ratio,
            cot_method,
            counter.exact,
            started,
        )

    async def prepare(self, request: ChatCompletionRequest) -> Prepared:
        started = time.perf_counter()
        entry = self.config.models.get(request.model)
        if (
            entry is not None
            and (not entry.policy.enabled)
            and not (request.tokenskip and request.tokenskip.enabled)
        ):
            return self._prepare_sync(request, started)  # pass-through: nothing heavy to offload
        p = await asyncio.to_thread(self._prepare_sync, request, started)
        if p.prompt is not None and not p.prompt.counted:
            # the savings are counted while the upstream works, not before it is called
            tokenizer = self.counter(p.entry).tokenizer
            p.counting = asyncio.ensure_future(asyncio.to_thread(p.prompt.count, tokenizer))
        return p

    async def settle(self, p: Prepared) -> None:
        """Wait for the savings count started by :meth:`prepare` (usage needs it)."""
        if p.counting is not None:
            await p.counting
            p.counting = None

    def _usage(
        self, p: Prepared, prompt_tokens: int | None, completion_tokens: int | None, text: str
    ) -> dict[str, Any]:
        counter = self.counter(p.entry)
        exact = p.exact
        if prompt_tokens is None:
            prompt_tokens = sum(
                counter.tokenizer.count(text) for m in p.messages for text in message_texts(m)
            )
            exact = False
        if completion_tokens is None:
            completion_tokens = counter.tokenizer.count(text)
            exact = False
        saved = p.prompt.saved_tokens if p.prompt else 0
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_original": prompt_tokens + saved,
            "prompt_tokens_saved": saved,
            "tokens_estimated": not exact,
        }

    def _account(
        self,
        p: Prepared,
        status: int,
        stream: bool,
        usage: dict[str, Any] | None,
        error: str | None = None,
    ) -> None:
        """One ledger row and the metrics for a request; a failure here is logged and
        never reaches the client's response."""
        try:
            self._record(p, status, stream, usage, error)
        except Exception:  # noqa: BLE001 - accounting must not break an answer
            log.exception("accounting of request %s failed", p.request_id)

    def _record(
        self,
        p: Prepared,
        status: int,
        stream: bool,
        usage: dict[str, Any] | None,
        error: str | None,
    ) -> None:
        latency = time.perf_counter() - p.started
        model = p.entry.name
        usage = usage or {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "prompt_tokens_saved": p.prompt.saved_tokens if p.prompt else 0,
            "tokens_estimated": True,
        }
        sent, completion = usage["prompt_tokens"], usage["completion_tokens"]
        saved = usage["prompt_tokens_saved"]
        cot_saved = (
            round(min(completion / p.cot_ratio, 1e12) - completion)
            if p.cot_ratio and p.cot_method != "none" and status < 400
            else 0
        )
        batch_saved = p.batch_tokens_saved if status < 400 else 0
        served = p.served or p.entry
        cost_actual = cost_original = None
        if served.litellm_params is not None and status < 400:
            cost_actual = cost(served.litellm_params, sent, completion)
            cost_original = cost(
                served.litellm_params, sent + saved + batch_saved, completion + cot_saved
            )
        self.ledger.record(
            LedgerRow(
                request_id=p.request_id,
                model=model,
                backend=served.backend,
                status=status,
                stream=stream,
                latency_ms=latency * 1000,
                prompt_tokens_original=sent + saved,
                prompt_tokens_sent=sent,
                completion_tokens=completion,
                cot_method=p.cot_method,
                prompt_ratio=p.prompt_ratio,
                cot_ratio=p.cot_ratio,
                cot_tokens_saved_estimated=cot_saved,
                batch_tokens_saved=batch_saved,
                tokens_estimated=bool(usage.get("tokens_estimated")),
                cost_original=cost_original,
                cost_actual=cost_actual,
                error=error,
            )
        )
        m = self.metrics
        m.requests.labels(model, str(status)).inc()
        m.latency.labels(model, str(stream).lower()).observe(latency)
        m.tokens.labels(model, "prompt_original").inc(sent + saved)
        m.tokens.labels(model, "prompt_sent").inc(sent)
        m.tokens.labels(model, "completion").inc(completion)
        m.saved.labels(model, "prompt_compression").inc(saved)
        m.saved.labels(model, "cot_compression").inc(cot_saved)
        m.saved.labels(model, "query_batching").inc(batch_saved)

    def record_refusal(self, model: str | None, status: int, message: str) -> None:
        """Ledger row and metric for a request that never reached a model."""
        name = short(model) if isinstance(model, str) and model else "-"
        self.ledger.record(
            LedgerRow(
                request_id=completion_id(),
                model=name,
                backend="-",
                status=status,
                stream=False,
                latency_ms=0.0,
                prompt_tokens_original=0,
                prompt_tokens_sent=0,
                completion_tokens=0,
                error=message[:500],
            )
        )
        self.metrics.requests.labels(name, str(status)).inc()

    def _tokenskip_info(self, p: Prepared) -> dict[str, Any]:
        parts = p.prompt.parts if p.prompt else []
        return {
            "prompt_ratio": p.prompt_ratio,
            "prompt_tokens_saved": p.prompt.saved_tokens if p.prompt else 0,
            "messages_compressed": p.prompt.num_compressed if p.prompt else 0,
            "compressed": [part.to_dict() for part in parts],
            "cot_ratio": p.cot_ratio,
            "cot_method": p.cot_method,
            "fallbacks": list(p.fallbacks),
        }

    async def complete(self, p: Prepared) -> dict[str, Any]:
        chain = self.chain(p.entry)
        for i, entry in enumerate(chain):
            try:
                result = await self.backend(entry).complete(entry.name, p.messages, p.params)
                p.served = entry
                break
            except BackendError as exc:
                if self._upstream_failed(entry, exc) and i + 1 < len(chain):
                    self._fell_back(p, entry, chain[i + 1], exc)
                    continue
                self._account(p, exc.status, False, None, exc.message)
                raise _accounted(ProxyError(exc.status, exc.message, exc.type, exc.code)) from None
            except asyncio.CancelledError:
                self._account(p, 499, False, None, "client disconnected")
                raise
        await self.settle(p)
        usage = self._usage(p, result.prompt_tokens, result.completion_tokens, result.text)
        self._account(p, 200, False, usage)
        return self._completion(p, result.text, result.finish_reason, usage, result.raw)

    async def complete_watched(
        self,
        p: Prepared,
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
        status, usage, error = 499, None, "client disconnected"
        try:
            async with contextlib.aclosing(self._pieces(p, end)) as pieces:
                async for delta in pieces:
                    parts.append(delta.text)
                    if watch.feed(delta.text):
                        stopped = True
                        break
            text = "".join(parts)
            if not end and not stopped:
                raise _incomplete()
            last = end[0] if end else None
            await self.settle(p)
            reported = last.prompt_tokens if last is not None else None
            usage = self._usage(
                p,
                reported if reported is not None else prompt_tokens,
                last.completion_tokens if last is not None else None,
                text,
            )
            status, error = 200, None
            return self._completion(p, text, last.finish_reason if last else "stopped", usage)
        except BackendError as exc:
            status, error = exc.status, exc.message
            raise _accounted(ProxyError(exc.status, exc.message, exc.type, exc.code)) from None
        except Exception as exc:
            status, error = 500, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._account(p, status, True, usage, error)

    def _completion(
        self,
        p: Prepared,
        text: str,
        finish_reason: str,
        usage: dict[str, Any],
        raw: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if raw is not None:
            # The upstream's body as it came (tool calls, logprobs, refusal, audio,
            # system_fingerprint, service_tier, usage details...); the gateway only names the
            # model it was asked for and adds its own accounting.
            body = dict(raw)
            body["model"] = (p.served or p.entry).name
            body["usage"] = {**(raw.get("usage") or {}), **usage}
            body["tokenskip"] = self._tokenskip_info(p)
            return body
        return {
            "id": p.request_id,
            "object": "chat.completion",
            "created": now(),
            "model": (p.served or p.entry).name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
            "tokenskip": self._tokenskip_info(p),
        }

    async def _deltas(self, p: Prepared) -> AsyncIterator[Delta]:
        """The backend's deltas, falling back to the next model only before any output."""
        chain = self.chain(p.entry)
        for i, entry in enumerate(chain):
            started = False
            try:
                async with contextlib.aclosing(
                    self.backend(entry).stream(entry.name, p.messages, p.params)
                ) as deltas:
                    async for delta in deltas:
                        started, p.served = True, entry
                        yield delta
                return
            except BackendError as exc:
                if not self._upstream_failed(entry, exc) or started or i + 1 == len(chain):
                    raise
                self._fell_back(p, entry, chain[i + 1], exc)

    async def _pieces(self, p: Prepared, end: list[Delta]) -> AsyncIterator[Delta]:
        """The backend's deltas up to the finishing one, which is put in ``end``."""
        async with contextlib.aclosing(self._deltas(p)) as deltas:
            async for delta in deltas:
                if delta.finish_reason is not None:
                    end.append(delta)
                    return
                yield delta

    async def stream(self, p: Prepared, include_usage: bool) -> AsyncIterator[str]:
        """SSE lines. From an OpenAI-protocol upstream its chunks are forwarded as they came
        (tool-call deltas, logprobs, refusals...); a local model's are built here: a role
        chunk, content chunks, a finish chunk. Then the usage chunk if asked, and [DONE]."""
        created = now()
        name = (p.served or p.entry).name

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            body = {
                "id": p.request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        parts: list[str] = []
        status, usage, error = 499, None, "client disconnected"
        passthrough = False
        try:
            end: list[Delta] = []
            # aclosing: if the client leaves, the backend stream is closed (and cancelled) now.
            async with contextlib.aclosing(self._pieces(p, end)) as pieces:
                first = True
                async for delta in pieces:
                    if first:
                        passthrough, first = delta.raw is not None, False
                        if not passthrough:
                            yield chunk({"role": "assistant", "content": ""})
                    parts.append(delta.text)
                    if passthrough and delta.raw is not None:
                        body = {**delta.raw, "model": (p.served or p.entry).name}
                        yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
                    elif delta.text:
                        yield chunk({"content": delta.text})
                if first and end and end[0].raw is None:
                    yield chunk({"role": "assistant", "content": ""})
            if not end:
                raise _incomplete()
            last = end[0]
            await self.settle(p)
            usage = self._usage(p, last.prompt_tokens, last.completion_tokens, "".join(parts))
            if not passthrough:
                yield chunk({}, last.finish_reason)
            if include_usage:
                upstream = last.raw or {}
                body = {
                    "id": upstream.get("id", p.request_id),
                    "object": "chat.completion.chunk",
                    "created": upstream.get("created", created),
                    **upstream,
                    "model": (p.served or p.entry).name,
                    "choices": [],
                    "usage": {**(upstream.get("usage") or {}), **usage},
                    "tokenskip": self._tokenskip_info(p),
                }
                yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
            status, error = 200, None
        except BackendError as exc:
            status, error = exc.status, exc.message
            yield f"data: {json.dumps(error_body(exc.message, exc.type, exc.code))}\n\n"
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a stream ends cleanly whatever happened
            log.exception("stream of request %s failed", p.request_id)
            status, error = 500, f"{type(exc).__name__}: {exc}"
            body = error_body(
                f"internal error: {type(exc).__name__}", "server_error", "internal_error"
            )
            yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self._account(p, status, True, usage, error)


def _accounted(error: ProxyError) -> ProxyError:
    error.accounted = True
    return error


def _incomplete() -> BackendError:
    return BackendError(
        502, "the backend stream ended without finishing", "upstream_error", "upstream_incomplete"
    )
