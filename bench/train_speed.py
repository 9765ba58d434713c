"""Trainer speed on the embedded model: training tokens/s before and after packing and bf16,
and the loss each reaches, so a speed-up is never bought with a worse model.

One TokenSkip training set (the first ``--problems`` GSM8K train problems, reference CoTs,
compressed at the paper's γ grid with the heuristic scorer, one γ drawn per problem, as
``tokenskip train tokenskip`` builds it) is split into a training part and a held-out part
(the last ``--held-out`` examples). Each variant trains a fresh LoRA on the training part
for the same number of epochs with the same seed and learning rate:

- ``padded-fp32``: one example per row, right-padded, fp32, the LM head at every position
  (the trainer before this work);
- ``packed-fp32``: several examples per row, no attention across them (:func:`pack`), fp32;
- ``packed-bf16``: packed, bf16 autocast (where the CPU computes bf16 natively);
- ``packed-bf16-head``: packed, bf16, the LM head only where the next token has a loss
  (:class:`CompletionHead`): the trainer's default.

Every variant takes the same number of optimizer steps of about the same number of examples
(packed rows per step are sized to hold ``--batch-size`` examples), so the losses compare
like for like.

Measured: wall time of ``trainer.train``, completion tokens with loss per second and all
non-padding tokens per second, the logged training-loss curve, and the held-out loss of the
trained adapter (fp32, padded, the same examples for every variant).

    .venv/bin/python bench/train_speed.py            # writes reports/train_speed.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from provenance import command_line, git

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "gsm8k"
VARIANTS = {
    "padded-fp32": {"packing": False, "precision": "fp32", "completion_logits": False},
    "packed-fp32": {"packing": True, "precision": "fp32", "completion_logits": False},
    "packed-bf16": {"packing": True, "precision": "bf16", "completion_logits": False},
    "packed-bf16-head": {"packing": True, "precision": "bf16", "completion_logits": True},
}
DEFAULT_VARIANT = "packed-bf16-head"


def build_data(work: Path, data: Path, problems: int) -> Path:
    from tokenskip.models import load_tokenizer
    from tokenskip.trainers.tokenskip_run import TokenSkipConfig, prepare_data

    config = TokenSkipConfig(
        model="smollm2", out_dir=str(work / "data"), data=str(data), limit=problems,
        cot_source="reference", scorer="heuristic",
    )  # fmt: skip
    prepare_data(config, load_tokenizer("smollm2"), progress=False)
    return work / "data" / "train.jsonl"


def held_out_loss(adapter: Path, examples: list[dict[str, list[int]]]) -> float:
    """Mean completion-token loss of base + adapter over the examples (fp32, padded)."""
    import torch
    from peft import PeftModel

    from tokenskip.models import load_model
    from tokenskip.trainers.sft import IGNORE_INDEX, PairCollator

    loaded = load_model("smollm2")
    model = PeftModel.from_pretrained(loaded.model, str(adapter)).eval()
    collate = PairCollator(loaded.tokenizer.eos_token_id)
    total = count = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), 8):
            batch = collate(examples[i : i + 8])
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * n
            count += n
    return total / count


def warm_up(examples: list[dict[str, list[int]]]) -> None:
    """One untimed forward and backward pass, fp32 and bf16, so the first variant measured
    does not also pay for the process's one-time start-up (thread pools, kernel choice)."""
    import torch

    from tokenskip.models import load_model
    from tokenskip.trainers.sft import PairCollator

    loaded = load_model("smollm2")
    batch = PairCollator(loaded.tokenizer.eos_token_id)(examples)
    for dtype in (None, torch.bfloat16):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loaded.model(**batch).loss.backward()


