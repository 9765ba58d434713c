"""The runner owns the model, its LoRA adapters and the device; it runs forward passes.

One batch = one adapter (or none). Sequences are left-padded so every row's next token sits
in the last column; positions are passed explicitly so padding does not shift them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenskip.ratio_prompt import delimiter_in as _delimiter_in

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str
    delimiter: str | None
    """TokenSkip delimiter from ``tokenskip.json``; None for an adapter not trained for it."""
    slot: str
    """peft's name for it: served names such as ``eval`` or ``train`` would collide with
    module attributes inside peft, so adapters get ``adapter_0``, ``adapter_1``, ..."""


class Runner:
    """Forward passes for one base model and any number of named LoRA adapters."""

    def __init__(self, model: Any, tokenizer: Any, adapters: dict[str, str] | None = None):
        self.tokenizer = tokenizer
        self.adapters: dict[str, AdapterInfo] = {}
        self.model = model
        self.base_delimiter = _delimiter_in(getattr(model, "name_or_path", None))
        """The delimiter of a merged TokenSkip model (``tokenskip.json`` beside its weights)."""
        for name, path in (adapters or {}).items():
            self.load_adapter(name, path)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 2048))
        self.num_layers = int(getattr(model.config, "num_hidden_layers", 0))
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
        delimiter = _delimiter_in(where)
        slot = f"adapter_{len(self.adapters)}"
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(where), adapter_name=slot)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(where), adapter_name=slot)
        self.model.eval()
        info = AdapterInfo(name=name, path=str(where), delimiter=delimiter, slot=slot)
        self.adapters[name] = info
        return info

    def activate(self, adapter: str | None) -> Any:
        """A context manager that runs the batch with ``adapter`` (None = base model)."""
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(self.adapters[adapter].slot)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> Batch:
        """Run the prompts; the returned batch holds each row's next-token logits."""
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (batch, width)
        ids, mask, positions = ids.to(self.device), mask.to(self.device), positions.to(self.device)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,  # only the next token's logits: not (batch, width, vocab)
        )
        return Batch(out.logits[:, -1].float(), out.past_key_values, mask, positions[:, -1] + 1)

    @torch.inference_mode()
    def prefill_part(self, ids: list[int], part: Batch | None) -> Batch:
        """One chunk of a single prompt, after ``part`` (the chunks before it; None for the
        first): the cache grows by ``ids`` and the logits are the last token's. The chunks
        of a prompt give the batch one :meth:`prefill` of the whole prompt gives."""
        from transformers.cache_utils import DynamicCache

        start = 0 if part is None else int(part.positions[0])
        cache = DynamicCache(config=self.model.config) if part is None else part.cache
        mask = torch.ones((1, start + len(ids)), dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(ids), device=self.device).view(1, -1)
        out = self.model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return Batch(out.logits[:, -1].float(), out.past_key_values, mask, positions[:, -1] + 1)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, batch: Batch) -> Batch:
        """One step for every row: tokens (batch,) → the next logits (batch, vocab)."""
        mask = torch.cat([batch.mask, batch.mask.new_ones((batch.size, 1))], dim=-1)
        out = self.model(
            input_ids=tokens.view(-1, 1).to(self.device),
            attention_mask=mask,
            position_ids=batch.positions.view(-1, 1),
            past_key_values=batch.cache,
            use_cache=True,
        )
        return Batch(out.logits[:, -1].float(), out.past_key_values, mask, batch.positions + 1)


@dataclass
class Batch:
    """Rows in flight: next-token logits, KV cache, attention mask (left-padded), positions.

    Rows leave (:meth:`keep`) and join (:meth:`merge`) between steps, which is what lets the
    engine refill a slot the moment a row finishes instead of waiting for the longest row.
    """

    logits: torch.Tensor  # (batch, vocab)
    cache: Any
    mask: torch.Tensor  # (batch, width)
    positions: torch.Tensor  # (batch,)

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def resizable(self) -> bool:
        """Whether rows can be dropped and added: a plain dynamic cache of full-attention layers."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        return type(self.cache) is DynamicCache and all(
            type(layer) is DynamicLayer for layer in self.cache.layers
        )

    def keep(self, rows: list[int]) -> Batch:
        """Only ``rows`` stay; padding columns no row uses any more are cut off the left."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask[index]
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        for layer in self.cache.layers:
            if layer.keys is not None and layer.keys.numel():
                layer.keys = layer.keys[index, :, start:]
                layer.values = layer.values[index, :, start:]
        return Batch(self.logits[index], self.cache, mask[:, start:], self.positions[index])

    def merge(self, other: Batch) -> Batch:
        """This batch's rows followed by ``other``'s, left-padded to a common width."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat(
                [_pad_left(mine.values, width), _pad_left(theirs.values, width)]
            )
        mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)])
        return Batch(
            torch.cat([self.logits, other.logits]),
            self.cache,
            mask,
            torch.cat([self.positions, other.positions]),
        )


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the sequence axis (-1 for masks, -2 for KV of shape (b, heads, seq, dim))."""
    axis = -1 if t.dim() == 2 else -2
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([t.new_zeros(shape), t], dim=axis)
