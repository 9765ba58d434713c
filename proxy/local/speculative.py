"""Lossless self-speculative decoding with layer skipping (after SWIFT and LayerSkip).

A draft of ``k`` tokens comes from the model itself with some decoder layers skipped; one
pass of the full model over ``[last token] + draft`` verifies them; the longest agreeing
prefix is kept, plus the full model's own next token. Under greedy decoding the output is
the full model's, token for token: a draft token is kept only where the full model picks it.

The draft writes its KV entries into the same cache (kept layers only); they are cut away
before the verification pass, which writes the full model's entries; what follows the kept
prefix is cut again. ``k`` adapts: one more after a fully accepted draft, one fewer after a
rejection. The skip set comes from :func:`calibrate`, a greedy search on sample text for the
layers whose removal changes the model's next-token choice least.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class SpeculativeSettings:
    skip: tuple[int, ...]
    """Decoder layers the draft skips (never the first or the last)."""
    k: int = 4
    """Initial draft length; adapts within [1, max_k]."""
    max_k: int = 8


@dataclass
class SpeculativeStats:
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    layers_run: int = 0
    tokens: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["acceptance"] = round(self.acceptance, 4)
        d["layers_per_token"] = round(self.layers_run / self.tokens, 3) if self.tokens else None
        return d


def decoder_layers(model: Any) -> tuple[Any, str]:
    """The module holding ``layers`` (a ModuleList of decoder layers) and the attribute name."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or not isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
        raise ValueError("layer skipping needs a decoder with a `layers` ModuleList (Llama family)")
    return decoder, "layers"


@contextlib.contextmanager
def skipping(model: Any, skip: Sequence[int]) -> Iterator[None]:
    """Run ``model`` without the layers in ``skip`` (each kept layer still writes to its own
    cache slot: attention modules carry their layer index)."""
    if not skip:
        yield
        return
    decoder, name = decoder_layers(model)
    full = getattr(decoder, name)
    kept = torch.nn.ModuleList([layer for i, layer in enumerate(full) if i not in set(skip)])
    setattr(decoder, name, kept)
    try:
        yield
    finally:
        setattr(decoder, name, full)


def _crop(cache: Any, length: int) -> None:
    for layer in cache.layers:
        if layer.keys is not None and layer.keys.numel() and layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


@torch.inference_mode()
def speculate(
    model: Any,
    token: int,
    cache: Any,
    mask: torch.Tensor,
    position: int,
    skip: Sequence[int],
    k: int,
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """One round for a single sequence whose cache holds everything before ``token``.

    Returns the accepted draft tokens (they follow ``token``), the full model's logits for
    the token after them, and the attention mask now covering the cache.
    """
    device = mask.device
    start = mask.shape[1]  # cache length, padding included
    drafts: list[int] = []
    x = torch.tensor([[token]], device=device)
    draft_mask = mask
    with skipping(model, skip):
        for j in range(k):
            draft_mask = torch.cat([draft_mask, draft_mask.new_ones((1, 1))], dim=-1)
            out = model(
                input_ids=x,
                attention_mask=draft_mask,
                position_ids=torch.tensor([[position + j]], device=device),
                past_key_values=cache,
                use_cache=True,
            )
            d = int(out.logits[0, -1].argmax())
            drafts.append(d)
            x = torch.tensor([[d]], device=device)
    _crop(cache, start)
    ids = torch.tensor([[token, *drafts]], device=device)
    verify_mask = torch.cat([mask, mask.new_ones((1, k + 1))], dim=-1)
    out = model(
        input_ids=ids,
        attention_mask=verify_mask,
        position_ids=torch.arange(position, position + k + 1, device=device).view(1, -1),
        past_key_values=cache,
        use_cache=True,
    )
    choices = out.logits[0].argmax(-1).tolist()
    m = 0
    while m < k and drafts[m] == choices[m]:
        m += 1
    _crop(cache, start + m + 1)
    new_mask = torch.cat([mask, mask.new_ones((1, m + 1))], dim=-1)
    return drafts[:m], out.logits[0, m].float().view(1, -1), new_mask


# ---------------------------------------------------------------------------- calibration


@torch.inference_mode()
def agreement(model: Any, samples: Sequence[Sequence[int]], skip: Sequence[int]) -> float:
    """Share of positions where the skipping model's next-token choice is the full model's
    (teacher-forced on ``samples``)."""
    same = total = 0
    device = next(model.parameters()).device
    for ids in samples:
        x = torch.tensor([list(ids)], device=device)
        full = model(input_ids=x).logits[0].argmax(-1)
        with skipping(model, skip):
            part = model(input_ids=x).logits[0].argmax(-1)
        same += int((full == part).sum())
        total += len(ids)
    return same / total if total else 0.0


@dataclass
class Calibration:
    skip: list[int]
    agreement: float
    num_layers: int
    target: float
    trace: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls(**json.loads(Path(path).read_text()))


def calibrate(
    model: Any,
    samples: Sequence[Sequence[int]],
    *,
    target: float = 0.8,
    max_fraction: float = 0.5,
) -> Calibration:
    """Greedily add the layer whose removal keeps agreement highest, while it stays at or
    above ``target`` and at most ``max_fraction`` of the layers are skipped."""
    decoder, name = decoder_layers(model)
    n = len(getattr(decoder, name))
    candidates = list(range(1, n - 1))
    skip: list[int] = []
    best_agreement = 1.0
    trace = []
    while candidates and len(skip) < int(max_fraction * n):
        scored = [(agreement(model, samples, skip + [c]), c) for c in candidates]
        score, layer = max(scored)
        trace.append({"add": layer, "agreement": round(score, 4)})
        if score < target:
            break
        skip.append(layer)
        candidates.remove(layer)
        best_agreement = score
    return Calibration(sorted(skip), round(best_agreement, 4), n, target, trace)


CALIBRATION_TEXTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether.",
    "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes of babysitting. "
    "She earns 12/60 = $0.2 per minute, so she earned 0.2 x 50 = $10.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Rome is "
    "the capital of Italy. Water boils at 100 degrees Celsius at sea level.",
)


def safe_name(name: str) -> str:
    """A model name as a file name (calibrations are cached per model)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def speculative_settings(name: str, loaded: Any, raw: dict[str, Any]) -> SpeculativeSettings:
    """Settings from a model's ``local.speculative`` block; without a ``skip`` list the skip
    set is calibrated once and cached under the model cache directory."""
    from tokenskip.models import cache_dir

    skip = raw.get("skip")
    if skip is None:
        target = float(raw.get("target", 0.8))
        path = cache_dir() / "speculative" / f"{safe_name(name)}-{target:g}.json"
        if path.is_file():
            skip = Calibration.load(path).skip
        else:
            samples = [loaded.tokenizer.encode(t) for t in CALIBRATION_TEXTS]
            cal = calibrate(loaded.model, samples, target=target)
            cal.save(path)
            log.info("%s: calibrated skip set %s (agreement %.3f)", name, cal.skip, cal.agreement)
            skip = cal.skip
    return SpeculativeSettings(
        skip=tuple(skip), k=int(raw.get("k", 4)), max_k=int(raw.get("max_k", 8))
    )
