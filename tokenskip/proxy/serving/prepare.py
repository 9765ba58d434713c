"""A chat request made ready for its backend: policy, prompt compression, the CoT knob.

:func:`prepare` validates what the models need (content present, no fields a local model
cannot honour), merges the model's policy with the request's ``tokenskip`` overrides,
compresses the prompt in a worker thread (never on the event loop), and returns the request's
immutable :class:`Plan`; its savings are counted beside the upstream call by the plan's
:class:`~tokenskip.proxy.serving.exchange.Exchange`. Pass-through requests are not tokenized at all.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any

from tokenskip.cot_control import apply_cot_ratio
from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.infra.backends.local import FORCING_PARAM
from tokenskip.proxy.infra.config import ModelEntry
from tokenskip.proxy.infra.metrics import Metrics
from tokenskip.proxy.infra.policy import CompressionPolicy
from tokenskip.proxy.protocol import ChatCompletionRequest, completion_id
from tokenskip.proxy.serving.prompt import PromptCompression, PromptSettings, compress_messages
from tokenskip.proxy.serving.registry import Registry
from tokenskip.reasoning import (
    REASONING_REFERENCE_TOKENS,
    BudgetError,
    BudgetForcing,
    applied_budget,
    budget_for,
    client_controls,
    native_fields,
)
from tokenskip.tokens import TextTokenizer, chat_prompt_tokens

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
LOCAL_TOOL_FIELDS = frozenset(("tools", "tool_choice", "parallel_tool_calls"))
"""The fields a local model takes when its chat template defines tool calls."""


@dataclass(frozen=True)
class Plan:
    """A request after policy, compression and the CoT knob: what to send, to which model,
    and what was done to it. Never changed once made; what happens when it is sent lives in
    its :class:`~tokenskip.proxy.serving.exchange.Exchange`."""

    entry: ModelEntry
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    prompt: PromptCompression | None
    """The prompt compression (its savings are counted beside the upstream call)."""
    prompt_ratio: float | None
    cot_ratio: float | None
    cot_method: str
    exact: bool
    """Whether the model's own tokenizer counts the gateway's estimates."""
    started: float
    request_id: str = field(default_factory=completion_id)
    batch_tokens_saved: int = 0
    """Input tokens a merged multi-query call saved against one call per query."""
    cot: CotPlan | None = None
    """How the CoT knob was applied (None: it was not asked for)."""
    params_before_cot: dict[str, Any] = field(default_factory=dict)
    """The client's parameters before the CoT knob set native reasoning fields (for a
    fallback to a model of another kind)."""
    prefix_bytes: tuple[int, int] | None = None
    """A compressed request: (bytes of its prefix identical to an earlier request's, bytes
    of all its messages); None when compression changed nothing."""
    document_ratio: float | None = None
    """The budget of ranked document selection the policy set (None: prompt untouched)."""


@dataclass
class CotPlan:
    """The CoT knob as applied to one request."""

    requested: str
    """The method asked for (policy or request), ``auto`` resolved."""
    method: str
    """The method that ran (differs from ``requested`` after a fallback)."""
    budget: int | None
    """Reasoning budget in tokens as sent (after any clamping); None for the TokenSkip
    format, which takes a ratio."""
    budget_asked: int | None
    reasoning: str
    """The model's reasoning kind."""
    fields: list[str] = field(default_factory=list)
    """Request fields the knob set (native controls)."""
    note: str | None = None
    """Why the method or budget differs from what was asked, if it does."""
    forcing: BudgetForcing | None = None
    reference_tokens: int = 300

    @property
    def effective_budget(self) -> int:
        """The budget the model is really held to: the applied one, or for OpenAI's effort
        levels the budget litellm gives that effort."""
        budget = self.budget or self.reference_tokens
        if self.method == "native" and self.reasoning == "openai":
            from tokenskip.reasoning import effort_budget, effort_for

            return effort_budget(effort_for(budget), budget)
        return budget

    def info(self, forced_at: int | None, note: str | None = None) -> dict[str, Any]:
        """The knob's part of the ``tokenskip`` object; ``note`` is what answering found
        (it replaces the plan's own)."""
        note = note or self.note
        out: dict[str, Any] = {
            "cot_budget": self.budget,
            "reasoning": self.reasoning,
        }
        if self.requested != self.method:
            out["cot_method_requested"] = self.requested
        if self.budget_asked is not None and self.budget_asked != self.budget:
            out["cot_budget_requested"] = self.budget_asked
        if self.fields:
            out["cot_fields"] = list(self.fields)
        if note:
            out["cot_note"] = note
        if self.forcing is not None:
            out["cot_forced"] = forced_at is not None
        return out


