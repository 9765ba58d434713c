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

Drafts can also come for free from the text itself (prompt lookup, Saxena 2023): when the
last few tokens occurred earlier in the prompt or the output, the tokens that followed them
there are the draft (:func:`lookup_draft`). Such a draft costs nothing to make; only its
verify pass costs (measured on a 2-core CPU with SmolLM2: ~2 plain steps for 2 to 9 tokens,
``reports/local_runtime_lookup_adaptive.md``), so an accepted run of tokens saves whole
steps. A round uses a lookup draft when there is one, else a layer-skipping draft when the
skip set is not empty, else a plain step.
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

from tokenskip.runtime.configs import SpeculativeConfig

log = logging.getLogger(__name__)


@dataclass
class SpeculativeSettings:
    skip: tuple[int, ...]
    """Decoder layers the draft skips (never the first or the last)."""
    k: int = 4
    """Initial draft length; adapts within [1, max_k]."""
    max_k: int = 8
    lookup: bool = True
    """Draft from earlier occurrences of the last tokens in the prompt and output first."""
    lookup_ngram: int = 3
    """Longest suffix looked up (down to 2 tokens)."""
    lookup_tokens: int = 8
    """Longest lookup draft. Fixed: on CPU a verify pass cost ~2 plain steps whatever its
    length (1-9 tokens), so a shorter draft only loses accepted tokens
    (``reports/local_runtime_lookup_adaptive.md``)."""


@dataclass
class SpeculativeStats:
    rounds: int = 0
    """Verified drafts, both kinds."""
    drafted: int = 0
    accepted: int = 0
    layers_run: int = 0
    tokens: int = 0
    lookup_rounds: int = 0
    lookup_drafted: int = 0
    lookup_accepted: int = 0
    plain_steps: int = 0
    """Steps with no draft at all (no lookup match and an empty skip set)."""

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
    return verify(model, token, drafts, cache, mask, position)


