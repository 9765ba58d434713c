"""The scorer protocol: token ids in, one importance score per token out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from tokenskip.tokens import TextTokenizer


@runtime_checkable
class Scorer(Protocol):
    """Scores the tokens of its own tokenizer; higher means more worth keeping.

    Scores only need to be comparable within one call. The compressor maps them onto word
    units through character offsets, so a scorer's tokenizer may differ from the target
    model's.
    """

    tokenizer: TextTokenizer
    """The tokenizer whose ids :meth:`score` takes."""

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        """``(len(token_ids),)`` float scores."""
        ...
