"""Accounting: the usage a response reports, and one ledger row and the metrics per request.

Every request routed to a model (failed or cancelled ones included) and every refused one
leaves exactly one ledger row; a failure to account is logged and never reaches the answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tokenskip.proxy.backends.upstream import cost
from tokenskip.proxy.ledger import Ledger, LedgerRow
from tokenskip.proxy.metrics import Metrics
from tokenskip.proxy.prepare import Prepared
from tokenskip.proxy.prompt import message_texts
from tokenskip.proxy.protocol import completion_id, short, usage_body
from tokenskip.proxy.registry import Registry

log = logging.getLogger(__name__)


class Accounting:
    """Usage, ledger rows and metrics of one gateway."""

    def __init__(self, models: Registry, ledger: Ledger, metrics: Metrics):
        self.models = models
        self.ledger = ledger
        self.metrics = metrics

    def usage(
        self, p: Prepared, prompt_tokens: int | None, completion_tokens: int | None, text: str
    ) -> dict[str, Any]:
        """The response's usage: the upstream's counts where it gave them, else the
        gateway's own (``tokens_estimated``), with the prompt tokens compression saved."""
        tokenizer = self.models.counter(p.entry).tokenizer
        exact = p.exact
        if prompt_tokens is None:
            prompt_tokens = sum(
                tokenizer.count(part) for m in p.messages for part in message_texts(m)
            )
            exact = False
        if completion_tokens is None:
            completion_tokens = tokenizer.count(text)
            exact = False
        saved = p.prompt.saved_tokens if p.prompt else 0
        return usage_body(prompt_tokens, completion_tokens, saved=saved, estimated=not exact)

    def account(
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
        reasoning = p.reasoning_tokens if status < 400 else None
        knob = bool(p.cot_ratio) and p.cot_method not in ("none", "client") and status < 400
        reasoning_saved = cot_saved = 0
        reasoner = p.cot is not None and p.cot.reasoning != "none"
        if knob and reasoner and reasoning:
            # a reasoning model: the knob acts on its reasoning tokens, which it reported
            reasoning_saved = round(min(reasoning / p.cot_ratio, 1e12) - reasoning)
        elif knob:
            cot_saved = round(min(completion / p.cot_ratio, 1e12) - completion)
        batch_saved = p.batch_tokens_saved if status < 400 else 0
        budget = p.cot.budget if p.cot is not None else None
        served = p.served or p.entry
        cost_actual = cost_original = None
        if served.litellm_params is not None and status < 400:
            cost_actual = cost(served.litellm_params, sent, completion)
            cost_original = cost(
                served.litellm_params,
                sent + saved + batch_saved,
                completion + cot_saved + reasoning_saved,
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
                cot_budget=budget,
                prefix_bytes_identical=p.prefix_bytes[0] if p.prefix_bytes else None,
                prefix_bytes_total=p.prefix_bytes[1] if p.prefix_bytes else None,
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
        m.saved.labels(model, "reasoning_budget").inc(reasoning_saved)
        m.tokens.labels(model, "reasoning").inc(reasoning or 0)

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
