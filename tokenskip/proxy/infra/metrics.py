"""Prometheus metrics for one gateway (own registry, so several apps in a process never clash)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tokenskip_requests",
            "API requests by model and HTTP status, refused ones (4xx) and failed ones (5xx) "
            "included; model is '-' when the request named none that could be read",
            ["model", "status"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "tokenskip_fallbacks",
            "Requests answered by a fallback model after their own failed",
            ["model", "fallback"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tokenskip_request_latency_seconds",
            "End-to-end request latency",
            ["model", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "tokenskip_tokens",
            "Tokens by direction: prompt_original, prompt_sent, completion, reasoning (as the "
            "upstream reported it)",
            ["model", "direction"],
            registry=self.registry,
        )
        self.saved = Counter(
            "tokenskip_tokens_saved",
            "Tokens saved by kind (cot_compression and reasoning_budget are estimated)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "tokenskip_upstream_errors",
            "Backend failures by model and error code",
            ["model", "code"],
            registry=self.registry,
        )
        self.compression_seconds = Histogram(
            "tokenskip_prompt_compression_seconds",
            "Time spent compressing prompts",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch_ledger(self, ledger: Any) -> None:
        """Export the ledger's backlog (rows kept on disk while its database is away) and
        the rows dropped from a full backlog, read at each scrape."""
        Gauge(
            "tokenskip_ledger_backlog_rows",
            "Ledger rows kept on local disk until the database answers again",
            registry=self.registry,
        ).set_function(lambda: len(ledger.backlog))
        Gauge(
            "tokenskip_ledger_rows_dropped",
            "Ledger rows dropped since start because the backlog was full (oldest first)",
            registry=self.registry,
        ).set_function(lambda: ledger.backlog.dropped)

    def render(self) -> bytes:
        return generate_latest(self.registry)
