"""Reasoning budgets: the CoT knob as each provider's own reasoning control, and s1's budget
forcing for any model.

A reasoning model's length moves with its provider's native field, not with instructions.
:func:`native_fields` maps a budget in tokens (``cot_budget``, or γ × the model's typical
reasoning length) to the fields each kind of upstream takes:

========== ===================================================================================
kind       fields sent
========== ===================================================================================
openai     ``reasoning_effort`` (no token budget exists: the highest effort whose litellm
           budget, low 1024 / medium 2048 / high 4096, fits; below 1024 ``low``, or
           ``minimal`` for gpt-5 models)
anthropic  ``thinking: {type: enabled, budget_tokens}`` (at least 1024, and below
           ``max_tokens``, which Anthropic counts the thinking in)
gemini     ``thinking: {type: enabled, budget_tokens}``, which litellm maps to
           ``thinkingConfig.thinkingBudget``; Gemini 3+ takes levels, not budgets, so
           there ``reasoning_effort`` (litellm maps it to ``thinkingLevel``)
qwen3      ``chat_template_kwargs: {enable_thinking: true, thinking_budget}`` (the Qwen3
           template's hint, SGLang) and ``thinking_token_budget`` (vLLM's hard cap)
========== ===================================================================================

Budget forcing (Muennighoff et al., 2025, "s1"): when the reasoning reaches its budget and no
final answer has been written, the reasoning is stopped, an answer cue is appended, and the
model finishes with the answer in the same sequence. An answer written before the budget is
left as the model wrote it (its final-answer forms are :mod:`tokenskip.cot`'s).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from tokenskip.cot import answer_start

_BOXED_OPEN = re.compile(r"\\boxed\s*\{")
_ANSWER_MARKER = re.compile(
    r"(?i)[ \t]*(?:####|(?:the\s+)?final\s+answer\s*(?:is|:)|the\s+(?:correct\s+)?answer\s+is)"
)
_ANSWER_VALUE = re.compile(r"[\s:=*$]*[-+]?[$]?(?:\d[\d,]*(?:\.\d+)?|[^\W\d_][\w'-]*)")
"""The value after an answer marker: a number (thousands separators, decimals) or a word."""

ReasoningKind = Literal["openai", "anthropic", "gemini", "qwen3", "none"]
REASONING_KINDS: tuple[str, ...] = ("openai", "anthropic", "gemini", "qwen3", "none")
MIN_BUDGET: dict[str, int] = {"anthropic": 1024, "gemini": 128, "qwen3": 1, "openai": 1}
"""The smallest budget each kind accepts (Anthropic's documented floor; Gemini 2.5 Pro's)."""
REASONING_REFERENCE_TOKENS = 4096
"""Typical reasoning length of a reasoning model at γ = 1 when the config names none."""
EFFORT_BUDGETS = (("high", 4096), ("medium", 2048), ("low", 1024))
"""litellm's own effort -> budget table (``DEFAULT_REASONING_EFFORT_*_THINKING_BUDGET``)."""
DEFAULT_CUE = "\n\nFinal answer:"
"""Appended when the budget is reached; recognised by :mod:`tokenskip.cot` and the GSM8K
answer reader, so a forced answer is read like a written one."""
DEFAULT_ANSWER_TOKENS = 32
CLIENT_FIELDS: dict[str, tuple[str, ...]] = {
    "openai": ("reasoning_effort",),
    "anthropic": ("thinking", "reasoning_effort"),
    "gemini": ("thinking", "reasoning_effort"),
    "qwen3": ("thinking_token_budget",),
}
"""Fields by which a client sets the reasoning itself; a request that has one is left alone."""

_GEMINI_3 = re.compile(r"gemini-(\d+)")
_OPENAI_REASONER = re.compile(r"^(o1(?!-mini)(?!-preview)|o3|o4|gpt-5|gpt-oss)")
"""OpenAI models that take ``reasoning_effort`` (o1-mini and o1-preview do not)."""
_CLAUDE_THINKING = re.compile(r"claude-(3-7|(opus|sonnet|haiku)-4|4)")
"""Claude models with extended thinking: 3.7 Sonnet and the 4 family onwards."""
_GEMINI_THINKING = re.compile(r"gemini-(2\.5|[3-9])")
"""Gemini models with a thinking budget or level: 2.5 and later."""


class BudgetError(ValueError):
    """A budget the upstream cannot take (the message names what would be valid)."""


def infer_kind(litellm_model: str | None) -> str:
    """The reasoning kind of a deployment, from its litellm model string where that is
    unambiguous (``anthropic/claude-...``, ``gemini/...``, ``openai/o3``, a Qwen3 name);
    ``none`` otherwise (the config's ``reasoning`` key says it for anything else)."""
    if not litellm_model:
        return "none"
    provider, _, name = litellm_model.partition("/")
    if not name:
        provider, name = "", provider
    low = name.lower()
    anthropic_host = provider in ("anthropic", "bedrock", "vertex_ai") or low.startswith("claude")
    if anthropic_host and _CLAUDE_THINKING.search(low):
        return "anthropic"
    gemini_host = provider in ("gemini", "vertex_ai") or low.startswith("gemini")
    if gemini_host and _GEMINI_THINKING.search(low):
        return "gemini"
    if "qwen3" in low.replace("-", "").replace("_", "") or "qwq" in low:
        return "qwen3"
    if provider in ("openai", "azure", "") and _OPENAI_REASONER.match(low.rsplit("/", 1)[-1]):
        return "openai"
    return "none"