def run_variant(name: str, train_file: Path, work: Path, args: argparse.Namespace) -> dict:
    from tokenskip.trainers.sft import SFTConfig, TrainSettings, train_lora

    settings = TrainSettings(
        learning_rate=args.lr, epochs=args.epochs, batch_size=args.batch_size,
        max_length=args.max_length, save_steps=10_000, logging_steps=args.logging_steps,
        seed=0, **VARIANTS[name],
    )  # fmt: skip
    out = work / name
    captured: list[dict[str, Any]] = []

    from transformers import TrainerCallback

    class Log(TrainerCallback):
        def on_log(self, _args, state, _control, logs=None, **_kw):
            if logs and "loss" in logs:
                captured.append({"step": state.global_step, "epoch": round(state.epoch, 4),
                                 "loss": logs["loss"]})  # fmt: skip

    load = os.getloadavg()
    trained = train_lora(
        SFTConfig(model="smollm2", train_file=str(train_file), out_dir=str(out), train=settings),
        callbacks=[Log()], progress=False,
    )  # fmt: skip
    seconds = trained["train_runtime_s"]
    epochs = trained["epochs"]
    completion = trained["completion_tokens"] * epochs
    return {
        "settings": VARIANTS[name],
        "precision_used": trained["precision"],
        "examples": trained["examples"],
        "rows": trained["rows"],
        "rows_per_step": trained["rows_per_step"],
        "steps": trained["steps"],
        "epochs": epochs,
        "train_runtime_s": seconds,
        "completion_tokens_trained": round(completion),
        "completion_tokens_per_s": round(completion / seconds, 1),
        "tokens_per_s": round(trained["tokens"] * epochs / seconds, 1),
        "train_loss": trained["train_loss"],
        "last_logged_loss": trained["last_logged_loss"],
        "loss_curve": captured,
        "adapter": Path(trained["adapter"]),
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    base = report["variants"]["padded-fp32"]
    lines = [
        "# Trainer speed: packing and bf16 (embedded SmolLM2-135M, CPU)",
        "",
        f"Written: {report['date']} · commit `{report['git']['commit'][:10]}` · "
        f"{report['machine']} · `{report['command']}`",
        "",
        f"Data: the first {s['problems']} GSM8K train problems, reference CoTs, compressed at "
        f"the paper's γ grid (heuristic scorer) and built into TokenSkip examples: "
        f"{base['examples']} trained on, the last {s['held_out']} held out. Each variant: a "
        f"fresh LoRA (r 8), lr {s['lr']}, {s['epochs']} epoch(s), {s['batch_size']} examples "
        "per step (packed: rows per step sized to hold about as many), seed 0; the variants "
        "ran one after another, alone on the machine (load averages below).",
        "",
        "| variant | precision | rows | rows/step | steps | train s | completion tok/s "
        "| all tok/s | speed-up | train loss | held-out loss | load avg before → after |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for name, v in report["variants"].items():
        speed = v["completion_tokens_per_s"] / base["completion_tokens_per_s"]
        lines.append(
            f"| {name} | {v['precision_used']} | {v['rows']} | {v['rows_per_step']} "
            f"| {v['steps']} "
            f"| {v['train_runtime_s']:.1f} | {v['completion_tokens_per_s']:.0f} "
            f"| {v['tokens_per_s']:.0f} | {speed:.2f}× | {v['train_loss']:.4f} "
            f"| {v['held_out_loss']:.4f} "
            f"| {' / '.join(f'{x:.2f}' for x in v['load_average_before'])} → "
            f"{' / '.join(f'{x:.2f}' for x in v['load_average_after'])} |"
        )
    lines += ["", "Loss curves (logged training loss by epoch):", ""]
    for name, v in report["variants"].items():
        points = ", ".join(f"{p['epoch']:.2f}: {p['loss']:.3f}" for p in v["loss_curve"])
        lines.append(f"- {name}: {points}")
    lines += ["", "Targets:", ""]
    for t in report["verdicts"]:
        lines.append(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['target']}: {t['value']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--problems", type=int, default=448)
    p.add_argument("--held-out", type=int, default=48)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "reports")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenskip.models import load_tokenizer
    from tokenskip.trainers.sft import read_pairs, tokenize_pair

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        built = build_data(work, args.data, args.problems)
        pairs = read_pairs(built)
        train, held = pairs[: -args.held_out], pairs[-args.held_out :]
        train_file = work / "train-part.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r in train))
        hf = load_tokenizer("smollm2")
        held_examples = [
            tokenize_pair(hf, r["prompt"], r["completion"], args.max_length) for r in held
        ]
        warm_up(held_examples[:4])
        variants = {}
        for name in args.variants.split(","):
            v = run_variant(name, train_file, work, args)
            v["held_out_loss"] = round(held_out_loss(v.pop("adapter"), held_examples), 4)
            variants[name] = v
            print(name, {k: v[k] for k in ("train_runtime_s", "completion_tokens_per_s",
                                            "train_loss", "held_out_loss")}, flush=True)  # fmt: skip
    base = variants["padded-fp32"]
    judged = variants.get(DEFAULT_VARIANT) or max(
        variants.values(), key=lambda v: v["completion_tokens_per_s"]
    )  # the default trainer, or the fastest variant run when it was left out
    speed = judged["completion_tokens_per_s"] / base["completion_tokens_per_s"]
    verdicts = [
        {"target": "training tokens/s of the default trainer >= 2x the padded fp32 trainer's",
         "value": f"{speed:.2f}x", "pass": speed >= 2.0},
        {"target": "held-out loss no worse than padded fp32 (+0.02)",
         "value": f"{judged['held_out_loss']:.4f} vs {base['held_out_loss']:.4f}",
         "pass": judged["held_out_loss"] <= base["held_out_loss"] + 0.02},
    ]  # fmt: skip
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "git": {
            "commit": git("rev-parse", "HEAD") or "?",
            "dirty": bool(git("status", "--porcelain")),
        },  # fmt: skip
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "settings": {
            k: getattr(args, k)
            for k in ("problems", "held_out", "epochs", "batch_size", "max_length", "lr")
        },  # fmt: skip
        "variants": variants,
        "verdicts": verdicts,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "train_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "train_speed.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
