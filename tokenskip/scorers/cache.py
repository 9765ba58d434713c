"""Memoized scores: the same token ids are scored once, whatever the ratio asked for.

Scores do not depend on γ, so compressing one text at a whole grid of ratios (training
data), or the same system prompt on every request (the proxy), needs one scoring pass.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from threading import Lock

import numpy as np

from tokenskip.scorers.base import Scorer


class CachedScorer:
    """Wraps a scorer with a thread-safe LRU cache keyed by the token ids."""

    def __init__(self, scorer: Scorer, max_entries: int = 1024):
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self.scorer = scorer
        self.tokenizer = scorer.tokenizer
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._lock = Lock()

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        key = tuple(int(t) for t in token_ids)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return cached.copy()
        scores = np.asarray(self.scorer.score(key), dtype=np.float64)
        with self._lock:
            self.misses += 1
            self._cache[key] = scores
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return scores.copy()