@torch.inference_mode()
def verify(
    model: Any,
    token: int,
    drafts: Sequence[int],
    cache: Any,
    mask: torch.Tensor,
    position: int,
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """One full pass over ``[token] + drafts``: the longest prefix of ``drafts`` the full model
    picks itself, its logits for the token after that prefix, and the mask over the cache
    (cut to the kept tokens)."""
    device = mask.device
    start = mask.shape[1]
    k = len(drafts)
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
    return list(drafts[:m]), out.logits[0, m].float().view(1, -1), new_mask


def lookup_draft(history: Sequence[int], k: int, ngram: int = 3) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier occurrence of the last ``n`` tokens
    of ``history`` (n from ``ngram`` down to 2); empty when the suffix never occurred."""
    if k <= 0:
        return []
    history = list(history)
    end = len(history)
    last = history[-1] if history else None
    for n in range(min(ngram, end - 1), 1, -1):
        suffix = history[end - n :]
        for start in range(end - n - 1, -1, -1):  # latest match first
            if history[start + n - 1] == last and history[start : start + n] == suffix:
                return history[start + n : start + n + k]
    return []


# ---------------------------------------------------------------------------- calibration


@torch.inference_mode()
def full_choices(model: Any, samples: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The full model's next-token choice at every position of each sample."""
    device = next(model.parameters()).device
    return [
        model(input_ids=torch.tensor([list(ids)], device=device)).logits[0].argmax(-1)
        for ids in samples
    ]


@torch.inference_mode()
def agreement(
    model: Any,
    samples: Sequence[Sequence[int]],
    skip: Sequence[int],
    full: Sequence[torch.Tensor] | None = None,
) -> float:
    """Share of positions where the skipping model's next-token choice is the full model's
    (teacher-forced on ``samples``; ``full``: :func:`full_choices`, computed if not given)."""
    if full is None:
        full = full_choices(model, samples)
    same = total = 0
    device = next(model.parameters()).device
    for ids, want in zip(samples, full):
        x = torch.tensor([list(ids)], device=device)
        with skipping(model, skip):
            part = model(input_ids=x).logits[0].argmax(-1)
        same += int((want == part).sum())
        total += len(ids)
    return same / total if total else 0.0


@dataclass
class Calibration:
    skip: list[int]
    agreement: float
    num_layers: int
    target: float
    trace: list[dict[str, Any]] = field(default_factory=list)
    modeled_speedup: float = 1.0
    """Expected speed-up over plain decoding with this skip set (:func:`modeled_speedup`);
    an empty skip set (speculation off) when no candidate beats 1.0."""
    k: int = 1
    """The draft length that speed-up assumes (the engine adapts k as it runs)."""
    head_layers: float = 0.0
    """The LM head's cost in decoder layers (paid by every draft token too)."""

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls(**json.loads(Path(path).read_text()))


def modeled_speedup(
    agreement: float, skipped: int, num_layers: int, max_k: int = 8, head_layers: float = 0.0
) -> tuple[float, int]:
    """Expected speed-up of self-speculation over plain decoding, and the draft length k
    that gives it. A draft token costs ``(num_layers - skipped + head) / (num_layers + head)``
    of a full step (the LM head, ``head_layers`` decoder layers' worth, runs for every draft
    token) and is accepted with probability ``agreement`` (independently); the verify pass
    is counted as one full step, the bound for a weight-read-bound decoder (measured: ~2
    steps on a 2-core CPU), so the estimate is optimistic: a skip set it puts at or below
    1.0 cannot pay. A round yields sum(a^i, i = 0..k) tokens for k * cost + 1 steps."""
    cost = (num_layers - skipped + head_layers) / (num_layers + head_layers)
    best = (0.0, 1)
    for k in range(1, max_k + 1):
        tokens = sum(agreement**i for i in range(k + 1))
        best = max(best, (tokens / (k * cost + 1), k))
    return round(best[0], 4), best[1]


def calibrate(
    model: Any,
    samples: Sequence[Sequence[int]],
    *,
    target: float = 0.8,
    max_fraction: float = 0.5,
) -> Calibration:
    """Greedily add the layer whose removal keeps agreement highest, while it stays at or
    above ``target`` and at most ``max_fraction`` of the layers are skipped; then keep the
    prefix of that search with the best :func:`modeled_speedup` (none when nothing beats
    plain decoding: a skip set that slows decoding down is worse than no speculation)."""
    decoder, name = decoder_layers(model)
    n = len(getattr(decoder, name))
    candidates = list(range(1, n - 1))
    skip: list[int] = []
    trace = []
    best = (1.0, 1, 0, 1.0)  # speed-up, k, prefix length, agreement: no skipping
    head = head_cost_in_layers(model)
    full = full_choices(model, samples)
    while candidates and len(skip) < int(max_fraction * n):
        scored = [(agreement(model, samples, skip + [c], full), c) for c in candidates]
        score, layer = max(scored)
        speedup, k = modeled_speedup(score, len(skip) + 1, n, head_layers=head)
        trace.append({"add": layer, "agreement": round(score, 4), "modeled_speedup": speedup})
        if score < target:
            break
        skip.append(layer)
        candidates.remove(layer)
        if speedup > best[0]:
            best = (speedup, k, len(skip), score)
    speedup, k, length, agreed = best
    return Calibration(
        sorted(skip[:length]),
        round(agreed, 4),
        n,
        target,
        trace,
        modeled_speedup=speedup,
        k=k,
        head_layers=head,
    )


def head_cost_in_layers(model: Any) -> float:
    """The LM head's weights over one decoder layer's: what running the head once costs."""
    decoder, name = decoder_layers(model)
    per_layer = sum(p.numel() for p in getattr(decoder, name)[0].parameters())
    return model.get_output_embeddings().weight.numel() / max(per_layer, 1)


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


def speculative_settings(
    name: str, loaded: Any, config: SpeculativeConfig | dict[str, Any]
) -> SpeculativeSettings:
    """Settings from a model's ``local.speculative`` block; without a ``skip`` list the skip
    set is calibrated once and cached under the model cache directory."""
    from tokenskip.models import cache_dir

    if isinstance(config, dict):
        config = SpeculativeConfig(**{**config, "skip": _tuple(config.get("skip"))})
    skip = config.skip
    if skip is None:
        target = float(config.target)
        # v2: chosen by modeled speed-up on the model's own continuations
        path = cache_dir() / "speculative" / f"{safe_name(name)}-{target:g}-v2.json"
        if path.is_file():
            skip = Calibration.load(path).skip
        else:
            samples = self_continued(
                loaded.model, [loaded.tokenizer.encode(t) for t in CALIBRATION_TEXTS], tokens=64
            )
            cal = calibrate(loaded.model, samples, target=target)
            cal.save(path)
            log.info(
                "%s: calibrated skip set %s (agreement %.3f, modeled speed-up %.2f)",
                name,
                cal.skip,
                cal.agreement,
                cal.modeled_speedup,
            )
            skip = cal.skip
    return SpeculativeSettings(
        skip=tuple(skip), k=int(config.k), max_k=int(config.max_k), lookup=bool(config.lookup)
    )


def _tuple(layers: Any) -> tuple[int, ...] | None:
    return None if layers is None else tuple(layers)


@torch.inference_mode()
def self_continued(model: Any, prompts: Sequence[Sequence[int]], tokens: int = 48) -> list:
    """Each prompt followed by the model's own greedy continuation: calibration then sees the
    text the model produces while decoding (what drafts and exits must agree on), not only
    human text."""
    out = []
    device = next(model.parameters()).device
    for ids in prompts:
        x = torch.tensor([list(ids)], device=device)
        gen = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
        )
        out.append(gen[0].tolist())
    return out
