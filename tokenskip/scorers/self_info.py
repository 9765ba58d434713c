"""Self-information scorer: a token's surprisal under a causal LM, -log p(x_i | x_<i).

Surprising tokens carry information the model could not have guessed, so they are kept
first (Selective Context, Li et al. 2023). Texts longer than the window are scored with
overlapping sliding windows, so every token after the first window still sees at least
``window - stride`` tokens of context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tokenskip.tokens import TextTokenizer


class SelfInfoScorer:
    """Per-token surprisal in nats from ``model`` (any HF causal LM)."""

    def __init__(
        self, model: Any, tokenizer: TextTokenizer, window: int = 1024, stride: int | None = None
    ):
        max_positions = getattr(model.config, "max_position_embeddings", None) or window
        self.window = max(2, min(window, int(max_positions) - 1))
        self.stride = stride if stride is not None else self.window // 2
        if not 0 < self.stride <= self.window:
            raise ValueError(f"stride must be in (0, window={self.window}], got {self.stride}")
        self.model = model
        self.tokenizer = tokenizer
        bos = getattr(tokenizer.hf, "bos_token_id", None)
        self._prefix = [int(bos)] if bos is not None else []

    @torch.inference_mode()
    def _surprisal(self, ids: list[int]) -> np.ndarray:
        """Surprisal of each of ``ids`` given the ones before it (and the BOS prefix)."""
        device = next(self.model.parameters()).device
        inputs = torch.tensor([self._prefix + ids], device=device)  # (1, seq)
        logits = self.model(input_ids=inputs).logits[0, :-1].float()  # (seq - 1, vocab)
        targets = inputs[0, 1:]  # (seq - 1,)
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        if not self._prefix:
            # The first token has no context; give it the mean so it is neither kept nor
            # dropped for that reason alone.
            first = nll.mean() if nll.numel() else torch.zeros(())
            nll = torch.cat([first.reshape(1), nll])
        return nll.cpu().numpy().astype(np.float64)

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = [int(t) for t in token_ids]
        num_tokens = len(ids)
        scores = np.empty(num_tokens, dtype=np.float64)
        if num_tokens == 0:
            return scores
        scored_until = 0
        begin = 0
        while scored_until < num_tokens:
            end = min(begin + self.window, num_tokens)
            window_scores = self._surprisal(ids[begin:end])
            # Only tokens not scored yet: they have the most context in this window.
            scores[scored_until:end] = window_scores[scored_until - begin :]
            scored_until = end
            begin += self.stride
        return scores
