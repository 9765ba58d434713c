"""``tokenskip eval``: argument parsing for GSM8K runs and report re-rendering."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from tokenskip.errors import InvalidInputError


def _float_list(value: str) -> tuple[float, ...]:
    from tokenskip.compress import check_ratio

    try:
        return tuple(check_ratio(v) for v in value.split(",") if v.strip())
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None


def _int_list(value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated token counts, got {value!r}"
        ) from None
    if not numbers or any(n <= 0 for n in numbers):
        raise argparse.ArgumentTypeError(f"token counts must be positive, got {value!r}")
    return numbers


def _str_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_eval_parser(subparsers: Any) -> None:
    from tokenskip.evaluation.run import DEFAULT_RATIOS, METHODS

    p = subparsers.add_parser("eval", help="GSM8K token-savings evaluation and reports")
    sub = p.add_subparsers(dest="eval_command", required=True, metavar="TASK")
    g = sub.add_parser(
        "gsm8k",
        help="run GSM8K: accuracy, CoT tokens, achieved ratio, latency per method and ratio",
        description="Evaluate a model on GSM8K at several keep ratios against baselines; writes run.json, README.md and PNG plots.",
    )
    g.add_argument(
        "--model",
        default="smollm2",
        help="local model (embedded name, HF directory, .gguf), or the served model name with --base-url (default: smollm2)",
    )
    g.add_argument(
        "--adapter", default=None, help="TokenSkip LoRA adapter directory (with tokenskip.json)"
    )
    g.add_argument(
        "--base-url",
        default=None,
        help="evaluate an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1",
    )
    g.add_argument("--api-key", default="unused", help="API key for --base-url")
    g.add_argument(
        "--tokenizer",
        default=None,
        help="model whose tokenizer counts CoT tokens (default: --model; smollm2 with --base-url)",
    )
    g.add_argument(
        "--data",
        default=None,
        help="GSM8K JSONL file or directory, or openai/gsm8k (default: ../shared/data/gsm8k)",
    )
    g.add_argument(
        "--split",
        default="test",
        choices=["test", "train"],
        help="split to evaluate (default: test)",
    )
    g.add_argument("--limit", type=int, default=None, help="first N problems only")
    g.add_argument(
        "--ratios",
        type=_float_list,
        default=DEFAULT_RATIOS,
        help="comma-separated keep ratios in (0, 1] (default: 1.0,0.9,0.8,0.7,0.6,0.5)",
    )
    g.add_argument(
        "--methods",
        type=_str_list,
        default=METHODS,
        help=f"comma-separated methods (default: all of {','.join(METHODS)}; inapplicable ones are skipped and reported)",
    )
    g.add_argument(
        "--max-new-tokens",
        type=_int_list,
        default=(256, 512),
        help="comma-separated generation caps to report accuracy at (default: 256,512)",
    )
    g.add_argument(
        "--instruction-budgets",
        type=_int_list,
        default=None,
        help="the caps instruction-budget generates at (each a full run; default: every "
        "--max-new-tokens cap)",
    )
    g.add_argument(
        "--batch-size", type=int, default=8, help="samples generated together (default: 8)"
    )
    g.add_argument("--shots", type=int, default=0, help="k-shot exemplars from train (default: 0)")
    g.add_argument(
        "--scorer",
        default="heuristic",
        help="scorer of the prompt-compression baseline: heuristic, self-info, self-info:MODEL "
        "or classifier:DIR (default: heuristic)",
    )
    g.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="weights of a local model (default: float32; bfloat16 is ~2-3x faster on CPUs "
        "with AVX-512 BF16)",
    )
    g.add_argument(
        "--force-cue",
        default=None,
        help="budget forcing: the text appended at the budget (default: a blank line, then "
        "'Final answer:')",
    )
    g.add_argument(
        "--force-answer-tokens",
        type=int,
        default=None,
        help="budget forcing: the most tokens written after the cue (default: 32)",
    )
    g.add_argument(
        "--latency-samples",
        type=int,
        default=5,
        help="samples per config re-run at batch size 1 for latency (default: 5; 0 skips)",
    )
    g.add_argument(
        "--price-per-1k-output",
        type=float,
        default=0.0006,
        help="USD per 1,000 output tokens for the cost of savings (default: 0.0006)",
    )
    g.add_argument(
        "--out",
        default="runs/gsm8k",
        help="output directory: cache.jsonl, run.json, README.md, plots (default: runs/gsm8k, "
        "which git ignores)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.set_defaults(run=run_gsm8k)
    r = sub.add_parser("report", help="re-render README.md and plots from a run.json")
    r.add_argument("run_json", help="path to a run.json written by `tokenskip eval gsm8k`")
    r.set_defaults(run=run_report)


def run_gsm8k(args: argparse.Namespace) -> int:
    from tokenskip.evaluation.run import EvalConfig, run_eval

    if args.limit is not None and args.limit <= 0:
        raise InvalidInputError(f"--limit must be positive, got {args.limit}")
    config = EvalConfig(
        model=args.model,
        adapter=args.adapter,
        base_url=args.base_url,
        api_key=args.api_key,
        tokenizer=args.tokenizer,
        data=args.data,
        split=args.split,
        limit=args.limit,
        ratios=args.ratios,
        methods=args.methods,
        budgets=args.max_new_tokens,
        instruction_budgets=args.instruction_budgets,
        batch_size=args.batch_size,
        shots=args.shots,
        scorer=args.scorer,
        dtype=args.dtype,
        latency_samples=args.latency_samples,
        price_per_1k_output=args.price_per_1k_output,
        out_dir=args.out,
        **({"force_cue": args.force_cue} if args.force_cue is not None else {}),
        **(
            {"force_answer_tokens": args.force_answer_tokens}
            if args.force_answer_tokens is not None
            else {}
        ),
    )
    command = "tokenskip " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    run = run_eval(config, command=command, progress=not args.no_progress)
    from pathlib import Path

    print(Path(run["paths"]["markdown"]).read_text())
    print(f"wrote {', '.join(run['paths'].values())}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tokenskip.evaluation.report import load_run, render_markdown, render_plots

    run = load_run(args.run_json)
    if "meta" not in run or "rows" not in run:
        raise InvalidInputError(f"{args.run_json} is not a tokenskip eval run (no meta/rows)")
    out = Path(args.run_json).parent
    (out / "README.md").write_text(render_markdown(run))
    paths = render_plots(run, out)
    print(f"wrote {out / 'README.md'}, {', '.join(map(str, paths))}")
    return 0
