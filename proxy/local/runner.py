"""The runner owns the model, its LoRA adapters and the device; it runs forward passes.

One batch = one adapter (or none). Sequences are left-padded so every row's next token sits
in the last column; positions are passed explicitly so padding does not shift them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

ADAPTER_META = "tokenskip.json"


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str
    delimiter: str | None
    """TokenSkip delimiter from ``tokenskip.json``; None for an adapter not trained for it."""


class Runner:
    """Forward passes for one base model and any number of named LoRA adapters."""

    def __init__(self, model: Any, tokenizer: Any, adapters: dict[str, str] | None = None):
        self.tokenizer = tokenizer
        self.adapters: dict[str, AdapterInfo] = {}
        self.model = model
        for name, path in (adapters or {}).items():
            self.load_adapter(name, path)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 2048))
        ids = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = frozenset(int(i) for i in ids if i is not None)
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        )

    def load_adapter(self, name: str, path: str) -> AdapterInfo:
        from peft import PeftModel

        where = Path(path)
        if not (where / "adapter_config.json").is_file():
            raise ValueError(f"adapter '{name}': {path} has no adapter_config.json")
        meta_file = where / ADAPTER_META
        delimiter = (
            json.loads(meta_file.read_text()).get("delimiter") if meta_file.is_file() else None
        )
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(where), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(where), adapter_name=name)
        self.model.eval()
        info = AdapterInfo(name=name, path=str(where), delimiter=delimiter)
        self.adapters[name] = info
        return info

    def activate(self, adapter: str | None) -> Any:
        """A context manager that runs the batch with ``adapter`` (None = base model)."""
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def prefill(
        self, prompts: list[list[int]]
    ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """Run the prompts; returns last logits (batch, vocab), cache, mask, next positions."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, width)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        return out.logits[:, -1].float(), out.past_key_values, mask, positions[:, -1] + 1

    @torch.inference_mode()
    def decode(
        self, tokens: torch.Tensor, cache: Any, mask: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """One step for every row: tokens (batch,) → logits (batch, vocab)."""
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)  # (batch, width + 1)
        out = self.model(
            input_ids=tokens.view(-1, 1).to(self.device),
            attention_mask=mask,
            position_ids=positions.view(-1, 1),
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits[:, -1].float(), out.past_key_values, mask, positions + 1
