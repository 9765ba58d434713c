"""Which backend can serve a deployment, read from its ``litellm_params`` alone: pure
functions the config decides with and the backends serve by, so the config never imports
a backend."""

from __future__ import annotations

from typing import Any

PROVIDERS = ("openai/", "hosted_vllm/")
"""litellm model prefixes of OpenAI-protocol upstreams."""
DIRECT_PARAMS = {
    "model",
    "api_base",
    "api_key",
    "timeout",
    "input_cost_per_token",
    "output_cost_per_token",
    "extra_headers",
}
"""The ``litellm_params`` the direct backend honours; a deployment with any other goes
through litellm."""


def is_direct(params: dict[str, Any]) -> bool:
    """Whether a deployment can be served without litellm (OpenAI protocol, nothing exotic)."""
    return (
        str(params.get("model", "")).startswith(PROVIDERS)
        and bool(params.get("api_base"))
        and set(params) <= DIRECT_PARAMS
    )


def native_apis(params: dict[str, Any]) -> tuple[str, ...]:
    """The APIs (``responses``, ``messages``) a deployment answers in its own protocol."""
    model = str(params.get("model", ""))
    if not params.get("api_base") or not set(params) <= DIRECT_PARAMS:
        return ()
    if model.startswith(PROVIDERS):
        return ("responses",)
    if model.startswith("anthropic/"):
        return ("messages",)
    return ()
