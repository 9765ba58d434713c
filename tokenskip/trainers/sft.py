"""LoRA supervised fine-tuning on prompt/completion pairs, loss on the completion only.

Shared by every training pipeline here. The input is a JSONL file of ``{"prompt": ...,
"completion": ...}`` records whose prompt is already in the model's chat format; the output
is a peft adapter directory. Training resumes from the newest checkpoint in
``<out>/checkpoints`` and runs unchanged under ``accelerate launch`` on several GPUs (the HF
Trainer handles the distribution).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenskip.errors import InvalidInputError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    """peft's ``all-linear`` = every linear layer but the output head."""

    def __post_init__(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise InvalidInputError(f"LoRA r and alpha must be positive, got {self.r}/{self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInputError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TrainSettings:
    """How to fine-tune (defaults: the TokenSkip paper's LoRA recipe); shared by every
    pipeline."""

    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 5e-5
    epochs: float = 3.0
    max_steps: int = -1
    """Stop after this many optimizer steps (overrides ``epochs`` when > 0)."""
    batch_size: int = 4
    """Examples per optimizer step on each device. With packing, the rows per step are sized
    so a step still holds about this many examples (rows ≈ batch_size × rows / examples):
    turning packing on changes the speed, not the number or size of the updates."""
    grad_accum: int = 1
    max_length: int = 2048
    """Longer examples are cut at the end (the completion's tail loses its loss)."""
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    seed: int = 0
    save_steps: int = 50
    logging_steps: int = 10
    save_total_limit: int = 2
    precision: str = "auto"
    """``auto`` (bf16 autocast where the GPU or CPU supports it, else fp32), ``bf16``,
    ``fp16`` or ``fp32``."""
    packing: bool = True
    """Pack several examples into each row (:func:`pack`): no padding, no attention across
    examples (per-example position ids give a block-diagonal causal mask)."""
    pack_length: int | None = None
    """Tokens per packed row (default: the longest example's, so rows stay short: attention
    on a CPU or without varlen kernels costs the row's length squared); an example longer
    than a row is an error, never split."""
    completion_logits: bool = True
    """Compute the LM head (a vocabulary-wide matmul and softmax per token) only at the
    positions whose next token has a loss, not at every prompt token: the same loss and
    gradients, less work (:class:`CompletionHead`). Off: the model's own full-logits loss."""
    init_adapter: str | None = None
    """Start from this peft adapter (continue training it on new data) instead of a fresh
    LoRA; its own rank and target modules then apply."""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.learning_rate <= 0:
            raise InvalidInputError(f"learning rate must be positive, got {self.learning_rate}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise InvalidInputError("give a positive number of epochs or max_steps")
        for name in ("batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise InvalidInputError(f"warmup ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise InvalidInputError(f"precision must be auto, bf16, fp16 or fp32: {self.precision}")
        if (
            self.init_adapter is not None
            and not (Path(self.init_adapter) / "adapter_config.json").is_file()
        ):
            raise InvalidInputError(
                f"--init-adapter {self.init_adapter}: not a peft adapter directory "
                "(no adapter_config.json)"
            )


@dataclass
class SFTConfig:
    model: str
    """Base model: embedded name, local HF directory, .gguf, or a hub id in the local cache."""
    train_file: str
    """JSONL of {"prompt", "completion"} records."""
    out_dir: str
    """Receives ``checkpoints/`` and ``adapter/``."""
    train: TrainSettings = field(default_factory=TrainSettings)
    allow_download: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- data


def read_pairs(path: str | Path) -> list[dict[str, str]]:
    """The prompt/completion records of a JSONL file; a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"training file not found: {path}")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not all(
            isinstance(record.get(k), str) and record.get(k) for k in ("prompt", "completion")
        ):
            raise InvalidInputError(
                f"{path}:{number}: expected non-empty string fields 'prompt' and 'completion'"
            )
        pairs.append(record)
    if not pairs:
        raise InvalidInputError(f"{path} holds no training examples")
    return pairs


def tokenize_pair(tokenizer: Any, prompt: str, completion: str, max_length: int) -> dict:
    """input_ids and labels with the prompt masked out of the loss.

    The prompt and the completion are encoded apart (the prompt ends at the assistant header,
    so the boundary is a clean token boundary) and neither gets extra special tokens: the
    chat template already wrote them.
    """
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    completion_ids = tokenizer.encode(completion, add_special_tokens=False)
    ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


class PairCollator:
    """Right-pads a batch; padding is masked out of attention and loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack(examples: list[dict[str, list[int]]], capacity: int) -> list[dict[str, list[int]]]:
    """Examples packed into rows of at most ``capacity`` tokens, first-fit by decreasing
    length; each row's ``position_ids`` restart at 0 for every example, which makes the
    model's causal mask block-diagonal (transformers' packed-sequence masks: no token attends
    to another example's). An example is never split: one longer than a row is an error."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        if n > capacity:
            raise InvalidInputError(
                f"example {i} has {n} tokens, more than a packed row's {capacity}: packing "
                "would split it across rows (raise pack_length or lower max_length)"
            )
        for r, space in enumerate(free):
            if space >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    packed = []
    for members in rows:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in members:
            e = examples[i]
            ids += e["input_ids"]
            labels += [IGNORE_INDEX] + e["labels"][1:]  # never a target across examples
            positions += list(range(len(e["input_ids"])))
        packed.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return packed


class PackedCollator:
    """Packed rows padded to the batch's widest; the padding is a segment of its own (its
    positions restart at 0), so no real token attends to it, and it has no loss. No
    attention mask: the position ids carry the example boundaries."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            positions[row, :n] = torch.tensor(f["position_ids"])
            positions[row, n:] = torch.arange(width - n)
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


def next_token_has_loss(labels: Any) -> Any:
    """Positions (batch × length, bool) whose next token is a target: where the LM head's
    output is used by the causal-LM loss."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


class CompletionHead:
    """Restricts a causal LM's output head to the positions in ``keep`` while it is set.

    A forward pre-hook on the output embeddings replaces the hidden states (batch × length
    × d) by the kept ones (1 × kept × d), so the logits come back as 1 × kept × vocabulary,
    in row-major order: the loss over them (:func:`completion_loss`) is the model's own
    shifted causal-LM loss without the prompt positions' matmul and softmax. The forward
    still runs through the model (and any DDP wrapper) as usual; with ``keep`` unset the
    hook does nothing.
    """

    def __init__(self, model: Any):
        self.keep: Any = None
        self._handle = model.get_output_embeddings().register_forward_pre_hook(self._select)

    def _select(self, _module: Any, args: tuple) -> tuple | None:
        hidden = args[0]
        if self.keep is None or tuple(hidden.shape[:2]) != tuple(self.keep.shape):
            return None
        return (hidden[self.keep].unsqueeze(0), *args[1:])

    def remove(self) -> None:
        self._handle.remove()


def completion_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Mean cross-entropy over the completion tokens, from the logits :class:`CompletionHead`
    kept (or from full batch × length logits, shifted, if the head was not restricted);
    divided by ``num_items_in_batch`` when the Trainer counts the tokens of the whole
    accumulated step, as the model's own loss is."""
    import torch.nn.functional as F

    logits = outputs["logits"]
    targets = labels[:, 1:]
    wanted = targets != IGNORE_INDEX
    # kept logits are never batch × length: the last position has no next token to keep
    if logits.dim() == 3 and tuple(logits.shape[:2]) == tuple(labels.shape):
        logits = logits[:, :-1][wanted]
    else:
        logits = logits[0]
    total = F.cross_entropy(logits.float(), targets[wanted], reduction="sum")
    if num_items_in_batch is None:
        return total / wanted.sum().clamp(min=1)
    return total / num_items_in_batch


# ---------------------------------------------------------------------------- training


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX): autocast pays there."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def _precision(choice: str) -> dict[str, bool]:
    import torch

    if choice == "auto":
        if torch.cuda.is_available():
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            choice = "bf16" if cpu_has_bf16() else "fp32"
    return {"bf16": choice == "bf16", "fp16": choice == "fp16"}


def last_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-N`` under ``<out>/checkpoints``, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    where = Path(out_dir) / "checkpoints"
    if not where.is_dir():
        return None
    found = get_last_checkpoint(str(where))
    return Path(found) if found else None


def train_lora(
    config: SFTConfig,
    *,
    callbacks: list[Any] | None = None,
    progress: bool = True,
    loss: Callable[[Any, dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune a LoRA on ``config.train_file``; returns a summary (steps, losses, paths).

    The adapter lands in ``<out>/adapter``. An interrupted run resumes from its last
    checkpoint when called again with the same config. ``loss(model, batch)`` replaces the
    causal-LM loss on the completion (e.g. the early-exit pipeline adds per-layer terms).
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import Trainer, TrainingArguments

    from tokenskip.models import load_model

    t = config.train
    pairs = read_pairs(config.train_file)
    loaded = load_model(config.model, allow_download=config.allow_download)
    tokenizer = loaded.tokenizer
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    examples = [tokenize_pair(tokenizer, p["prompt"], p["completion"], t.max_length) for p in pairs]
    truncated = sum(1 for e in examples if len(e["input_ids"]) == t.max_length)
    if all(all(label == IGNORE_INDEX for label in e["labels"]) for e in examples):
        raise InvalidInputError(
            f"every example's completion falls beyond max_length={t.max_length}"
        )

    model = loaded.model
    model.config.use_cache = False
    lora = t.lora
    if t.init_adapter is not None:
        model = PeftModel.from_pretrained(model, t.init_adapter, is_trainable=True)
    else:
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    trainable, total = model.get_nb_trainable_parameters()

    out = Path(config.out_dir)
    capacity = t.pack_length or max(len(e["input_ids"]) for e in examples)
    rows = pack(examples, capacity) if t.packing else examples
    rows_per_step = max(1, round(t.batch_size * len(rows) / len(examples)))
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=rows_per_step,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a share of the total steps
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not progress,
        **_precision(t.precision),
    )
    head = CompletionHead(model) if loss is None and t.completion_logits else None
    if loss is not None:
        trainer_class, extra = _with_loss(Trainer, loss), {}
    elif head is not None:
        trainer_class, extra = _with_head(Trainer, head), {"compute_loss_func": completion_loss}
    else:
        trainer_class, extra = Trainer, {}
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=_ListDataset(rows),
        data_collator=PackedCollator(pad_id) if t.packing else PairCollator(pad_id),
        callbacks=callbacks or [],
        **extra,
    )
    resume = last_checkpoint(out)
    if resume is not None:
        log.info("resuming from %s", resume)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        if head is not None:
            head.remove()
    adapter_dir = out / "adapter"
    if trainer.is_world_process_zero():
        model.save_pretrained(str(adapter_dir))
        tokenizer.save_pretrained(str(adapter_dir))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "adapter": str(adapter_dir),
        "examples": len(examples),
        "rows": len(rows),
        "rows_per_step": rows_per_step,
        "completion_logits": head is not None,
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "completion_tokens": sum(
            sum(1 for label in e["labels"] if label != IGNORE_INDEX) for e in examples
        ),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "truncated_examples": truncated,
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0.0), 4),
        "resumed_from": str(resume) if resume else None,
        "init_adapter": t.init_adapter,
        "train_loss": round(float(result.training_loss), 6)
        if not math.isnan(result.training_loss)
        else None,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "trainable_params": int(trainable),
        "total_params": int(total),
        "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 2),
        "world_size": int(args.world_size),
        "distributed": str(args.parallel_mode).rsplit(".", 1)[-1].lower(),
    }


def _with_loss(trainer: type, loss: Callable[[Any, dict[str, Any]], Any]) -> type:
    class LossTrainer(trainer):  # type: ignore[misc, valid-type]
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            value = loss(model, inputs)
            return (value, None) if return_outputs else value

    return LossTrainer


def _with_head(trainer: type, head: CompletionHead) -> type:
    class HeadTrainer(trainer):  # type: ignore[misc, valid-type]
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            head.keep = next_token_has_loss(inputs["labels"])
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                head.keep = None

    return HeadTrainer


class _ListDataset:
    """A map-style dataset over a list (what the Trainer's DataLoader needs)."""

    def __init__(self, items: list[dict[str, list[int]]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


def merge_adapter(base_model: str, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + LoRA merged into one plain model directory (no peft needed to load it)."""
    from peft import PeftModel

    from tokenskip.models import load_model

    loaded = load_model(base_model)
    merged = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(str(out))
    loaded.tokenizer.save_pretrained(str(out))
    return out
