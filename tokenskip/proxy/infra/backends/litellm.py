"""Remote backends through litellm's Router: any provider, retries, cooldowns, fallbacks.

Deployments come from a LiteLLM-style ``model_list``; routing settings (``num_retries``,
``timeout``, ``cooldown_time``, ``allowed_fails``) pass straight to the Router. Fallbacks are
run by the gateway, since they may lead to a local or direct deployment.
Upstream failures become :class:`BackendError` with the status a client should see, and no
message ever carries a configured secret.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from tokenskip.proxy.infra.backends.base import BackendError, Completion, Delta, reasoning_tokens_of
from tokenskip.proxy.infra.backends.upstream import redact, secrets_of

ROUTER_KEYS = {
    "num_retries",
    "timeout",
    "stream_timeout",
    "cooldown_time",
    "allowed_fails",
    "fallbacks",
    "retry_after",
    "routing_strategy",
    "max_fallbacks",
    "default_fallbacks",
    "disable_cooldowns",
    "context_window_fallbacks",
}


class RemoteBackend:
    name = "litellm"

    def __init__(
        self, model_list: list[dict[str, Any]], router_settings: dict[str, Any] | None = None
    ):
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        settings = dict(router_settings or {})
        unknown = sorted(set(settings) - ROUTER_KEYS)
        if unknown:
            raise ValueError(f"unknown router_settings {unknown}; known: {sorted(ROUTER_KEYS)}")
        # Fallbacks may cross backends (local, direct, litellm), so the gateway runs them.
        settings.pop("fallbacks", None)
        settings.setdefault("num_retries", 2)
        settings.setdefault("timeout", 60)
        litellm.suppress_debug_info = True
        litellm.telemetry = False
        self.router = litellm.Router(model_list=model_list, **settings)
        self._secrets = secrets_of([e["litellm_params"] for e in model_list])

    def map_error(self, exc: BaseException) -> BackendError:
        import litellm

        message = redact(str(getattr(exc, "message", None) or exc), self._secrets)
        if isinstance(exc, (litellm.Timeout, asyncio.TimeoutError, TimeoutError)):
            return BackendError(
                504, f"upstream timed out: {message}", "upstream_timeout", "timeout"
            )
        if isinstance(exc, litellm.ContextWindowExceededError):
            return BackendError(400, message, "invalid_request_error", "context_length_exceeded")
        if isinstance(exc, (litellm.AuthenticationError, litellm.PermissionDeniedError)):
            return BackendError(
                502,
                "the upstream provider rejected the gateway's credentials",
                "upstream_error",
                "upstream_auth",
            )
        if isinstance(exc, litellm.RateLimitError):
            return BackendError(429, message, "rate_limit_error", "rate_limited")
        if isinstance(exc, litellm.APIConnectionError):
            return BackendError(
                502,
                f"upstream connection failed: {message}",
                "upstream_error",
                "upstream_unavailable",
            )
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 404, 408):
            return BackendError(status, message, "invalid_request_error")
        return BackendError(
            502, f"upstream error: {message}", "upstream_error", "upstream_unavailable"
        )

    async def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion:
        try:
            response = await self.router.acompletion(model=model, messages=messages, **params)
        except BackendError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from None
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            reasoning_tokens=reasoning_tokens_of(usage),
            model=getattr(response, "model", None) or model,
            raw=_plain(response),
        )

    async def stream(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncIterator[Delta]:
        try:
            response = await self.router.acompletion(
                model=model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                **params,
            )
            finish_reason = None
            prompt_tokens = completion_tokens = usage_chunk = reasoning = None
            async for chunk in response:
                usage = getattr(chunk, "usage", None)
                if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
                    prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
                    reasoning = reasoning_tokens_of(usage)
                if _usage_only(chunk):
                    usage_chunk = _plain(chunk) if usage is not None else usage_chunk
                    continue
                text = "".join(getattr(c.delta, "content", None) or "" for c in chunk.choices)
                yield Delta(text=text, raw=_plain(chunk))
                for choice in chunk.choices:
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        except BackendError:
            raise
        except Exception as exc:
            raise self.map_error(exc) from None
        if finish_reason is not None:  # else the service reports the stream as incomplete
            yield Delta(
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                reasoning_tokens=reasoning,
                raw=usage_chunk,
            )


def _usage_only(chunk: Any) -> bool:
    """A chunk that carries nothing but usage (litellm gives it an empty delta choice)."""
    for choice in chunk.choices or []:
        delta = choice.delta
        if (
            choice.finish_reason
            or getattr(delta, "content", None)
            or getattr(delta, "tool_calls", None)
            or getattr(delta, "reasoning_content", None)
            or getattr(delta, "thinking_blocks", None)
        ):
            return False
        if getattr(delta, "role", None) or getattr(delta, "function_call", None):
            return False
    return getattr(chunk, "usage", None) is not None or not chunk.choices


def _plain(obj: Any) -> dict[str, Any]:
    """A litellm response object as the OpenAI-shaped dict it stands for (its unset fields
    left out, so a field the provider did not send is not invented)."""
    data = obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else dict(obj)
    data.pop("_hidden_params", None)
    data.pop("_response_headers", None)
    for choice in data.get("choices") or []:
        # vLLM's matched stop string: litellm files it under provider_specific_fields
        matched = (choice.get("provider_specific_fields") or {}).get("stop_reason")
        if isinstance(matched, str) and "stop_reason" not in choice:
            choice["stop_reason"] = matched
    return data
