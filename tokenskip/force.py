"""Force-keep rules: units that survive compression whatever their score."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tokenskip.cot import answer_start
from tokenskip.units import Unit

MATH_OPERATORS = frozenset("+-*/=×÷%^<>≤≥±√()$€£")
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class ForceKeep:
    """Which units are kept regardless of score. The default suits math reasoning."""

    numbers: bool = True
    """Keep every word that contains a digit (``48``, ``1,234``, ``3.5``, ``x2``)."""
    operators: bool = True
    """Keep math operators and currency signs (``+ - * / = × ÷ % ^ < > ( ) $``)."""
    tokens: tuple[str, ...] = ()
    """Keep words exactly equal to one of these strings (e.g. ``("?", "not")``)."""
    answer_line: bool = True
    """Keep the final-answer part (``#### 72``, ``\\boxed{}``, "The answer is ...") intact."""

    def __post_init__(self) -> None:
        if isinstance(self.tokens, str):
            raise ValueError("ForceKeep.tokens must be a sequence of strings, not one string")
        object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))

    def mask(self, text: str, units: Sequence[Unit]) -> np.ndarray:
        """``(num_units,)`` bool: which units of ``text`` these rules force to stay."""
        forced = np.zeros(len(units), dtype=bool)
        answer_at = answer_start(text) if self.answer_line else None
        force_set = set(self.tokens)
        for i, unit in enumerate(units):
            word = text[unit.content_start : unit.end]
            if not word:
                forced[i] = True  # pure trailing whitespace carries no content to drop
            elif self.numbers and _DIGIT.search(word):
                forced[i] = True
            elif self.operators and word in MATH_OPERATORS:
                forced[i] = True
            elif word in force_set:
                forced[i] = True
            elif answer_at is not None and unit.end > answer_at:
                forced[i] = True
        return forced


MATH = ForceKeep()
"""Default rules for math reasoning: numbers, operators and the final answer stay."""
NONE = ForceKeep(numbers=False, operators=False, tokens=(), answer_line=False)
"""No force-keep at all: the ratio alone decides."""
