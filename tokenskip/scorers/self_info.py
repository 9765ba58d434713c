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
    def _surprisal(self, ids: list[int], context: list[int] | None = None) -> np.ndarray:
        """Surprisal of each of ``ids`` given the ones before it (and the BOS prefix, then
        ``context``, if given)."""
        device = next(self.model.parameters()).device
        head = self._prefix + list(context or [])
        inputs = torch.tensor([head + ids], device=device)  # (1, seq)
        logits = self.model(input_ids=inputs).logits[0, :-1].float()  # (seq - 1, vocab)
        targets = inputs[0, 1:]  # (seq - 1,)
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        if head:
            return nll[len(head) - 1 :].cpu().numpy().astype(np.float64)
        if not self._prefix:
            # The first token has no context; give it the mean so it is neither kept nor
            # dropped for that reason alone.
            first = nll.mean() if nll.numel() else torch.zeros(())
            nll = torch.cat([first.reshape(1), nll])
        return nll.cpu().numpy().astype(np.float64)

    def conditioned(self, question: str, weight: float = 1.0) -> QuestionAwareScorer:
        """This scorer made question-aware (LongLLMLingua's contrastive form): a token the
        question makes more predictable is relevant to it and is kept sooner."""
        return QuestionAwareScorer(self, question, weight)

    def score(self, token_ids: Sequence[int], context: Sequence[int] | None = None) -> np.ndarray:
        """Surprisal of each token; with ``context``, conditioned on those ids first (the
        window shrinks by the context's length so the whole input fits)."""
        ids = [int(t) for t in token_ids]
        head = [int(t) for t in context or []]
        num_tokens = len(ids)
        scores = np.empty(num_tokens, dtype=np.float64)
        if num_tokens == 0:
            return scores
        window = max(2, self.window - len(head))
        stride = max(1, min(self.stride, window // 2)) if head else self.stride
        scored_until = 0
        begin = 0
        while scored_until < num_tokens:
            end = min(begin + window, num_tokens)
            window_scores = self._surprisal(ids[begin:end], head or None)
            # Only tokens not scored yet: they have the most context in this window.
            scores[scored_until:end] = window_scores[scored_until - begin :]
            scored_until = end
            begin += stride
        return scores


class QuestionAwareScorer:
    """Self-information plus how much a question lowers it (LongLLMLingua, Jiang et al.
    2024): ``s(x) + weight * (s(x) - s(x | question))``.

    A token that the question makes easier to predict is about what the question asks, and
    moves up. The scores depend on the question, so a compression made with them is not
    the same on every turn of a conversation: the gateway does not use it for cache-safe
    traffic; the CLI (``--question``) and offline pipelines do.
    """

    def __init__(self, base: SelfInfoScorer, question: str, weight: float = 1.0):
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.base = base
        self.tokenizer = base.tokenizer
        self.question = question
        self.weight = weight
        self._question_ids = base.tokenizer.encode(f"Question: {question}\nText:").ids

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        plain = self.base.score(token_ids)
        given = self.base.score(token_ids, context=self._question_ids)
        return plain + self.weight * (plain - given)