def plan_cot(
    models: Registry,
    entry: ModelEntry,
    policy: CompressionPolicy,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    *,
    stream: bool = False,
) -> tuple[list[dict[str, Any]], CotPlan]:
    """Apply the CoT knob: messages (and ``params``, changed in place) as the backend gets
    them, and what was done. Bad combinations are a 400/422 naming the field."""
    kind = entry.reasoning
    delimiter = models.delimiter(entry)
    requested = policy.cot_method
    if requested == "auto":
        requested = "tokenskip" if delimiter else ("native" if kind != "none" else "instruction")
    reference = policy.cot_reference_tokens or (
        REASONING_REFERENCE_TOKENS if kind != "none" else 300
    )
    budget = budget_for(policy.cot_ratio, policy.cot_budget, reference)
    assert budget is not None  # controls_cot: a ratio or a budget is set
    ratio = policy.cot_ratio if policy.cot_ratio is not None else min(1.0, budget / reference)
    plan = CotPlan(
        requested, requested, budget, policy.cot_budget, kind, reference_tokens=reference
    )
    if requested == "tokenskip":
        if delimiter is None:
            raise ProxyError(
                400,
                f"cot_method tokenskip needs a TokenSkip-tuned model; '{entry.name}' is not "
                "one (no adapter with a tokenskip.json, no delimiter in its config)",
                param="tokenskip.cot_method",
                code="unsupported_cot_method",
            )
        messages, plan.method = apply_cot_ratio(
            messages, ratio, delimiter=delimiter, reference_tokens=reference
        )
        plan.budget = None
        return messages, plan
    if requested == "native":
        if kind == "none":
            raise ProxyError(
                400,
                f"'{entry.name}' has no native reasoning control (its tokenskip.reasoning is "
                "none); use cot_method instruction or budget-forcing, or name its kind in the "
                "config (openai, anthropic, gemini, qwen3)",
                param="tokenskip.cot_method",
                code="unsupported_cot_method",
            )
        own = client_controls(kind, params)
        if own is not None:
            plan.method, plan.budget = "client", None
            plan.note = f"the request sets {own} itself; it is forwarded unchanged"
            return messages, plan
        asked = params.get("max_tokens") or params.get("max_completion_tokens")
        try:
            applied = applied_budget(
                kind,
                budget,
                clamp=policy.reasoning_budget_floor == "clamp",
                max_tokens=asked if isinstance(asked, int) else None,
            )
        except BudgetError as exc:
            raise ProxyError(
                422, str(exc), param="tokenskip.cot_budget", code="invalid_cot_budget"
            ) from None
        if applied != budget:
            plan.note = f"budget {budget} is outside what {kind} takes; {applied} was applied"
            plan.budget_asked = budget
        plan.budget = applied
        model = str((entry.litellm_params or {}).get("model", ""))
        fields_ = native_fields(kind, applied, model)
        if kind == "anthropic" and asked is None:
            params["max_tokens"] = applied + 4096  # Anthropic counts thinking in max_tokens
            plan.fields.append("max_tokens")
        for name, value in fields_.items():
            target = params
            if entry.backend == "litellm" and kind == "qwen3" and name not in params:
                target = params.setdefault("extra_body", {})  # litellm forwards only these
            if name == "chat_template_kwargs":
                value = {**(target.get(name) or {}), **value}
            target[name] = value
            plan.fields.append(name)
        return messages, plan
    if requested == "budget-forcing":
        forcing = BudgetForcing(budget, policy.force_cue, policy.force_answer_tokens)
        if entry.is_local:
            params[FORCING_PARAM] = forcing
            plan.forcing = forcing
            return messages, plan
        if entry.continue_final == "vllm" and not stream:
            plan.forcing = forcing
            return messages, plan
        plan.note = (
            "a remote model's budget forcing needs two calls and runs for non-streamed "
            "requests only, so the instruction method ran instead"
            if entry.continue_final
            else (
                f"'{entry.name}' cannot continue a partial assistant message (set "
                "tokenskip.continue_final: vllm for a vLLM or SGLang upstream), so the "
                "instruction method ran instead"
            )
        )
    messages, plan.method = apply_cot_ratio(
        messages, ratio, delimiter=None, reference_tokens=reference
    )
    if plan.method == "none":
        plan.budget = None
    return messages, plan


