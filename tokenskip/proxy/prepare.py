"""A chat request made ready for its backend: policy, prompt compression, the CoT knob.

:func:`prepare` validates what the models need (content present, no fields a local model
cannot honour), merges the model's policy with the request's ``tokenskip`` overrides,
compresses the prompt in a worker thread (never on the event loop) and starts counting the
savings beside the upstream call. Pass-through requests are not tokenized at all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from tokenskip.cot_control import apply_cot_ratio
from tokenskip.proxy.config import ModelEntry
from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.metrics import Metrics
from tokenskip.proxy.prompt import PromptCompression, PromptSettings, compress_messages
from tokenskip.proxy.protocol import ChatCompletionRequest, completion_id
from tokenskip.proxy.registry import Registry

LOCAL_UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "response_format",
)
"""Request fields a local model cannot honour: refused by name rather than ignored."""


@dataclass
class Prepared:
    """A request after policy, compression and the CoT knob, ready for its backend."""

    entry: ModelEntry
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    prompt: PromptCompression | None
    prompt_ratio: float | None
    cot_ratio: float | None
    cot_method: str
    exact: bool
    started: float
    request_id: str = field(default_factory=completion_id)
    served: ModelEntry | None = None
    """The entry that actually answered (differs from ``entry`` after a fallback)."""
    batch_tokens_saved: int = 0
    """Input tokens a merged multi-query call saved against one call per query."""
    counting: Any = None
    """The savings count running beside the upstream call (an asyncio future), or None."""
    fallbacks: list[str] = field(default_factory=list)
    """``failed->next`` for every fallback taken, in order."""

    @property
    def model(self) -> str:
        """The name of the model that answers (after any fallback)."""
        return (self.served or self.entry).name

    def headers(self, usage: dict[str, Any] | None = None) -> dict[str, str]:
        """Savings headers: from the final usage when known (non-streaming), else what is
        known before generation (streaming: the saving, not yet the upstream's count)."""
        h = {
            "x-tokenskip-cot-method": self.cot_method,
            "x-tokenskip-tokens-estimated": str(not self.exact).lower(),
        }
        if self.fallbacks:
            h["x-tokenskip-fallback"] = ",".join(self.fallbacks)
        if self.prompt is None or self.prompt.counted:
            # a stream starts before a large part is counted: its final usage chunk says
            h["x-tokenskip-prompt-tokens-saved"] = str(
                self.prompt.saved_tokens if self.prompt else 0
            )
        if usage is not None:
            h["x-tokenskip-prompt-tokens-original"] = str(usage["prompt_tokens_original"])
            h["x-tokenskip-prompt-tokens-saved"] = str(usage["prompt_tokens_saved"])
            h["x-tokenskip-tokens-estimated"] = str(usage["tokens_estimated"]).lower()
        return h

    def info(self) -> dict[str, Any]:
        """The response's ``tokenskip`` object: what was compressed, how, and fallbacks."""
        parts = self.prompt.parts if self.prompt else []
        return {
            "prompt_ratio": self.prompt_ratio,
            "prompt_tokens_saved": self.prompt.saved_tokens if self.prompt else 0,
            "messages_compressed": self.prompt.num_compressed if self.prompt else 0,
            "compressed": [part.to_dict() for part in parts],
            "cot_ratio": self.cot_ratio,
            "cot_method": self.cot_method,
            "fallbacks": list(self.fallbacks),
        }


def _check(entry: ModelEntry, request: ChatCompletionRequest) -> None:
    for i, m in enumerate(request.messages):
        if m.missing_content():
            raise ProxyError(
                400,
                f"messages[{i}] ({m.role}) has no content; give a string or a list of "
                "content parts",
                param=f"messages[{i}].content",
                code="missing_content",
            )
    if entry.is_local:
        params = request.upstream_params()
        unsupported = [
            k
            for k in LOCAL_UNSUPPORTED
            if params.get(k) not in (None, False, [], "none")
            and not (k == "response_format" and (params[k] or {}).get("type") == "text")
        ]
        if unsupported:
            raise ProxyError(
                400,
                f"the local model '{entry.name}' cannot take {', '.join(unsupported)} "
                "(it does not call tools or return log-probabilities); route the request to "
                "a model that does, or leave these fields out",
                param=unsupported[0],
                code="unsupported_parameter",
            )


def prepare_sync(
    models: Registry, metrics: Metrics, request: ChatCompletionRequest, started: float
) -> Prepared:
    """Everything :func:`prepare` does but start the count (runs in a worker thread)."""
    entry = models.entry(request.model)
    _check(entry, request)
    overrides = (
        request.tokenskip.model_dump(exclude_none=True, exclude={"batch"})
        if request.tokenskip
        else {}
    )
    try:
        policy = entry.policy.merged(overrides)
    except ValueError as exc:
        raise ProxyError(400, f"tokenskip: {exc}", param="tokenskip") from None
    messages = [m.model_dump(exclude_none=True) for m in request.messages]
    counter = models.counter(entry)
    prompt = None
    prompt_ratio = policy.prompt_ratio if policy.compresses_prompt else None
    if policy.compresses_prompt:
        t0 = time.perf_counter()
        scorer = (
            models.scorer(policy.scorer, counter, policy.scorer_model)
            if policy.drops_words
            else None
        )
        prompt = compress_messages(
            messages,
            PromptSettings(
                context_ratio=policy.prompt_ratio,
                instruction_ratio=policy.instruction_ratio,
                tool_ratio=policy.tool_ratio,
                min_tokens=policy.prompt_min_tokens,
                lossless=policy.lossless,
                guards=policy.guards,
                cache_safe=policy.cache_safe,
            ),
            tokenizer=counter.tokenizer,
            scorer=scorer,
            count=False,  # counted beside the upstream call (see prepare)
        )
        messages = prompt.messages
        metrics.compression_seconds.labels(entry.name).observe(time.perf_counter() - t0)
    cot_method, cot_ratio = "none", None
    if policy.controls_cot:
        cot_ratio = policy.cot_ratio
        messages, cot_method = apply_cot_ratio(
            messages,
            cot_ratio,
            delimiter=models.delimiter(entry),
            reference_tokens=policy.cot_reference_tokens,
        )
    return Prepared(
        entry,
        messages,
        request.upstream_params(),
        prompt,
        prompt_ratio,
        cot_ratio,
        cot_method,
        counter.exact,
        started,
    )


async def prepare(models: Registry, metrics: Metrics, request: ChatCompletionRequest) -> Prepared:
    """The request ready for its backend; the savings count runs on beside the call."""
    started = time.perf_counter()
    entry = models.config.models.get(request.model)
    if (
        entry is not None
        and (not entry.policy.enabled)
        and not (request.tokenskip and request.tokenskip.enabled)
    ):
        return prepare_sync(models, metrics, request, started)  # nothing heavy to offload
    p = await asyncio.to_thread(prepare_sync, models, metrics, request, started)
    if p.prompt is not None and not p.prompt.counted:
        # the savings are counted while the upstream works, not before it is called
        tokenizer = models.counter(p.entry).tokenizer
        p.counting = asyncio.ensure_future(asyncio.to_thread(p.prompt.count, tokenizer))
    return p


async def settle(p: Prepared) -> None:
    """Wait for the savings count started by :func:`prepare` (usage needs it)."""
    if p.counting is not None:
        await p.counting
        p.counting = None
