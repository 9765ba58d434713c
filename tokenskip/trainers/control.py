"""Controllability tracked while a TokenSkip LoRA trains: does the CoT length follow γ yet?

Every ``every`` optimizer steps (and at the end), the model being trained answers
``questions`` held-out GSM8K test questions greedily at each γ of ``gammas`` (capped at
``max_new_tokens``), with the same prompt the training examples have (the ratio suffix in the
user turn, none at γ = 1). One JSON line per check goes to ``<out>/controllability.jsonl``:
accuracy, mean CoT tokens and the achieved ratio (mean tokens at γ over mean tokens at 1.0)
per γ, and whether every γ < 1 is within ``tolerance`` of its value. With
``stop_when_controllable`` the run stops (and saves) at the first check that is. Only the
main process checks; the other ranks wait at the next step as usual.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenskip.errors import InvalidInputError

CONTROL_FILE = "controllability.jsonl"


@dataclass
class ControlSettings:
    every: int = 200
    """Check every this many optimizer steps (0: never during training)."""
    questions: int = 100
    gammas: tuple[float, ...] = (1.0, 0.9, 0.7, 0.5)
    max_new_tokens: int = 512
    batch_size: int = 16
    tolerance: float = 0.1
    stop_when_controllable: bool = False
    data: str | None = None
    """GSM8K directory or file (default: the shared data); the test split is used."""

    def __post_init__(self) -> None:
        if self.every < 0 or self.questions <= 0 or self.max_new_tokens <= 0:
            raise InvalidInputError("control: every >= 0, questions > 0, max_new_tokens > 0")
        if 1.0 not in self.gammas:
            raise InvalidInputError("control: the γ list needs 1.0 (the reference length)")
        if any(not 0.0 < g <= 1.0 for g in self.gammas):
            raise InvalidInputError(f"control: every γ must be in (0, 1], got {self.gammas}")


@dataclass
class Check:
    step: int
    epoch: float
    by_gamma: dict[str, dict[str, float]] = field(default_factory=dict)
    controllable: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": round(self.epoch, 4),
            "by_gamma": self.by_gamma,
            "controllable": self.controllable,
            "seconds": round(self.seconds, 1),
        }


def greedy(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch: int
) -> list[list[int]]:
    """Greedy continuations (token ids, up to EOS) of chat-formatted prompts, left-padded."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[list[int]] = []
    try:
        for i in range(0, len(prompts), batch):
            enc = tokenizer(prompts[i : i + batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)  # fmt: skip
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad, use_cache=True)  # fmt: skip
            for row in ids[:, enc["input_ids"].shape[1] :].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                out.append(row)
    finally:
        tokenizer.padding_side = side
    return out


def check(model: Any, tokenizer: Any, settings: ControlSettings, delimiter: str) -> dict[str, Any]:
    """One controllability check of ``model`` (left in the train/eval mode it came in)."""
    from tokenskip.ratio_prompt import ratio_suffix
    from tokenskip.tasks.gsm8k import build_prompt, extract_answer, is_correct, load_gsm8k

    problems = load_gsm8k(settings.data, split="test", limit=settings.questions).problems
    training = model.training
    model.eval()
    cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = True
    by_gamma: dict[str, dict[str, float]] = {}
    try:
        for gamma in settings.gammas:
            prompts = [build_prompt(tokenizer, p.question, suffix=ratio_suffix(gamma, delimiter))
                       for p in problems]  # fmt: skip
            outs = greedy(model, tokenizer, prompts, settings.max_new_tokens, settings.batch_size)
            texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
            correct = sum(is_correct(extract_answer(t), p.answer) for t, p in zip(texts, problems))
            by_gamma[f"{gamma:g}"] = {
                "accuracy": round(correct / len(problems), 4),
                "cot_tokens": round(sum(len(o) for o in outs) / len(outs), 1),
                "cut": round(sum(len(o) >= settings.max_new_tokens for o in outs) / len(outs), 4),
            }
    finally:
        model.config.use_cache = cache
        model.train(training)
    base = by_gamma["1"]["cot_tokens"] or 1.0
    for row in by_gamma.values():
        row["ratio"] = round(row["cot_tokens"] / base, 4)
    ok = all(abs(row["ratio"] - float(g)) <= settings.tolerance for g, row in by_gamma.items())
    return {"by_gamma": by_gamma, "controllable": ok}


def callback(settings: ControlSettings, tokenizer: Any, delimiter: str, out_dir: str) -> Any:
    """A Trainer callback that runs :func:`check` every ``settings.every`` steps."""
    from transformers import TrainerCallback

    path = Path(out_dir) / CONTROL_FILE

    class Controllability(TrainerCallback):
        def _run(self, args: Any, state: Any, control: Any, model: Any) -> None:
            if not state.is_world_process_zero or model is None:
                return
            t0 = time.perf_counter()
            found = check(model, tokenizer, settings, delimiter)
            row = Check(state.global_step, float(state.epoch or 0.0), found["by_gamma"],
                        found["controllable"], time.perf_counter() - t0)  # fmt: skip
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row.to_dict()) + "\n")
            if row.controllable and settings.stop_when_controllable:
                control.should_training_stop = True
                control.should_save = True

        def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            if settings.every and state.global_step % settings.every == 0:
                self._run(args, state, control, model)

        def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            done = (
                {json.loads(line)["step"] for line in path.read_text().splitlines()}
                if path.is_file()
                else set()
            )
            if state.global_step not in done:
                self._run(args, state, control, model)

    return Controllability()
