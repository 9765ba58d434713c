"""Accounting: one ledger row and the metrics per request.

Every request routed to a model (failed or cancelled ones included) leaves exactly one
ledger row, written when its :class:`~tokenskip.proxy.serving.exchange.Exchange` ends, and so does
every refused one (:meth:`Accounting.record_refusal`); a failure to account is logged and
never reaches the answer.
"""

from __future__ import annotations

import logging
from typing import Any

from tokenskip.proxy.infra.ledger import Ledger, LedgerRow
from tokenskip.proxy.infra.metrics import Metrics
from tokenskip.proxy.protocol import completion_id, short

log = logging.getLogger(__name__)


class Accounting:
    """Ledger rows and metrics of one gateway."""

    def __init__(self, ledger: Ledger, metrics: Metrics):
        self._counts: dict[str, tuple[Any, ...]] = {}
        self._done: dict[tuple[str, int, bool], tuple[Any, Any]] = {}
        self.ledger = ledger
        self.metrics = metrics

    def write(self, row: LedgerRow) -> None:
        """A request's ledger row and its metrics (an exchange's exit calls this once); a
        failure here is logged and never reaches the client's response."""
        try:
            self.ledger.record(row)
            model = row.model
            counts = self._counts.get(model) or self._children(model)
            m = self.metrics
            key = (model, row.status, row.stream)
            done = self._done.get(key)
            if done is None:
                done = self._done[key] = (
                    m.requests.labels(model, str(row.status)),
                    m.latency.labels(model, str(row.stream).lower()),
                )
            done[0].inc()
            done[1].observe(row.latency_ms / 1000)
            for child, value in zip(counts, (
                row.prompt_tokens_original,
                row.prompt_tokens_sent,
                row.completion_tokens,
                row.prompt_tokens_original - row.prompt_tokens_sent,
                row.cot_tokens_saved_estimated,
                row.batch_tokens_saved,
                row.reasoning_tokens_saved_estimated,
                row.reasoning_tokens or 0,
            )):  # fmt: skip
                if value:
                    child.inc(value)
        except Exception:  # noqa: BLE001 - accounting must not break an answer
            log.exception("accounting of request %s failed", row.request_id)

    def _children(self, model: str) -> tuple[Any, ...]:
        """A model's token and saving counters, looked up once (a labels() call per counter
        and request costs more than the counting)."""
        m = self.metrics
        counts = (
            m.tokens.labels(model, "prompt_original"),
            m.tokens.labels(model, "prompt_sent"),
            m.tokens.labels(model, "completion"),
            m.saved.labels(model, "prompt_compression"),
            m.saved.labels(model, "cot_compression"),
            m.saved.labels(model, "query_batching"),
            m.saved.labels(model, "reasoning_budget"),
            m.tokens.labels(model, "reasoning"),
        )
        self._counts[model] = counts
        return counts

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