def budget_for(ratio: float | None, budget: int | None, reference_tokens: int) -> int | None:
    """The reasoning budget in tokens: ``budget`` when given, else γ × the reference."""
    if budget is not None:
        return budget
    if ratio is None:
        return None
    return max(1, round(ratio * reference_tokens))


def effort_for(budget: int, model: str = "") -> str:
    """OpenAI's ``reasoning_effort`` for a token budget (see the module table)."""
    for effort, tokens in EFFORT_BUDGETS:
        if budget >= tokens:
            return effort
    name = model.rsplit("/", 1)[-1].lower()
    return "minimal" if name.startswith("gpt-5") else "low"


def effort_budget(effort: str, budget: int) -> int:
    """The budget an OpenAI effort level stands for (litellm's table; ``minimal``: the
    budget asked)."""
    return dict(EFFORT_BUDGETS).get(effort, budget)


def applied_budget(kind: str, budget: int, *, clamp: bool, max_tokens: int | None) -> int:
    """``budget`` as the upstream can take it: raised to the kind's minimum (or refused, with
    ``clamp`` false) and, for Anthropic, kept below ``max_tokens``."""
    floor = MIN_BUDGET.get(kind, 1)
    if budget < floor:
        if not clamp:
            raise BudgetError(
                f"cot_budget {budget} is below {kind}'s minimum reasoning budget of {floor} "
                f"tokens; ask for at least {floor} (or set reasoning_budget_floor: clamp)"
            )
        budget = floor
    if kind == "anthropic" and max_tokens is not None and budget >= max_tokens:
        if max_tokens - 1 < floor or not clamp:
            raise BudgetError(
                f"a thinking budget of {budget} tokens needs max_tokens above it (Anthropic "
                f"counts thinking in max_tokens, got {max_tokens}); raise max_tokens above "
                f"{budget}"
            )
        budget = max_tokens - 1
    return budget


def native_fields(kind: str, budget: int, model: str = "") -> dict[str, Any]:
    """The request fields that hold a reasoning model of ``kind`` to ``budget`` tokens."""
    if kind == "openai":
        return {"reasoning_effort": effort_for(budget, model)}
    if kind == "anthropic":
        return {"thinking": {"type": "enabled", "budget_tokens": budget}}
    if kind == "gemini":
        version = _GEMINI_3.search(model.lower())
        if version and int(version.group(1)) >= 3:
            return {"reasoning_effort": effort_for(budget, model)}
        return {"thinking": {"type": "enabled", "budget_tokens": budget}}
    if kind == "qwen3":
        return {
            "chat_template_kwargs": {"enable_thinking": True, "thinking_budget": budget},
            "thinking_token_budget": budget,
        }
    raise ValueError(f"unknown reasoning kind {kind!r}; known: {', '.join(REASONING_KINDS)}")


def client_controls(kind: str, params: dict[str, Any]) -> str | None:
    """The reasoning field a client set itself for ``kind``, if any (it is then kept)."""
    for name in CLIENT_FIELDS.get(kind, ()):
        if params.get(name) is not None:
            return name
    extra = params.get("extra_body")
    extra = extra if isinstance(extra, dict) else {}
    for name in CLIENT_FIELDS.get(kind, ()):
        if extra.get(name) is not None:
            return name
    if kind == "qwen3":
        for kwargs in (params.get("chat_template_kwargs"), extra.get("chat_template_kwargs")):
            if isinstance(kwargs, dict):
                for key in ("thinking_budget", "enable_thinking"):
                    if key in kwargs:
                        return f"chat_template_kwargs.{key}"
            elif kwargs is not None:
                return "chat_template_kwargs"  # not a mapping: the client's, left alone
    return None


@dataclass(frozen=True)
class BudgetForcing:
    """s1 budget forcing: stop the reasoning at ``budget`` tokens and cue the answer."""

    budget: int
    """Reasoning tokens before the cue."""
    cue: str = DEFAULT_CUE
    answer_tokens: int = DEFAULT_ANSWER_TOKENS
    """Most tokens the model may write after the cue."""

    def __post_init__(self) -> None:
        if not isinstance(self.budget, int) or isinstance(self.budget, bool) or self.budget < 1:
            raise ValueError(f"budget must be a positive integer, got {self.budget!r}")
        if not isinstance(self.answer_tokens, int) or self.answer_tokens < 1:
            raise ValueError(
                f"answer_tokens must be a positive integer, got {self.answer_tokens!r}"
            )
        if not isinstance(self.cue, str) or not self.cue.strip():
            raise ValueError("the answer cue must be a non-empty string")

    @staticmethod
    def answered(text: str) -> bool:
        """True when ``text``, cut at the budget, already holds a whole final answer
        (:mod:`tokenskip.cot`'s forms): a marker with a value after it that something else
        follows, or a closed ``\\boxed{...}``. An answer cut off mid-way ("The answer is 4"
        where 42 was coming, "#### 1,2", an open ``\\boxed{``) is no answer: the cue goes in."""
        start = answer_start(text)
        if start is None:
            return False
        part = text[start:]
        boxed = _BOXED_OPEN.search(part)
        if boxed is not None:
            close = part.find("}", boxed.end())
            return close > boxed.end() and bool(part[boxed.end() : close].strip())
        marker = _ANSWER_MARKER.match(part)
        value = _ANSWER_VALUE.match(part, marker.end() if marker else 0)
        if value is None:
            return False
        rest = part[value.end() :]  # what follows the value: "42." may be "42.5" cut short
        return bool(rest) and (rest[0] not in ".," or len(rest) > 1)
