"""Token-classifier scorer in the LLMLingua-2 form (Pan et al. 2024).

An encoder with a token-classification head labels each token keep/drop; the probability of
the "keep" label is the score. LLMLingua-2's public checkpoints (e.g.
``microsoft/llmlingua-2-xlm-roberta-large-meetingbank``) load by name for users who have hub
access; nothing here downloads anything unless asked to by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tokenskip.tokens import TextTokenizer


class TokenClassifierScorer:
    """``softmax(logits)[keep_label]`` per token, in windows of the encoder's length."""

    def __init__(
        self, model: Any, tokenizer: TextTokenizer, keep_label: int = 1, window: int = 512
    ):
        num_labels = int(getattr(model.config, "num_labels", 2))
        if not 0 <= keep_label < num_labels:
            raise ValueError(
                f"keep_label {keep_label} is not a label of this model (it has {num_labels})"
            )
        max_positions = getattr(model.config, "max_position_embeddings", None) or window
        hf = tokenizer.hf
        self._cls = [hf.cls_token_id] if getattr(hf, "cls_token_id", None) is not None else []
        self._sep = [hf.sep_token_id] if getattr(hf, "sep_token_id", None) is not None else []
        # Leave room for special tokens (and RoBERTa's padding offset of 2 positions).
        self.window = max(1, min(window, int(max_positions) - 2) - len(self._cls) - len(self._sep))
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.keep_label = keep_label

    @torch.inference_mode()
    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = [int(t) for t in token_ids]
        device = next(self.model.parameters()).device
        out = []
        for begin in range(0, len(ids), self.window):
            chunk = self._cls + ids[begin : begin + self.window] + self._sep
            inputs = torch.tensor([chunk], device=device)  # (1, seq)
            logits = self.model(input_ids=inputs).logits[0].float()  # (seq, num_labels)
            keep = logits.softmax(-1)[:, self.keep_label]
            out.append(keep[len(self._cls) : len(chunk) - len(self._sep)].cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.empty(0, dtype=np.float64)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, keep_label: int = 1, allow_download: bool = False, **kwargs: Any
    ) -> TokenClassifierScorer:
        """Load an HF token-classification model and its fast tokenizer."""
        from tokenskip.models import load_token_classifier

        model, hf_tokenizer = load_token_classifier(name_or_path, allow_download=allow_download)
        return cls(
            model, TextTokenizer(hf_tokenizer, name=name_or_path), keep_label=keep_label, **kwargs
        )
