"""Compression policy: per-model defaults from the config, overridden per request.

Resolution is a pure merge: request ``tokenskip`` fields win over the model's ``tokenskip``
block, which wins over the gateway defaults. ``enabled: false`` turns everything off.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from tokenskip.compress import check_ratio
from tokenskip.reasoning import DEFAULT_ANSWER_TOKENS, DEFAULT_CUE
from tokenskip.scorers import SCORER_NAMES

SERVED_SCORERS = SCORER_NAMES
MIN_RATIO = 0.01
"""The smallest keep ratio a policy may hold (the request schema's bound too)."""
COT_METHODS = ("auto", "tokenskip", "instruction", "native", "budget-forcing")
"""How the CoT knob is applied: ``auto`` picks ``tokenskip`` for a TokenSkip-tuned model,
``native`` for a reasoning model (its provider's own budget field), else ``instruction``."""
BUDGET_FLOORS = ("clamp", "error")
DEFAULT_DOCUMENT_RATIO = 0.3
"""The default budget of ranked document selection (see ``CompressionPolicy``)."""


DEFAULT_PROMPT_RATIO = 0.5
"""The default keep ratio for context words (see :attr:`CompressionPolicy.prompt_ratio`)."""


@dataclass(frozen=True)
class CompressionPolicy:
    """What tokenskip does to one request."""

    enabled: bool = True
    """Master switch; false forwards the request untouched (still accounted)."""
    prompt_ratio: float | None = DEFAULT_PROMPT_RATIO
    """Keep ratio for the words of *context*: long blocks of user messages that are no
    request (a pasted document, retrieved passages) and document markup (``<document>``...)
    in any message, meaning guards on; None drops no word from them (the lossless
    transforms still run). 0.5 by default: the lowest ratio measured on single documents
    whose accuracy loss is at most a point (none: ``reports/meaning/REACH.md``); the
    guards keep every constraint's clause, so on constraint-dense text it achieves about
    0.8."""
    document_ratio: float | None = DEFAULT_DOCUMENT_RATIO
    """Budget of a message holding several documents and a request that some serve better
    than others (retrieved passages and a question): the documents ranked against the
    request, the best kept whole, the next shortened, the rest dropped with a marker. 0.3
    by default, the lowest measured to cost no accuracy (``reports/retrieval``); 1 turns it
    off. ``prompt_ratio``, when lower, is the budget instead."""
    instruction_ratio: float | None = None
    """Keep ratio for instructions (system and developer messages); None, the default,
    leaves them byte for byte as the client sent them."""
    tool_ratio: float | None = None
    """Keep ratio for tool outputs beyond the lossless transforms; None (default): lossless
    only, never a dropped key or value."""
    lossless: bool = True
    """Run the lossless transforms (JSON minified or as a table, whitespace, repeated lines)
    on context and tool outputs."""
    guards: bool = True
    """Meaning guards on lossy compression (negations, limits, conditions, numbers, ...);
    false only for experiments."""
    cache_safe: bool = True
    """Never change content marked ``cache_control`` or anything before the last such
    breakpoint (each message already compresses the same on every turn); false compresses
    those too, for more savings than prompt caching gives."""
    prompt_min_tokens: int = 256
    """Texts and blocks shorter than this (estimated as 4 characters a token, so short
    messages are never tokenized) are never compressed."""
    cot_ratio: float | None = None
    """Keep ratio asked of the model's reasoning; None leaves the output alone."""
    scorer: str = "heuristic"
    """Prompt scorer: ``heuristic`` (no model, fastest), ``self-info`` (surprisal under a
    causal LM: the embedded model, or ``scorer_model``) or ``classifier`` (a token
    classifier directory in ``scorer_model``, e.g. one made by ``tokenskip train
    classifier``)."""
    scorer_model: str | None = None
    """The model the scorer runs: any name ``tokenskip.models.load_model`` takes (for
    ``self-info``; default the embedded model) or a classifier directory (``classifier``)."""
    cot_reference_tokens: int | None = None
    """Typical reasoning length at γ = 1, from which a budget derives (γ × it); None: 300 for
    a plain model, 4096 for a reasoning model."""
    cot_budget: int | None = None
    """Reasoning budget in tokens; when set it is the budget, whatever ``cot_ratio``."""
    cot_method: str = "auto"
    """One of :data:`COT_METHODS`."""
    reasoning_budget_floor: str = "clamp"
    """A budget below the provider's minimum (Anthropic: 1024): ``clamp`` applies the
    minimum and reports it, ``error`` refuses the request with 422."""
    force_cue: str = DEFAULT_CUE
    """Budget forcing: the text appended when the budget is reached."""
    force_answer_tokens: int = DEFAULT_ANSWER_TOKENS
    """Budget forcing: the most tokens the model may write after the cue."""

    def __post_init__(self) -> None:
        for name in (
            "prompt_ratio",
            "document_ratio",
            "instruction_ratio",
            "tool_ratio",
            "cot_ratio",
        ):
            value = getattr(self, name)
            if value is not None:
                try:
                    check_ratio(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
                if value < MIN_RATIO:
                    raise ValueError(f"{name} must be at least {MIN_RATIO}, got {value!r}")
        for name in ("lossless", "guards", "cache_safe", "enabled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.scorer not in SERVED_SCORERS:
            known = ", ".join(SERVED_SCORERS)
            raise ValueError(f"scorer must be one of {known}, got {self.scorer!r}")
        if self.scorer == "classifier" and not self.scorer_model:
            raise ValueError(
                "scorer classifier needs scorer_model: a token-classifier directory "
                "(tokenskip train classifier --out DIR)"
            )
        if self.prompt_min_tokens < 0:
            raise ValueError(f"prompt_min_tokens must be >= 0, got {self.prompt_min_tokens}")
        for name in ("cot_reference_tokens", "cot_budget"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 10**7
            ):
                raise ValueError(f"{name} must be an integer in [1, 10000000], got {value!r}")
        if self.cot_method not in COT_METHODS:
            raise ValueError(
                f"cot_method must be one of {', '.join(COT_METHODS)}, got {self.cot_method!r}"
            )
        if self.reasoning_budget_floor not in BUDGET_FLOORS:
            raise ValueError(
                f"reasoning_budget_floor must be clamp or error, got {self.reasoning_budget_floor!r}"
            )
        if not isinstance(self.force_cue, str) or not self.force_cue.strip():
            raise ValueError("force_cue must be a non-empty string")
        if (
            not isinstance(self.force_answer_tokens, int)
            or isinstance(self.force_answer_tokens, bool)
            or self.force_answer_tokens <= 0
        ):
            raise ValueError(
                f"force_answer_tokens must be a positive integer, got {self.force_answer_tokens!r}"
            )

    @classmethod
    def from_mapping(
        cls, data: dict[str, Any] | None, base: CompressionPolicy | None = None
    ) -> CompressionPolicy:
        """A policy from a config block, unknown keys refused by name."""
        base = base or cls()
        if not data:
            return base
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown tokenskip policy keys {unknown}; known: {sorted(known)}")
        return replace(base, **data)

    def merged(self, overrides: dict[str, Any]) -> CompressionPolicy:
        """This policy with a request's non-null overrides applied (itself when there are
        none: most requests, and no need to validate it again)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **changes) if changes else self

    @property
    def prompt_ratios(self) -> tuple[float | None, ...]:
        """Every ratio that drops words or documents from the prompt."""
        return (self.prompt_ratio, self.document_ratio, self.instruction_ratio, self.tool_ratio)

    @property
    def compresses_prompt(self) -> bool:
        """True when any prompt transform may run (lossless ones included)."""
        return self.enabled and (
            self.lossless or any(r is not None and r < 1.0 for r in self.prompt_ratios)
        )

    @property
    def drops_words(self) -> bool:
        """True when a lossy ratio is set, so a scorer is needed."""
        return self.enabled and any(r is not None and r < 1.0 for r in self.prompt_ratios)

    @property
    def controls_cot(self) -> bool:
        return self.enabled and (self.cot_ratio is not None or self.cot_budget is not None)


@dataclass(frozen=True)
class BatchSettings:
    """A model's transparent batching (its ``tokenskip: {batch: {...}}`` block)."""

    window_ms: float = 20.0
    """How long the first request of a group waits for others."""
    max_queries: int = 8
    """A group is sent as soon as it has this many queries."""
    min_prefix_tokens: int = 32
    """Groups whose shared prefix is shorter are not worth merging (sent as they are)."""
    answer_tokens: int = 256
    """max_tokens per query in the merged call when a request does not say."""
    max_context_tokens: int | None = None
    """The model's window for the merge check (local models: their own; remote: set it)."""
    stop_loops: bool = True
    """Stream the merged call and stop it once the answer being written loops (a small model's
    usual way to break the format); the answers not finished are then asked alone."""

    def __post_init__(self) -> None:
        if not isinstance(self.stop_loops, bool):
            raise ValueError(f"batch.stop_loops must be true or false, got {self.stop_loops!r}")
        if not 0 <= self.window_ms <= 10_000:
            raise ValueError(f"batch.window_ms must be in [0, 10000], got {self.window_ms}")
        if self.max_queries < 2:
            raise ValueError(f"batch.max_queries must be >= 2, got {self.max_queries}")
        if self.min_prefix_tokens < 0 or self.answer_tokens <= 0:
            raise ValueError("batch.min_prefix_tokens must be >= 0, answer_tokens > 0")

    @classmethod
    def from_mapping(cls, data: Any) -> BatchSettings | None:
        if data is None or data is False:
            return None
        if data is True:
            return cls()
        if not isinstance(data, dict):
            raise ValueError("batch must be true, false or a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown batch keys {unknown}; known: {sorted(known)}")
        return cls(**data)
