"""Adaptive early exit (opt-in and lossy; after AdaInfer and CALM).

At a few candidate layers the decoder asks whether the token is already decided. Asking
with the LM head costs a lot on small models (SmolLM2-135M's head is ~8 of its 30 layers), so
the question comes in two stages:

1. a **gate** on signals that are nearly free: how much the layer changed the hidden state
   (cosine to the previous layer's output, relative norm of the update);
2. only past the gate, the head runs on the normed state and a **classifier** reads the top
   probability and the top-1/top-2 gap with the gate's signals (AdaInfer's features).

Both are logistic regressions fitted on teacher-forced calibration text: a position is a
positive where the layer's own argmax is the full model's. The classifier's threshold is the
lowest one whose exits agree with the full model at ``target`` on the calibration data; the
gate's lets through ``gate_recall`` of the positions the classifier would accept.

On exit the deeper layers still need this position's keys and values for later tokens: they
are computed from the exited hidden state (CALM's state propagation: each deeper layer's
input norm + k/v projections + RoPE, a small share of a layer's cost).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tokenskip.runtime.configs import EarlyExitConfig
from tokenskip.runtime.speculative import (
    decoder_layers,
    head_cost_in_layers,
    safe_name,
    self_continued,
)

GATE_FEATURES = ("cos_change", "rel_change")
FEATURES = ("top_prob", "top_gap", "cos_change", "rel_change")


@dataclass
class Logistic:
    weights: list[float]
    bias: float
    threshold: float

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for feature rows ``x`` (n, features)."""
        w = torch.tensor(self.weights, dtype=x.dtype, device=x.device)
        return torch.sigmoid(x @ w + self.bias)

    def accepts(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x) >= self.threshold


@dataclass
class EarlyExit:
    """A calibrated exit policy for one model (saved as JSON beside the model's cache)."""

    layers: list[int]
    """Candidate exit layers: an exit after layer i runs layers 0..i (i + 1 of them)."""
    gate: Logistic
    classifier: Logistic
    num_layers: int
    target: float
    calibration: dict[str, Any] = field(default_factory=dict)
    """Agreement, exit rate and mean layers on the calibration data at the thresholds."""

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EarlyExit:
        raw = json.loads(Path(path).read_text())
        raw["gate"] = Logistic(**raw["gate"])
        raw["classifier"] = Logistic(**raw["classifier"])
        return cls(**raw)


@dataclass
class EarlyExitStats:
    tokens: int = 0
    exited: int = 0
    layers_run: int = 0
    head_checks: int = 0
    """LM-head evaluations at candidate layers (beyond the one every token needs)."""
    exits_by_layer: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_rate"] = round(self.exited / self.tokens, 4) if self.tokens else 0.0
        d["layers_per_token"] = round(self.layers_run / self.tokens, 3) if self.tokens else None
        return d


# ---------------------------------------------------------------------------- the forward