def _check(models: Registry, entry: ModelEntry, request: ChatCompletionRequest) -> None:
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
        tools = models.local.supports_tools(entry.name)
        unsupported = [
            k
            for k in LOCAL_UNSUPPORTED
            if params.get(k) not in (None, False, [], "none")
            and not (k == "response_format" and (params[k] or {}).get("type") == "text")
            and not (tools and k in LOCAL_TOOL_FIELDS)
        ]
        if unsupported:
            reason = (
                "its chat template defines no tool calls"
                if unsupported[0] in LOCAL_TOOL_FIELDS
                else "it does not return log-probabilities or follow a response format"
            )
            raise ProxyError(
                400,
                f"the local model '{entry.name}' cannot take {', '.join(unsupported)} "
                f"({reason}); route the request to a model that does, or leave these "
                "fields out",
                param=unsupported[0],
                code="unsupported_parameter",
            )
        if tools:
            _check_tools(params)


def _check_tools(params: dict[str, Any]) -> None:
    """A local model's tools as OpenAI validates them: functions only, and a ``tool_choice``
    that names one of them."""
    offered = params.get("tools") or []
    for i, tool in enumerate(offered):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise ProxyError(
                400,
                f"tools[{i}]: a local model takes tools of type 'function' only",
                param=f"tools[{i}].type",
                code="invalid_value",
            )
        if not isinstance(tool.get("function"), dict) or not tool["function"].get("name"):
            raise ProxyError(
                400,
                f"tools[{i}].function.name is required",
                param=f"tools[{i}].function.name",
                code="missing_required_parameter",
            )
    choice = params.get("tool_choice")
    if choice is None:
        return
    if not offered:
        raise ProxyError(
            400,
            "tool_choice is only allowed when tools are specified",
            param="tool_choice",
            code="invalid_value",
        )
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise ProxyError(
                400,
                f"tool_choice must be 'none', 'auto', 'required' or a function, got {choice!r}",
                param="tool_choice",
                code="invalid_value",
            )
        return
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not name:
        raise ProxyError(
            400,
            'tool_choice must name a function: {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
            code="invalid_value",
        )
    if name not in {t["function"]["name"] for t in offered}:
        raise ProxyError(
            400,
            f"tool_choice names the function {name!r}, which is not among the tools",
            param="tool_choice",
            code="invalid_value",
        )


def merged_policy(entry: ModelEntry, overrides: dict[str, Any]) -> CompressionPolicy:
    """The model's policy with a request's ``tokenskip`` overrides; a 400 naming them if the
    combination is invalid."""
    try:
        return entry.policy.merged(overrides)
    except ValueError as exc:
        raise ProxyError(400, f"tokenskip: {exc}", param="tokenskip") from None


def prompt_tokens(tokenizer: TextTokenizer, plan: Plan) -> int:
    """The plan's prompt as the model counts it: its chat template over the messages as
    sent (a local model's ``usage.prompt_tokens`` exactly, an estimate for another), and its
    tool definitions."""
    total = chat_prompt_tokens(tokenizer, plan.messages)
    if plan.params.get("tools"):
        total += tokenizer.count(json.dumps(plan.params["tools"]))
    return total


