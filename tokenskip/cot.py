"""Split a reasoning answer into the chain of thought and its final-answer part.

Recognised final-answer forms, the last one in the text wins:
GSM8K's ``#### 72``, LaTeX ``\\boxed{72}`` (its whole line), and phrases such as
"The answer is 72" or "Final answer: 72". Only the reasoning is ever compressed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MARKERS = (
    re.compile(r"^[ \t]*####", re.MULTILINE),
    re.compile(r"(?i)\b(?:the\s+)?final\s+answer\s*(?:is|:)"),
    re.compile(r"(?i)\bthe\s+(?:correct\s+)?answer\s+is\b"),
)
_BOXED = re.compile(r"\\boxed\s*\{")


@dataclass(frozen=True)
class CotParts:
    """``reasoning + separator + answer`` is the original text."""

    reasoning: str
    separator: str
    answer: str


def answer_start(text: str) -> int | None:
    """Character offset where the final-answer part begins, or None if there is none."""
    starts = [m.start() for pattern in _MARKERS for m in pattern.finditer(text)]
    boxed = [m.start() for m in _BOXED.finditer(text)]
    if boxed:
        last = boxed[-1]
        starts.append(text.rfind("\n", 0, last) + 1)
    if not starts:
        return None
    return max(starts)


def split_cot(text: str) -> CotParts:
    """Split off the final-answer part; a text without one is all reasoning."""
    start = answer_start(text)
    if start is None:
        return CotParts(reasoning=text, separator="", answer="")
    reasoning = text[:start].rstrip()
    return CotParts(
        reasoning=reasoning, separator=text[len(reasoning) : start], answer=text[start:]
    )