def _cheap(h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """(…, 2): cosine between a layer's output and input, and |update| / |output|."""
    cos = torch.nn.functional.cosine_similarity(h.float(), prev.float(), dim=-1)
    rel = (h.float() - prev.float()).norm(dim=-1) / h.float().norm(dim=-1).clamp(min=1e-6)
    return torch.stack([cos, rel], dim=-1)


def _head_features(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(…, 2) top probability and top-1/top-2 gap, and the argmax."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = probs.topk(2, dim=-1)
    return torch.stack([top.values[..., 0], top.values[..., 0] - top.values[..., 1]], -1), (
        top.indices[..., 0]
    )


def _begin(model: Any, ids: torch.Tensor, mask: torch.Tensor | None, positions, cache):
    from transformers.masking_utils import create_causal_mask

    decoder, _ = decoder_layers(model)
    x = decoder.embed_tokens(ids)
    causal = create_causal_mask(
        config=decoder.config,
        inputs_embeds=x,
        attention_mask=mask,
        past_key_values=cache,
        position_ids=positions,
    )
    return decoder, x, causal, decoder.rotary_emb(x, position_ids=positions)


def _propagate(decoder: Any, h: torch.Tensor, start: int, rope: Any, cache: Any) -> None:
    """Keys and values of layers ``start``.. for the exited state ``h`` (CALM)."""
    cos, sin = rope
    for j in range(start, len(decoder.layers)):
        layer = decoder.layers[j]
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        shape = (*x.shape[:-1], -1, attn.head_dim)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        _, k = rotate(k, k, cos, sin)
        cache.update(k, v, j)


@torch.inference_mode()
def exit_step(
    model: Any,
    token: int,
    cache: Any,
    mask: torch.Tensor,
    position: int,
    policy: EarlyExit,
    stats: EarlyExitStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step for a single sequence that may leave the stack early.

    Returns the next-token logits (from the exit layer's state, or the last layer's) and the
    attention mask now covering the cache.
    """
    device = mask.device
    new_mask = torch.cat([mask, mask.new_ones((1, 1))], dim=-1)
    ids = torch.tensor([[token]], device=device)
    pos = torch.tensor([[position]], device=device)
    decoder, x, causal, rope = _begin(model, ids, new_mask, pos, cache)
    head = model.get_output_embeddings()
    candidates = set(policy.layers)
    h = x
    n = len(decoder.layers)
    for i, layer in enumerate(decoder.layers):
        out = layer(
            h,
            attention_mask=causal,
            position_embeddings=rope,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
        )
        if i in candidates and i < n - 1:
            cheap = _cheap(out[0, -1], h[0, -1]).view(1, -1)
            if bool(policy.gate.accepts(cheap)[0]):
                logits = head(decoder.norm(out))[0, -1]
                top, _ = _head_features(logits)
                if stats is not None:
                    stats.head_checks += 1
                if bool(policy.classifier.accepts(torch.cat([top.view(1, -1), cheap], -1))[0]):
                    _propagate(decoder, out, i + 1, rope, cache)
                    if stats is not None:
                        stats.tokens += 1
                        stats.exited += 1
                        stats.layers_run += i + 1
                        stats.exits_by_layer[i] = stats.exits_by_layer.get(i, 0) + 1
                    return logits.float().view(1, -1), new_mask
        h = out
    if stats is not None:
        stats.tokens += 1
        stats.layers_run += n
    return head(decoder.norm(h))[0, -1].float().view(1, -1), new_mask


# ---------------------------------------------------------------------------- calibration


@torch.inference_mode()
def layer_features(
    model: Any, samples: Sequence[Sequence[int]], layers: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Teacher-forced features at each candidate layer and whether that layer's argmax is
    the full model's: ``features`` (layers, positions, 4), ``agrees`` (layers, positions)."""
    feats, agrees = [], []
    device = next(model.parameters()).device
    for ids in samples:
        x_ids = torch.tensor([list(ids)], device=device)
        pos = torch.arange(len(ids), device=device).view(1, -1)
        decoder, x, causal, rope = _begin(model, x_ids, None, pos, None)
        head = model.get_output_embeddings()
        h, per_layer = x, {}
        for i, layer in enumerate(decoder.layers):
            out = layer(h, attention_mask=causal, position_embeddings=rope, position_ids=pos)
            if i in layers:
                top, choice = _head_features(head(decoder.norm(out))[0])
                per_layer[i] = (torch.cat([top, _cheap(out[0], h[0])], -1), choice)
            h = out
        final = head(decoder.norm(h))[0].argmax(-1)
        feats.append(torch.stack([per_layer[i][0] for i in layers]).float().cpu())
        agrees.append(torch.stack([per_layer[i][1] == final for i in layers]).cpu())
    return {"features": torch.cat(feats, dim=1), "agrees": torch.cat(agrees, dim=1)}


def _fit(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> tuple[list[float], float]:
    """Logistic regression by full-batch L-BFGS (a few features, a few thousand rows)."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    x, target = x.clone().float(), y.clone().float()  # out of inference mode

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, target)
        loss = loss + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return [float(v) for v in w.detach()], float(b.detach())


def _threshold_for_precision(scores: torch.Tensor, y: torch.Tensor, target: float) -> float:
    """The lowest threshold whose accepted rows agree at ``target`` or better (1.01: none)."""
    order = scores.argsort(descending=True)
    hits = y[order].float().cumsum(0)
    precision = hits / torch.arange(1, len(order) + 1)
    ok = (precision >= target).nonzero()
    if not len(ok):
        return 1.01
    return float(scores[order][int(ok[-1])])


def calibrate_exits(
    model: Any,
    samples: Sequence[Sequence[int]],
    *,
    layers: Sequence[int] | None = None,
    target: float = 0.95,
    gate_recall: float = 0.9,
) -> EarlyExit:
    """Fit the gate and the classifier on ``samples`` (token id lists) and pick thresholds.

    ``layers`` default: every fourth layer from a third of the way up, never the last.
    """
    decoder, _ = decoder_layers(model)
    n = len(decoder.layers)
    if layers is None:
        layers = list(range(n // 3, n - 1, 4))
    layers = sorted({int(i) for i in layers})
    if not layers or layers[0] < 0 or layers[-1] >= n - 1:
        raise ValueError(f"exit layers must lie in [0, {n - 2}], got {layers}")
    data = layer_features(model, samples, layers)
    untrained = {
        str(layer): round(float(data["agrees"][i].float().mean()), 4)
        for i, layer in enumerate(layers)
    }
    x = data["features"].reshape(-1, len(FEATURES))
    y = data["agrees"].reshape(-1)
    w, b = _fit(x, y)
    classifier = Logistic(w, b, 1.0)
    classifier.threshold = _threshold_for_precision(classifier.score(x), y, target)
    accepted = classifier.accepts(x)
    gw, gb = _fit(x[:, 2:], accepted)
    gate = Logistic(gw, gb, 1.0)
    gate_scores = gate.score(x[:, 2:])
    if accepted.any():
        gate.threshold = float(torch.quantile(gate_scores[accepted], 1.0 - gate_recall))
    policy = EarlyExit(layers, gate, classifier, n, target)
    head_cost = head_cost_in_layers(model)
    dropped = []
    while policy.layers:
        net = _net_layers_saved(policy, data, head_cost)
        worst = min(net, key=net.get)
        if net[worst] > 0:
            break
        dropped.append(worst)  # its head checks cost more layers than its exits save
        keep = [i for i, layer in enumerate(policy.layers) if layer != worst]
        policy.layers = [policy.layers[i] for i in keep]
        data = {"features": data["features"][keep], "agrees": data["agrees"][keep]}
    policy.calibration = simulate(policy, data)
    policy.calibration["head_cost_in_layers"] = round(head_cost, 2)
    policy.calibration["dropped_layers"] = dropped
    policy.calibration["candidate_agreement_by_layer"] = untrained
    return policy


def _net_layers_saved(
    policy: EarlyExit, data: dict[str, torch.Tensor], head_cost: float
) -> dict[int, float]:
    """Per candidate layer: layers its exits skip minus what its head checks cost."""
    feats = data["features"]
    gated = policy.gate.accepts(feats[..., 2:])
    passes = gated & policy.classifier.accepts(feats)
    first = passes.int().cumsum(0).eq(1) & passes  # the first layer that lets each position go
    out = {}
    for i, layer in enumerate(policy.layers):
        reached = ~(passes[:i].any(0)) if i else torch.ones_like(passes[0])
        checks = int((gated[i] & reached).sum())
        saved = int(first[i].sum()) * (policy.num_layers - layer - 1)
        out[layer] = saved - checks * head_cost
    return out


def simulate(policy: EarlyExit, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Teacher-forced: per position, the first candidate layer whose gate and classifier both
    accept is the exit; agreement with the full model, exit rate, mean layers run and head
    checks (gate passes at layers the position reached) over all positions."""
    feats, agrees = data["features"], data["agrees"]
    layers, n = policy.layers, policy.num_layers
    positions = int(feats.shape[1]) if feats.dim() == 3 else 0
    if not layers or not positions:
        return {
            "positions": positions,
            "agreement": 1.0,
            "exit_rate": 0.0,
            "layers_per_token": float(n),
            "head_checks_per_token": 0.0,
        }
    gated = policy.gate.accepts(feats[..., 2:])
    passes = gated & policy.classifier.accepts(feats)
    same = exited = layer_sum = checks = 0
    for p in range(positions):
        hit = passes[:, p].nonzero()
        last = int(hit[0]) if len(hit) else len(layers) - 1
        checks += int(gated[: last + 1, p].sum())
        if len(hit):
            exited += 1
            same += int(agrees[last, p])
            layer_sum += layers[last] + 1
        else:
            same += 1
            layer_sum += n
    return {
        "positions": positions,
        "agreement": round(same / positions, 4),
        "exit_rate": round(exited / positions, 4),
        "layers_per_token": round(layer_sum / positions, 3),
        "head_checks_per_token": round(checks / positions, 3),
    }


def early_exit_policy(
    name: str, loaded: Any, config: EarlyExitConfig | dict[str, Any]
) -> EarlyExit:
    """The policy for a model's ``local.early_exit`` block: calibrated once on the built-in
    texts (continued greedily by the model itself) and cached under the model cache."""
    from tokenskip.models import cache_dir
    from tokenskip.runtime.speculative import CALIBRATION_TEXTS

    if isinstance(config, dict):
        layers = config.get("layers")
        config = EarlyExitConfig(**{**config, "layers": None if layers is None else tuple(layers)})
    target = float(config.target)
    layers = None if config.layers is None else list(config.layers)
    tag = "default" if layers is None else "-".join(str(i) for i in layers)
    path = cache_dir() / "early_exit" / f"{safe_name(name)}-{target:g}-{tag}.json"
    if path.is_file():
        return EarlyExit.load(path)
    samples = self_continued(loaded.model, [loaded.tokenizer.encode(t) for t in CALIBRATION_TEXTS])
    policy = calibrate_exits(loaded.model, samples, layers=layers, target=target)
    policy.save(path)
    return policy
