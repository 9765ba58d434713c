"""``tokenskip train early-exit``: a LoRA with LayerSkip's early-exit loss.

Every chosen layer's output goes through the model's own final norm and LM head, and its
next-token loss on the completion is added to the usual one, deeper layers weighing more
(LayerSkip, Elhoushi et al., 2024: the exit-loss scale grows with depth). The result raises
how often an exited layer agrees with the full model: the acceptance rate of the
self-speculative draft (:mod:`tokenskip.runtime.speculative`) and the agreement of adaptive early
exit (:mod:`tokenskip.runtime.early_exit`). Serve it as a local adapter.

Stages, in one run directory::

    run.json       the run's configuration (a rerun must match it: it resumes)
    train.jsonl    prompt (the zero-shot GSM8K chat prompt) / completion (the reference
                   solution, calculator annotations stripped)
    adapter/       the peft adapter + early_exit.json
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenskip.errors import InvalidInputError
from tokenskip.provenance import portable_path
from tokenskip.tasks import gsm8k
from tokenskip.trainers.cot_data import JsonlWriter, example_completion
from tokenskip.trainers.runs import (
    claim_run_dir,
    is_main_process,
    on_main_process_first,
    write_adapter_meta,
)
from tokenskip.trainers.sft import IGNORE_INDEX, SFTConfig, TrainSettings, train_lora

META_FILE = "early_exit.json"
META_FORMAT = "tokenskip-early-exit/1"


@dataclass
class EarlyExitTrainConfig:
    model: str
    out_dir: str
    data: str | None = None
    """GSM8K JSONL file/dir (default: the shared copy) or openai/gsm8k."""
    split: str = "train"
    limit: int | None = None
    layers: tuple[int, ...] | None = None
    """Exit layers (0-based; an exit after layer i). None: every fourth layer from a third of
    the way up, the candidates :func:`tokenskip.runtime.early_exit.calibrate_exits` uses."""
    exit_scale: float = 1.0
    """Weight of the exit losses (together) against the final layer's."""
    on_bad_record: str = "raise"
    train: TrainSettings = field(default_factory=TrainSettings)
    allow_download: bool = False

    def __post_init__(self) -> None:
        if self.exit_scale <= 0:
            raise InvalidInputError(f"exit_scale must be positive, got {self.exit_scale}")
        if self.layers is not None:
            self.layers = tuple(sorted({int(i) for i in self.layers}))
            if not self.layers or self.layers[0] < 0:
                raise InvalidInputError(f"exit layers must be indices >= 0, got {self.layers}")


def default_exit_layers(num_layers: int) -> tuple[int, ...]:
    return tuple(range(num_layers // 3, num_layers - 1, 4))


def exit_weights(layers: tuple[int, ...]) -> list[float]:
    """Deeper exits weigh more (proportional to depth), summing to one."""
    total = sum(i + 1 for i in layers)
    return [(i + 1) / total for i in layers]


def build_examples(config: EarlyExitTrainConfig, hf: Any) -> dict[str, Any]:
    """Write train.jsonl from the data set's reference solutions."""
    dataset = gsm8k.load_gsm8k(
        config.data, split=config.split, limit=config.limit, on_error=config.on_bad_record
    )
    out = Path(config.out_dir) / "train.jsonl"
    tmp = out.with_suffix(".tmp")
    with JsonlWriter(tmp) as writer:
        for p in dataset.problems:
            messages = gsm8k.build_messages(p.question)
            prompt = str(
                hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
            completion = example_completion(hf, messages, gsm8k.strip_calculator(p.solution))
            writer.write({"index": p.index, "prompt": prompt, "completion": completion})
    tmp.replace(out)
    return {
        "file": str(out),
        "source": portable_path(dataset.source),
        "examples": len(dataset.problems),
        "skipped_records": list(dataset.skipped),
    }


def early_exit_loss(layers: tuple[int, ...], scale: float) -> Any:
    """``loss(model, batch)``: the final layer's completion loss plus ``scale`` times the
    depth-weighted exit losses. Exit logits are computed only at completion positions."""
    import torch

    weights = exit_weights(layers)

    def loss(model: Any, batch: dict[str, Any]) -> Any:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # padded or packed
        out = model(**inputs, output_hidden_states=True)
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        ce = torch.nn.functional.cross_entropy
        final = ce(out.logits[:, :-1][keep].float(), targets[keep])
        decoder = model.get_decoder()
        head = model.get_output_embeddings()
        exits = 0.0
        for w, layer in zip(weights, layers):
            # hidden_states[i + 1] is layer i's output (hidden_states[0]: the embeddings)
            h = out.hidden_states[layer + 1][:, :-1][keep]
            exits = exits + w * ce(head(decoder.norm(h)).float(), targets[keep])
        return final + scale * exits

    return loss


def run_early_exit(
    config: EarlyExitTrainConfig, *, progress: bool = True, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """All stages; returns the adapter's metadata (also in ``adapter/early_exit.json``)."""
    from tokenskip.models import load_model_config, load_tokenizer

    hf = load_tokenizer(config.model, allow_download=config.allow_download)
    num_layers = int(
        load_model_config(config.model, allow_download=config.allow_download).num_hidden_layers
    )
    layers = config.layers or default_exit_layers(num_layers)
    if layers[-1] >= num_layers - 1:
        raise InvalidInputError(
            f"exit layers must lie below the last layer ({num_layers - 1}), got {list(layers)}"
        )
    started = time.time()

    def prepare() -> dict[str, Any]:
        claim_run_dir(config.out_dir, asdict(config))
        return build_examples(config, hf)

    data = on_main_process_first(prepare, config.out_dir)
    sft = SFTConfig(
        model=config.model,
        train_file=str(Path(config.out_dir) / "train.jsonl"),
        out_dir=config.out_dir,
        train=config.train,
        allow_download=config.allow_download,
    )
    trained = train_lora(
        sft,
        callbacks=callbacks,
        progress=progress,
        loss=early_exit_loss(layers, config.exit_scale),
    )
    if not is_main_process():
        return {}
    return write_adapter_meta(
        META_FILE,
        trained,
        sft,
        started,
        format=META_FORMAT,
        base_model=config.model,
        layers=list(layers),
        weights=[round(w, 4) for w in exit_weights(layers)],
        exit_scale=config.exit_scale,
        loss="CE(final) + exit_scale * sum_l w_l * CE(lm_head(norm(h_l))), completion only",
        data=data,
    )
