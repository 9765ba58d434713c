"""Force-keep rules: units that survive compression whatever their score."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tokenskip.cot import answer_start
from tokenskip.units import Unit, as_units, span_mask

MATH_OPERATORS = frozenset("+-*/=×÷%^<>≤≥±√()$€£")
_DIGITS = re.compile(r"\d+")


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
        units = as_units(units)
        # pure trailing whitespace carries no content to drop
        forced = units.content_start >= units.end
        if self.numbers:
            digits = [(m.start(), m.end()) for m in _DIGITS.finditer(text)]
            forced |= span_mask(units, digits)
        if self.operators or self.tokens:
            words = units.words(text)
            keep = (MATH_OPERATORS if self.operators else frozenset()) | set(self.tokens)
            forced |= np.fromiter((w in keep for w in words), dtype=bool, count=len(words))
        if self.answer_line:
            answer_at = answer_start(text)
            if answer_at is not None:
                forced |= units.end > answer_at
        return forced


MATH = ForceKeep()
"""Default rules for math reasoning: numbers, operators and the final answer stay."""
NONE = ForceKeep(numbers=False, operators=False, tokens=(), answer_line=False)
"""No force-keep at all: the ratio alone decides."""
