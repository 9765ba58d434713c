"""The FastAPI app: the composition root of the gateway (factory, lifespan, middleware).

``create_app()`` reads settings from the environment (``TOKENSKIP_*``), which is how
``tokenskip serve`` and multi-worker uvicorn configure every worker the same way. The routes
are in :mod:`tokenskip.proxy.api.routes`, the request path in :mod:`tokenskip.proxy.serving.service`.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tokenskip.proxy.api.edge import Edge
from tokenskip.proxy.api.openapi import openapi_document
from tokenskip.proxy.api.routes import router
from tokenskip.proxy.errors import install_handlers
from tokenskip.proxy.infra.config import GatewayConfig, Settings, get_settings, load_config
from tokenskip.proxy.infra.ledger import Ledger, default_backlog_path, default_url
from tokenskip.proxy.infra.metrics import Metrics
from tokenskip.proxy.serving.batcher import Batcher
from tokenskip.proxy.serving.multi_query import MultiQuery
from tokenskip.proxy.serving.service import ChatService

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None) -> FastAPI:
    settings = settings or get_settings()
    config = config or load_config(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        url = config.ledger_url or default_url(settings.host, settings.port)
        ledger = Ledger(
            url,
            backlog_path=default_backlog_path(url, settings.host, settings.port),
            backlog_rows=settings.ledger_backlog_rows,
        )
        metrics.watch_ledger(ledger)
        service = ChatService(config, ledger, metrics)
        app.state.service, app.state.ledger, app.state.metrics = service, ledger, metrics
        app.state.multi_query = MultiQuery(service)
        app.state.batcher = Batcher(app.state.multi_query)
        # Models and tokenizers are loaded: move them out of the collector's sight, so full
        # collections under load do not walk millions of long-lived objects (p99 stalls).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await service.aclose()
            ledger.close()
            gc.unfreeze()  # hand everything back to the collector before the process exits

    app = FastAPI(title="tokenskip proxy", version="0.1.0", lifespan=lifespan)
    install_handlers(app)
    app.state.config = config
    app.state.api_keys = frozenset(config.api_keys)
    app.include_router(router)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return Edge(app, settings.max_body_bytes)  # type: ignore[return-value]
