"""What every remote backend shares: secret resolution and redaction, and pricing."""

from __future__ import annotations

import functools
import os
from typing import Any


def resolve_secret(value: Any) -> Any:
    """LiteLLM's ``os.environ/NAME`` convention: read the value from the environment."""
    if isinstance(value, str) and value.startswith("os.environ/"):
        return os.environ.get(value.split("/", 1)[1], "")
    return value


def secrets_of(params_list: list[dict[str, Any]]) -> list[str]:
    """Every configured credential, so that no message can ever carry one."""
    found = []
    for params in params_list:
        for key, value in params.items():
            if any(word in key.lower() for word in ("key", "secret", "token", "password")):
                value = resolve_secret(value)
                if isinstance(value, str) and len(value) >= 4:
                    found.append(value)
    return found


def redact(message: str, secrets: list[str]) -> str:
    for secret in secrets:
        message = message.replace(secret, "***")
    return message


@functools.lru_cache(maxsize=4096)
def unit_prices(model: str) -> tuple[float, float] | None:
    """USD per prompt and per completion token from litellm's local price map, looked up
    once per model (the lookup costs ~0.07 ms, too much for every request). Probed at 1,000
    tokens, so tiered prices that start at long contexts are not applied."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    try:
        prompt_cost, _ = litellm.cost_per_token(
            model=model, prompt_tokens=1000, completion_tokens=0
        )
        _, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=0, completion_tokens=1000
        )
    except Exception:
        return None
    return prompt_cost / 1000, completion_cost / 1000


def cost(params: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD for a call: the deployment's own prices (``input_cost_per_token`` /
    ``output_cost_per_token``) if configured, else litellm's local price map, else None."""
    if "input_cost_per_token" in params or "output_cost_per_token" in params:
        return float(
            prompt_tokens * float(params.get("input_cost_per_token", 0.0))
            + completion_tokens * float(params.get("output_cost_per_token", 0.0))
        )
    prices = unit_prices(str(params.get("model", "")))
    if prices is None:
        return None
    return prompt_tokens * prices[0] + completion_tokens * prices[1]
