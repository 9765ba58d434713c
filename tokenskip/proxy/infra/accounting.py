"""Accounting: one ledger row and the metrics per request.

Every request routed to a model (failed or cancelled ones included) leaves exactly one
ledger row, written when its :class:`~tokenskip.proxy.serving.exchange.Exchange` ends, and so does
every refused one (:meth:`Accounting.record_refusal`); a failure to account is logged and
never reaches the answer.
"""

from __future__ import annotations

import logging

from tokenskip.proxy.infra.ledger import Ledger, LedgerRow
from tokenskip.proxy.infra.metrics import Metrics
from tokenskip.proxy.protocol import completion_id, short

log = logging.getLogger(__name__)


class Accounting:
    """Ledger rows and metrics of one gateway."""

    def __init__(self, ledger: Ledger, metrics: Metrics):
        self.ledger = ledger
        self.metrics = metrics

    def write(self, row: LedgerRow) -> None:
        """A request's ledger row and its metrics (an exchange's exit calls this once); a
        failure here is logged and never reaches the client's response."""
        try:
            self.ledger.record(row)
            m, model = self.metrics, row.model
            saved = row.prompt_tokens_original - row.prompt_tokens_sent
            m.requests.labels(model, str(row.status)).inc()
            m.latency.labels(model, str(row.stream).lower()).observe(row.latency_ms / 1000)
            m.tokens.labels(model, "prompt_original").inc(row.prompt_tokens_original)
            m.tokens.labels(model, "prompt_sent").inc(row.prompt_tokens_sent)
            m.tokens.labels(model, "completion").inc(row.completion_tokens)
            m.saved.labels(model, "prompt_compression").inc(saved)
            m.saved.labels(model, "cot_compression").inc(row.cot_tokens_saved_estimated)
            m.saved.labels(model, "query_batching").inc(row.batch_tokens_saved)
            m.saved.labels(model, "reasoning_budget").inc(row.reasoning_tokens_saved_estimated)
            m.tokens.labels(model, "reasoning").inc(row.reasoning_tokens or 0)
        except Exception:  # noqa: BLE001 - accounting must not break an answer
            log.exception("accounting of request %s failed", row.request_id)

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
