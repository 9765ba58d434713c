"""The local runtime's user-facing settings: typed, frozen, without torch.

A local model's ``speculative`` and ``early_exit`` blocks (the gateway's config file) are
parsed and validated here into these; the runtime calibrates them into what the engine runs
(:func:`tokenskip.runtime.speculative.speculative_settings`,
:func:`tokenskip.runtime.early_exit.early_exit_policy`). Their defaults are stated here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _fraction(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value <= 1


def _layers(value: Any, minimum: int, *, empty: bool = False) -> bool:
    return (
        isinstance(value, list)
        and (empty or bool(value))
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= minimum for i in value)
    )


@dataclass(frozen=True)
class SpeculativeConfig:
    """Self-speculative decoding for a local model (lossless)."""

    skip: tuple[int, ...] | None = None
    """Layers the draft skips; None: calibrated at load (cached beside the model)."""
    k: int = 4
    """Draft tokens per round to start with."""
    max_k: int = 8
    target: float = 0.8
    """Draft agreement the calibration aims for (only without ``skip``)."""
    lookup: bool = True
    """Draft from earlier occurrences in the prompt and output first."""

    @classmethod
    def parse(cls, raw: Any, where: str = "speculative") -> SpeculativeConfig | None:
        """``None``/``false``: off; ``true``: the defaults; else a mapping of the fields.
        ``ValueError`` naming ``where`` and the field for anything else."""
        if raw is None or raw is False:
            return None
        if raw is True:
            return cls()
        names = {"skip", "k", "max_k", "target", "lookup"}
        if not isinstance(raw, dict) or set(raw) - names:
            raise ValueError(f"{where} must be true or a mapping of skip, k, max_k, target, lookup")
        if not isinstance(raw.get("lookup", True), bool):
            raise ValueError(f"{where}.lookup must be true or false")
        skip = raw.get("skip")
        if skip is not None and not _layers(skip, 1, empty=True):
            raise ValueError(f"{where}.skip must be a list of layer indices > 0")
        for key in ("k", "max_k"):
            value = raw.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}.{key} must be an integer >= 1")
        if not _fraction(raw.get("target", cls.target)):
            raise ValueError(f"{where}.target must be in (0, 1], got {raw.get('target')!r}")
        return cls(**{**raw, "skip": None if skip is None else tuple(skip)})


@dataclass(frozen=True)
class EarlyExitConfig:
    """Adaptive early exit for a local model (lossy, opt-in)."""

    target: float = 0.95
    """Agreement with the full model an exit must reach on the calibration texts."""
    layers: tuple[int, ...] | None = None
    """Candidate exit layers; None: every few layers on the way up."""

    @classmethod
    def parse(cls, raw: Any, where: str = "early_exit") -> EarlyExitConfig | None:
        """``None``/``false``: off; ``true``: the defaults; else ``{target, layers}``."""
        if raw is None or raw is False:
            return None
        if raw is True:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"target", "layers"}:
            raise ValueError(f"{where} must be true or a mapping of target, layers")
        target = raw.get("target", cls.target)
        if not _fraction(target):
            raise ValueError(f"{where}.target must be in (0, 1], got {target!r}")
        layers = raw.get("layers")
        if layers is not None and not _layers(layers, 0):
            raise ValueError(f"{where}.layers must be a list of layer indices >= 0")
        return cls(float(target), None if layers is None else tuple(layers))
