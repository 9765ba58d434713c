"""Same-protocol upstreams for the Responses and Messages APIs: the request goes to the
upstream's own endpoint as the client wrote it, and the answer comes back as the upstream
wrote it (:mod:`tokenskip.proxy.serving.native` decides what, if anything, compression changes).

- ``responses``: an OpenAI-protocol deployment (``openai/`` or ``hosted_vllm/`` with an
  ``api_base``) answers ``POST {api_base}/responses``.
- ``messages``: an Anthropic deployment (``anthropic/`` with an ``api_base``) answers
  ``POST {api_base}/v1/messages`` with ``x-api-key`` and the client's ``anthropic-version``
  and ``anthropic-beta`` headers.

Retries, cooldown and the mapping of upstream failures to client statuses are the direct
backend's (:class:`~tokenskip.proxy.infra.backends.direct.DirectBackend`).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tokenskip.proxy.infra.backends.base import BackendError
from tokenskip.proxy.infra.backends.direct import Deployment, DirectBackend
from tokenskip.proxy.infra.backends.upstream import resolve_secret, secrets_of
from tokenskip.proxy.infra.deployments import native_apis

ANTHROPIC_VERSION = "2023-06-01"
MISSING = "endpoint_missing"
"""Code of the error a same-protocol upstream without the endpoint gives."""
FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta", "openai-beta")
"""Client headers that are part of the protocol and reach a same-protocol upstream."""


def _url(api: str, base: str) -> str:
    base = base.rstrip("/")
    if api == "responses":
        return base + "/responses"
    return base if base.endswith("/v1/messages") else base + "/v1/messages"


class NativeBackend(DirectBackend):
    """One pooled session to the same-protocol endpoints of every native deployment."""

    name = "native"

    def __init__(
        self, deployments: dict[str, dict[str, Any]], router_settings: dict[str, Any] | None = None
    ):
        super().__init__({}, router_settings)
        default_timeout = float((router_settings or {}).get("timeout", 60.0))
        self.targets: dict[tuple[str, str], Deployment] = {}
        for name, params in deployments.items():
            key = resolve_secret(params.get("api_key"))
            for api in native_apis(params):
                headers = {
                    "content-type": "application/json",
                    **dict(params.get("extra_headers") or {}),
                }
                if key and api == "messages":
                    headers["x-api-key"] = key
                elif key:
                    headers["authorization"] = f"Bearer {key}"
                self.targets[(name, api)] = Deployment(
                    name=name,
                    url=_url(api, str(params["api_base"])),
                    model=str(params["model"]).split("/", 1)[1],
                    headers=headers,
                    timeout=float(params.get("timeout", default_timeout)),
                )
        self._secrets = secrets_of(list(deployments.values()))

        self.missing: set[tuple[str, str]] = set()
        """(model, api) whose upstream turned out not to have the endpoint: translated."""

    def target(self, model: str, api: str) -> Deployment | None:
        if (model, api) in self.missing:
            return None
        return self.targets.get((model, api))

    def _status_error(self, status: int, body: bytes) -> BackendError:
        """A 404/405 without the protocol's error object is a server that lacks the
        endpoint (an older vLLM, a chat-only gateway), not a failed request."""
        if status in (404, 405):
            try:
                named = isinstance(json.loads(body).get("error"), dict)
            except (ValueError, AttributeError):
                named = False
            if not named:
                return BackendError(502, f"upstream error {status}", "upstream_error", MISSING)
        return super()._status_error(status, body)

    async def send(
        self, d: Deployment, data: bytes, stream: bool, client_headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """POST the body as given; a successful response whose body is not read yet."""
        extra = {k: v for k, v in client_headers.items() if k in FORWARDED_HEADERS}
        if "x-api-key" in d.headers or d.url.endswith("/v1/messages"):
            extra.setdefault("anthropic-version", ANTHROPIC_VERSION)
        return await self._send(d, data, stream, extra)
