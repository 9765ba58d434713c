"""One request's life after its plan: sent, answered or not, settled and accounted once.

A :class:`~tokenskip.proxy.serving.prepare.Plan` says what to send and is never changed; an
:class:`Exchange` holds what happens to it: which model answered, the fallbacks taken, what
the answer cost. Every path that sends a plan (chat completions, streamed or not, a watched
completion, a same-protocol pass-through, its relayed stream) runs inside ``with exchange:``,
and the exchange's exit writes its one ledger row whatever ended it:

- the outcome the path recorded (:meth:`Exchange.answered`, :meth:`Exchange.failed`);
- a :class:`~tokenskip.proxy.infra.backends.base.BackendError` or
  :class:`~tokenskip.proxy.errors.ProxyError`: its status and message (the error is marked
  accounted, so the error handler writes no second row);
- a client that left (``CancelledError``, a stream closed at a ``yield``): 499, unless a
  failure was already recorded;
- anything else: 500.

A pass-through that answers with a stream hands the exchange over (:meth:`hand_over`) to
the generator that relays it, which enters it again; a request that turns out not to reach
a model at all is voided (:meth:`void`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Any

from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.infra.accounting import Accounting
from tokenskip.proxy.infra.backends.base import BackendError
from tokenskip.proxy.infra.backends.upstream import cost
from tokenskip.proxy.infra.config import ModelEntry
from tokenskip.proxy.infra.ledger import LedgerRow
from tokenskip.proxy.protocol import usage_body
from tokenskip.proxy.serving.prepare import Plan, prompt_tokens
from tokenskip.proxy.serving.prompt import message_texts
from tokenskip.tokens import TextTokenizer

log = logging.getLogger(__name__)
CLIENT_LEFT = "client disconnected"


class Exchange:
    """What happens to one plan: sent, answered (or not), and accounted exactly once."""

    def __init__(
        self, plan: Plan, accounting: Accounting, tokenizer: TextTokenizer, *, stream: bool
    ):
        self.plan = plan
        self.accounting = accounting
        self.tokenizer = tokenizer
        """The model's counting tokenizer (the gateway's estimates where the upstream gives
        no count, and the compression's savings)."""
        self.stream = stream
        self.served: ModelEntry | None = None
        """The entry that actually answered (differs from the plan's after a fallback)."""
        self.fallbacks: list[str] = []
        """``failed->next`` for every fallback taken, in order."""
        self.forced_at: int | None = None
        """Budget forcing: the output token where the answer cue went in (None: not forced)."""
        self.reasoning_tokens: int | None = None
        """What the upstream reported in ``completion_tokens_details.reasoning_tokens``."""
        self.cot_note: str | None = None
        """Why the CoT knob did less than planned, found while answering."""
        self.status: int | None = None
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self._handed_over = False
        self._closed = False
        self._counting: asyncio.Future[Any] | None = None
        prompt = plan.prompt
        if prompt is not None and not prompt.counted:
            # the savings are counted while the upstream works, not before it is called
            self._counting = asyncio.ensure_future(asyncio.to_thread(prompt.count, tokenizer))

    @property
    def model(self) -> str:
        """The name of the model that answers (after any fallback)."""
        return (self.served or self.plan.entry).name

    async def prompt_tokens(self) -> int:
        """The prompt as the model counts it (:func:`~tokenskip.proxy.serving.prepare.prompt_tokens`),
        known before the answer: a stream's first event can carry it."""
        return await asyncio.to_thread(prompt_tokens, self.tokenizer, self.plan)

    # -- the outcome ----------------------------------------------------------------------
    async def answered(
        self,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        text: str,
        *,
        reasoning_tokens: int | None = None,
        forced_at: int | None = None,
    ) -> dict[str, Any]:
        """The answer came: the response's usage, from the upstream's counts where it gave
        them, else the gateway's own (``tokens_estimated``), with the prompt tokens the
        compression saved (waiting for their count if it still runs)."""
        if self._counting is not None:
            await self._counting
            self._counting = None
        plan = self.plan
        self.reasoning_tokens = reasoning_tokens
        if forced_at is not None:
            self.forced_at = forced_at
        tokenizer = self.tokenizer
        exact = plan.exact
        if prompt_tokens is None:
            prompt_tokens = sum(
                tokenizer.count(part) for m in plan.messages for part in message_texts(m)
            )
            exact = False
        if completion_tokens is None:
            completion_tokens = tokenizer.count(text)
            exact = False
        saved = plan.prompt.saved_tokens if plan.prompt else 0
        self.usage = usage_body(prompt_tokens, completion_tokens, saved=saved, estimated=not exact)
        self.status, self.error = 200, None
        return self.usage

    def failed(self, status: int, error: str) -> None:
        """The request failed without an exception reaching the exchange (a stream that
        ends with the API's own error event)."""
        self.status, self.error = status, error

    def fell_back(self, failed: ModelEntry, nxt: ModelEntry) -> None:
        self.fallbacks.append(f"{failed.name}->{nxt.name}")

    # -- the one exit ---------------------------------------------------------------------
    def hand_over(self) -> None:
        """The answer goes on as a stream: the generator that relays it enters the exchange
        again and accounts it; leaving this ``with`` block does not."""
        self._handed_over = True

    def void(self) -> None:
        """Not a request to a model after all (the upstream lacks the endpoint and the
        request is served another way, in an exchange of its own): no ledger row."""
        self._closed = True

    def __enter__(self) -> Exchange:
        self._handed_over = False
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None and self._handed_over:
            return
        self.close(exc)

    def close(self, exc: BaseException | None = None) -> None:
        """Account the exchange (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        status, error = self._outcome(exc)
        try:
            row = self._row(status, error)
        except Exception:  # noqa: BLE001 - accounting must not break an answer
            log.exception("accounting of request %s failed", self.plan.request_id)
            return
        self.accounting.write(row)

    def _row(self, status: int, error: str | None) -> LedgerRow:
        """The exchange's ledger row: what was sent, what it would have cost uncompressed."""
        p = self.plan
        usage = self.usage or {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "prompt_tokens_saved": p.prompt.saved_tokens if p.prompt else 0,
            "tokens_estimated": True,
        }
        sent, completion = usage["prompt_tokens"], usage["completion_tokens"]
        saved = usage["prompt_tokens_saved"]
        ok = status < 400
        reasoning = self.reasoning_tokens if ok else None
        knob = bool(p.cot_ratio) and p.cot_method not in ("none", "client") and ok
        reasoning_saved = cot_saved = 0
        reasoner = p.cot is not None and p.cot.reasoning != "none"
        if knob and reasoner and reasoning:
            # a reasoning model: the knob acts on its reasoning tokens, which it reported
            reasoning_saved = round(min(reasoning / p.cot_ratio, 1e12) - reasoning)
        elif knob:
            cot_saved = round(min(completion / p.cot_ratio, 1e12) - completion)
        batch_saved = p.batch_tokens_saved if ok else 0
        served = self.served or p.entry
        cost_actual = cost_original = None
        if served.litellm_params is not None and ok:
            cost_actual = cost(served.litellm_params, sent, completion)
            cost_original = cost(
                served.litellm_params,
                sent + saved + batch_saved,
                completion + cot_saved + reasoning_saved,
            )
        return LedgerRow(
            request_id=p.request_id,
            model=p.entry.name,
            backend=served.backend,
            status=status,
            stream=self.stream,
            latency_ms=(time.perf_counter() - p.started) * 1000,
            prompt_tokens_original=sent + saved,
            prompt_tokens_sent=sent,
            completion_tokens=completion,
            cot_method=p.cot_method,
            prompt_ratio=p.prompt_ratio,
            document_ratio=p.document_ratio,
            cot_ratio=p.cot_ratio,
            cot_tokens_saved_estimated=cot_saved,
            batch_tokens_saved=batch_saved,
            tokens_estimated=bool(usage.get("tokens_estimated")),
            cost_original=cost_original,
            cost_actual=cost_actual,
            error=error,
            reasoning_tokens=reasoning,
            reasoning_tokens_saved_estimated=reasoning_saved,
            cot_budget=p.cot.budget if p.cot is not None else None,
            prefix_bytes_identical=p.prefix_bytes[0] if p.prefix_bytes else None,
            prefix_bytes_total=p.prefix_bytes[1] if p.prefix_bytes else None,
        )

    def _outcome(self, exc: BaseException | None) -> tuple[int, str | None]:
        if isinstance(exc, ProxyError):
            exc.accounted = True  # this row is the request's; the error handler adds none
            return exc.status, exc.message
        if isinstance(exc, BackendError):
            return exc.status, exc.message
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            if self.status is not None and self.status >= 400:
                return self.status, self.error  # a failure recorded before the client left
            return 499, CLIENT_LEFT
        if exc is not None:
            return 500, f"{type(exc).__name__}: {exc}"
        if self.status is None:
            log.error("request %s ended without an outcome", self.plan.request_id)
            return 500, "the request ended without an outcome"
        return self.status, self.error

    # -- what the client is told ----------------------------------------------------------
    def headers(self, usage: dict[str, Any] | None = None) -> dict[str, str]:
        """Savings headers: from the final usage when known (non-streaming), else what is
        known before generation (streaming: the saving, not yet the upstream's count)."""
        plan = self.plan
        h = {
            "x-tokenskip-cot-method": plan.cot_method,
            "x-tokenskip-tokens-estimated": str(not plan.exact).lower(),
        }
        if self.fallbacks:
            h["x-tokenskip-fallback"] = ",".join(self.fallbacks)
        if plan.prompt is None or plan.prompt.counted:
            # a stream starts before a large part is counted: its final usage chunk says
            h["x-tokenskip-prompt-tokens-saved"] = str(
                plan.prompt.saved_tokens if plan.prompt else 0
            )
        if usage is not None:
            h["x-tokenskip-prompt-tokens-original"] = str(usage["prompt_tokens_original"])
            h["x-tokenskip-prompt-tokens-saved"] = str(usage["prompt_tokens_saved"])
            h["x-tokenskip-tokens-estimated"] = str(usage["tokens_estimated"]).lower()
        return h

    def info(self) -> dict[str, Any]:
        """The response's ``tokenskip`` object: what was compressed, how, and fallbacks."""
        plan = self.plan
        prompt = plan.prompt
        return {
            "prompt_ratio": plan.prompt_ratio,
            "document_ratio": plan.document_ratio,
            "prompt_tokens_saved": prompt.saved_tokens if prompt else 0,
            "messages_compressed": prompt.num_compressed if prompt else 0,
            "compressed": [part.to_dict() for part in prompt.parts] if prompt else [],
            "cot_ratio": plan.cot_ratio,
            "cot_method": plan.cot_method,
            **(plan.cot.info(self.forced_at, self.cot_note) if plan.cot else {}),
            "fallbacks": list(self.fallbacks),
        }