def prompt_settings(policy: CompressionPolicy) -> PromptSettings:
    """The fields of ``policy`` prompt compression reads."""
    return PromptSettings(
        context_ratio=policy.prompt_ratio,
        document_ratio=policy.document_ratio,
        instruction_ratio=policy.instruction_ratio,
        tool_ratio=policy.tool_ratio,
        min_tokens=policy.prompt_min_tokens,
        lossless=policy.lossless,
        guards=policy.guards,
        cache_safe=policy.cache_safe,
    )


def compress_prompt(
    models: Registry,
    metrics: Metrics,
    entry: ModelEntry,
    policy: CompressionPolicy,
    messages: list[dict[str, Any]],
) -> PromptCompression | None:
    """The messages compressed by the policy (counted later, beside the upstream call), or
    None when the policy compresses no prompt."""
    if not policy.compresses_prompt:
        return None
    t0 = time.perf_counter()
    counter = models.counter(entry)
    scorer = (
        models.scorer(policy.scorer, counter, policy.scorer_model) if policy.drops_words else None
    )
    prompt = compress_messages(
        messages,
        prompt_settings(policy),
        tokenizer=counter.tokenizer,
        scorer=scorer,
        count=False,  # counted beside the upstream call (see exchange.Exchange)
        memo=models.memo,  # a text resent on a later turn is not compressed again
    )
    metrics.compression_seconds.labels(entry.name).observe(time.perf_counter() - t0)
    return prompt


def prepare_sync(
    models: Registry, metrics: Metrics, request: ChatCompletionRequest, started: float
) -> Plan:
    """Everything :func:`prepare` does but start the count (runs in a worker thread)."""
    entry = models.entry(request.model)
    _check(models, entry, request)
    overrides = (
        request.tokenskip.model_dump(exclude_none=True, exclude={"batch"})
        if request.tokenskip
        else {}
    )
    policy = merged_policy(entry, overrides)
    messages = [m.as_dict() for m in request.messages]
    counter = models.counter(entry)
    prompt = compress_prompt(models, metrics, entry, policy, messages)
    prompt_ratio = policy.prompt_ratio if policy.compresses_prompt else None
    if prompt is not None:
        messages = prompt.messages
    params = request.upstream_params()
    before_cot = copy.deepcopy(params) if policy.controls_cot else params
    if overrides.get("cot_method") and policy.enabled and not policy.controls_cot:
        raise ProxyError(
            400,
            "tokenskip.cot_method needs a budget: give tokenskip.cot_ratio or "
            "tokenskip.cot_budget (or set one in the model's config)",
            param="tokenskip.cot_method",
            code="missing_cot_budget",
        )
    cot_method, cot_ratio, cot = "none", None, None
    if policy.controls_cot:
        messages, cot = plan_cot(
            models, entry, policy, messages, params, stream=bool(request.stream)
        )
        cot_method = cot.method
        cot_ratio = (
            round(min(1.0, cot.effective_budget / cot.reference_tokens), 4)
            if cot.budget is not None
            else policy.cot_ratio
        )
    prefix = (
        models.prefixes.observe(entry.name, messages)
        if prompt is not None and prompt.num_compressed
        else None
    )
    return Plan(
        entry,
        messages,
        params,
        prompt,
        prompt_ratio,
        cot_ratio,
        cot_method,
        counter.exact,
        started,
        cot=cot,
        params_before_cot=before_cot,
        prefix_bytes=prefix,
        document_ratio=policy.document_ratio if policy.compresses_prompt else None,
    )


async def prepare(models: Registry, metrics: Metrics, request: ChatCompletionRequest) -> Plan:
    """The request's plan; compression runs in a worker thread, never on the event loop."""
    started = time.perf_counter()
    entry = models.config.models.get(request.model)
    if (
        entry is not None
        and (not entry.policy.enabled)
        and not (request.tokenskip and request.tokenskip.enabled)
    ):
        return prepare_sync(models, metrics, request, started)  # nothing heavy to offload
    return await asyncio.to_thread(prepare_sync, models, metrics, request, started)
