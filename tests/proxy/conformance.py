"""What the Messages and Responses conformance suites share: one gateway over every backend a
translated request can take, and an SSE stream read off the wire."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

COUNT_TO_TEN = "Count from 1 to 10, separated by commas."
"""SmolLM2 answers it greedily with "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"."""


@contextmanager
def gateway(upstream: str, direct: bool, key: str, ledger: Path) -> Iterator[str]:
    """A gateway whose models reach every backend: ``ok``/``rich``/``reasoner`` (an
    OpenAI-protocol upstream on loopback, direct or through litellm), ``primary`` (fails,
    falls back to ``ok``), ``knob`` (the CoT knob on) and ``local`` (the embedded model)."""
    base = {"api_base": upstream + "/v1", "api_key": "k"}
    config = {
        "model_list": [
            {"model_name": "ok", "litellm_params": {"model": "openai/ok", **base},
             "tokenskip": {"tokenizer": "smollm2"}},
            {"model_name": "rich", "litellm_params": {"model": "openai/rich", **base}},
            {"model_name": "reasoner", "litellm_params": {"model": "openai/reasoner", **base}},
            {"model_name": "primary", "litellm_params": {"model": "openai/fail500", **base}},
            {"model_name": "knob", "litellm_params": {"model": "openai/ok", **base},
             "tokenskip": {"tokenizer": "smollm2", "cot_ratio": 0.5}},
            {"model_name": "local", "local": {"model": "smollm2"}},
        ],
        "router_settings": {"num_retries": 0, "fallbacks": [{"primary": ["ok"]}]},
        "tokenskip_settings": {"direct_openai_compatible": direct},
    }  # fmt: skip
    settings = Settings(api_keys=key, ledger_url=f"sqlite:///{ledger}")
    with serve(create_app(settings, parse_config(config, settings))) as url:
        yield url


def raw_events(url: str, body: dict[str, Any], headers: dict[str, str]) -> list[tuple[str, Any]]:
    """``(event name, data)`` of a streamed request, read off the wire; each event's name
    and its data's ``type`` agree."""
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append((lines["event"], data))
    return out
