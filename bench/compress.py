"""Benchmark of the compression core on GSM8K train solutions: throughput and ratio fidelity.

What it measures, for each scorer (heuristic, self-information under the embedded SmolLM2, and a
random-weight BERT-base-shaped token classifier standing in for LLMLingua-2):

1. Throughput. Scorer only: scorer tokens per second spent inside ``scorer.score(ids)``.
   End to end: ``compress_cot(text, 0.6)`` reasoning tokens (target tokenizer) per wall second.
2. Ratio fidelity of ``compress_cot`` at γ ∈ {0.5, …, 0.9}: the mean achieved keep ratio of the
   reasoning against γ with force-keep off, and against max(γ, forced ratio) with the default
   math force-keep; plus how often every number and the ``####`` answer line survive.

Every count is in the target (SmolLM2) tokenizer. The classifier's weights are random, so its
scores are meaningless: it measures throughput and the tokenizer-mismatch path only.

Writes ``compress_bench.json`` (raw numbers and metadata) and ``compress_bench.md`` (rendered
from the JSON) under ``--out-dir``. Runs offline; a few minutes at ``--limit 100`` on 2 cores.

Torch runs one intra-op thread by default (``--threads``): on a 2-core machine where another
process holds a core, two threads made SmolLM2's small matmuls ~16× slower (every op waits at a
barrier for the descheduled thread), which measures the neighbour, not the code. The load
average before and after the run is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from provenance import command_line, git

from tokenskip import MATH, NONE, ForceKeep, compress_cot
from tokenskip.scorers import (
    CachedScorer,
    HeuristicScorer,
    Scorer,
    SelfInfoScorer,
    TokenClassifierScorer,
)
from tokenskip.tokens import TextTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)
THROUGHPUT_RATIO = 0.6
TOLERANCE = 0.02
TARGET_MODEL = "smollm2"
CLASSIFIER_LABEL = (
    "random-weight BERT-base-shaped stand-in for LLMLingua-2 (throughput only; scores meaningless)"
)
CLASSIFIER_SEED = 0
WORDPIECE_VOCAB = 8000
EXIT_USAGE = 2
DEFAULT_THREADS = 1

_CALCULATOR = re.compile(r"<<[^>]*>>")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


# --- data -------------------------------------------------------------------------------------


def load_solutions(path: Path, limit: int) -> list[str]:
    """The first ``limit`` GSM8K answers with their ``<<...>>`` calculator annotations removed."""
    solutions = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(solutions) >= limit:
                break
            if line.strip():
                solutions.append(_CALCULATOR.sub("", json.loads(line)["answer"]))
    return solutions


def load_corpus(path: Path) -> list[str]:
    """Every GSM8K train answer (annotations removed): the WordPiece training corpus."""
    with path.open(encoding="utf-8") as f:
        return [_CALCULATOR.sub("", json.loads(line)["answer"]) for line in f if line.strip()]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- scorers ----------------------------------------------------------------------------------


def build_classifier_scorer(corpus: list[str]) -> TokenClassifierScorer:
    """Random BERT-base-shaped token classifier over a WordPiece vocabulary trained on ``corpus``."""
    from transformers import BertConfig, BertForTokenClassification

    from tokenskip.testing import make_wordpiece_tokenizer

    wordpiece = make_wordpiece_tokenizer(corpus, vocab_size=WORDPIECE_VOCAB)
    torch.manual_seed(CLASSIFIER_SEED)
    config = BertConfig(
        vocab_size=len(wordpiece),
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        num_labels=2,
    )
    model = BertForTokenClassification(config).eval()
    return TokenClassifierScorer(model, TextTokenizer(wordpiece, name="wordpiece-random"))


def build_scorers(lm: Any, target: TextTokenizer, corpus: list[str]) -> dict[str, Scorer]:
    return {
        "heuristic": HeuristicScorer(target),
        "self-info": SelfInfoScorer(lm, target),
        "classifier": build_classifier_scorer(corpus),
    }


def describe_scorer(name: str, scorer: Scorer) -> dict[str, Any]:
    info: dict[str, Any] = {"name": name, "tokenizer": scorer.tokenizer.name}
    model = getattr(scorer, "model", None)
    if model is not None:
        info["parameters"] = sum(p.numel() for p in model.parameters())
    if name == "classifier":
        info["label"] = CLASSIFIER_LABEL
        vocab = sorted(scorer.tokenizer.hf.get_vocab().items(), key=lambda kv: kv[1])
        info["wordpiece_vocab_size"] = len(vocab)
        # Recorded so two reports can be checked to have used the same vocabulary.
        info["wordpiece_vocab_sha256"] = hashlib.sha256(json.dumps(vocab).encode()).hexdigest()
        info["seed"] = CLASSIFIER_SEED
    elif name == "self-info":
        info["model"] = TARGET_MODEL
    return info


# --- measurements -----------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def scorer_throughput(scorer: Scorer, texts: list[str]) -> dict[str, Any]:
    """Scorer tokens per second inside ``scorer.score`` (tokenization excluded)."""
    encoded = [scorer.tokenizer.encode(text).ids for text in texts]
    scorer.score(encoded[0])  # warmup
    seconds = [timed(lambda ids=ids: scorer.score(ids))[1] for ids in encoded]
    num_tokens = sum(len(ids) for ids in encoded)
    total = sum(seconds)
    return {
        "num_texts": len(texts),
        "num_scorer_tokens": num_tokens,
        "seconds": total,
        "tokens_per_second": num_tokens / total,
        "median_ms_per_text": 1000 * statistics.median(seconds),
    }


def end_to_end_throughput(
    scorer: Scorer, texts: list[str], target: TextTokenizer
) -> dict[str, Any]:
    """Reasoning tokens (target tokenizer) per wall second of ``compress_cot`` at γ = 0.6."""

    def run(text: str) -> Any:
        return compress_cot(text, THROUGHPUT_RATIO, tokenizer=target, scorer=scorer)

    run(texts[0])  # warmup
    start = time.perf_counter()
    results = [run(text) for text in texts]
    total = time.perf_counter() - start
    num_tokens = sum(r.reasoning.original_tokens for r in results)
    return {
        "ratio": THROUGHPUT_RATIO,
        "force": "MATH",
        "num_texts": len(texts),
        "num_target_tokens": num_tokens,
        "seconds": total,
        "tokens_per_second": num_tokens / total,
        "texts_per_second": len(texts) / total,
    }


def numbers_survive(original: str, compressed: str) -> bool:
    """Every number of ``original`` is in ``compressed`` (as a multiset)."""
    missing = Counter(_NUMBER.findall(original)) - Counter(_NUMBER.findall(compressed))
    return not missing


def answer_line_intact(original: str, compressed: str) -> bool:
    return compressed.splitlines()[-1:] == original.splitlines()[-1:]


def fidelity_point(
    scorer: Scorer, texts: list[str], target: TextTokenizer, ratio: float, force: ForceKeep
) -> dict[str, Any]:
    """Achieved vs requested (or forced-floor) ratio of the reasoning, over all texts."""
    results = [compress_cot(t, ratio, tokenizer=target, scorer=scorer, force=force) for t in texts]
    achieved = [r.reasoning.achieved_ratio for r in results]
    forced = [r.reasoning.forced_ratio for r in results]
    expected = [max(ratio, f) for f in forced]
    mean_achieved = statistics.fmean(achieved)
    mean_expected = statistics.fmean(expected)
    error = abs(mean_achieved - mean_expected)
    return {
        "mean_achieved": mean_achieved,
        "std_achieved": statistics.pstdev(achieved),
        "mean_expected": mean_expected,
        "abs_error": error,
        "passed": error <= TOLERANCE,
        "max_abs_error_per_text": max(abs(a - e) for a, e in zip(achieved, expected, strict=True)),
        "mean_forced_ratio": statistics.fmean(forced),
        "share_numbers_survive": statistics.fmean(
            numbers_survive(t, r.text) for t, r in zip(texts, results, strict=True)
        ),
        "share_answer_line_intact": statistics.fmean(
            answer_line_intact(t, r.text) for t, r in zip(texts, results, strict=True)
        ),
        "per_text": {
            "original_tokens": [r.reasoning.original_tokens for r in results],
            "kept_tokens": [r.reasoning.kept_tokens for r in results],
            "forced_tokens": [r.reasoning.forced_tokens for r in results],
        },
    }


def fidelity(scorer: Scorer, texts: list[str], target: TextTokenizer) -> dict[str, Any]:
    """The γ grid × {no force-keep, math force-keep}; each text is scored once and reused.

    Scores do not depend on γ, so the library's :class:`CachedScorer` (sized to hold every
    text) serves all but the first compression of each text; its hit/miss counts are kept as
    a check that nothing was scored twice.
    """
    cached = CachedScorer(scorer, max_entries=len(texts))
    rows = []
    for ratio in RATIOS:
        row: dict[str, Any] = {"ratio": ratio}
        for label, force in (("none", NONE), ("math", MATH)):
            row[label] = fidelity_point(cached, texts, target, ratio, force)
        rows.append(row)
    return {"rows": rows, "cache": {"hits": cached.hits, "misses": cached.misses}}


def bench_scorer(
    name: str, scorer: Scorer, texts: list[str], target: TextTokenizer
) -> dict[str, Any]:
    print(f"[{name}] scorer-only throughput", flush=True)
    scoring = scorer_throughput(scorer, texts)
    print(f"[{name}] end-to-end throughput", flush=True)
    end_to_end = end_to_end_throughput(scorer, texts, target)
    print(f"[{name}] ratio fidelity", flush=True)
    grid, seconds = timed(lambda: fidelity(scorer, texts, target))
    return {
        "scorer": describe_scorer(name, scorer),
        "scorer_only": scoring,
        "end_to_end": end_to_end,
        "fidelity": grid["rows"],
        "fidelity_cache": grid["cache"],
        "fidelity_seconds": seconds,
    }


# --- metadata ---------------------------------------------------------------------------------


def metadata(
    args: argparse.Namespace, data: Path, num_texts: int, load_start: list[float]
) -> dict[str, Any]:
    import transformers

    status = git("status", "--porcelain")
    return {
        "command": command_line(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_start,
        "load_average_end": list(os.getloadavg()),
        "limit": args.limit,
        "num_texts": num_texts,
        "dataset": str(data),
        "dataset_sha256": sha256(data),
        "target_model": TARGET_MODEL,
        "ratios": list(RATIOS),
        "tolerance": TOLERANCE,
    }


# --- report -----------------------------------------------------------------------------------


def render_markdown(report: dict[str, Any]) -> str:
    meta = report["metadata"]
    lines = [
        "# Compression core benchmark (GSM8K train solutions)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Commit: `{meta['git_commit']}`{' (working tree dirty)' if meta['git_dirty'] else ''}  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['processor']}, {meta['cpu_count']} CPUs, torch threads: "
        f"{meta['torch_threads']}, {meta['platform']}; Python {meta['python']}, torch {meta['torch']}, "
        f"transformers {meta['transformers']}  ",
        f"Load average (1/5/15 min) at start: {_loads(meta['load_average_start'])}, at end: "
        f"{_loads(meta['load_average_end'])}  ",
        f"Data: first {meta['num_texts']} solutions of `{meta['dataset']}` (sha256 "
        f"`{meta['dataset_sha256'][:16]}…`), `<<…>>` calculator annotations removed  ",
        f"Target tokenizer (all keep ratios): {meta['target_model']}  ",
        f"Total runtime: {report['total_seconds']:.0f} s",
        "",
        f"Classifier scorer: {CLASSIFIER_LABEL}. Its WordPiece tokenizer (built deterministically "
        "from the GSM8K train answers) differs from the target tokenizer, which exercises the "
        "mismatch path.",
        "",
        "## Throughput",
        "",
        "Scorer only: scorer tokens / seconds inside `scorer.score(ids)` over whole solutions. "
        f"End to end: `compress_cot(text, {THROUGHPUT_RATIO})` with math force-keep, reasoning "
        "tokens (target tokenizer) / wall seconds. One warmup call each. Timings are on a "
        "shared machine: read them with the load average above.",
        "",
        "| scorer | scorer tokenizer | scorer tokens | scorer-only s | scorer tok/s "
        "| median ms/text | e2e target tokens | e2e s | e2e tok/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["scorers"]:
        s, e = run["scorer_only"], run["end_to_end"]
        lines.append(
            f"| {run['scorer']['name']} | {run['scorer']['tokenizer']} | {s['num_scorer_tokens']:,} "
            f"| {s['seconds']:.2f} | {s['tokens_per_second']:,.0f} | {s['median_ms_per_text']:.1f} "
            f"| {e['num_target_tokens']:,} | {e['seconds']:.2f} | {e['tokens_per_second']:,.0f} |"
        )
    lines += [
        "",
        "## Ratio fidelity (reasoning only; the `####` line is kept verbatim)",
        "",
        f"Pass: mean achieved ratio within ±{TOLERANCE} of the expected one. Force-keep off: "
        "expected = γ. Math force-keep (numbers, operators, answer line): expected = mean over "
        "texts of max(γ, forced ratio). Numbers kept: share of texts whose every number "
        "(`\\d+(?:[.,]\\d+)*`, as a multiset) survives. Answer line: share whose last line is "
        "unchanged.",
        "",
        "| scorer | γ | off: achieved ± std | off: abs err | off | math: achieved ± std "
        "| math: expected | math: abs err | math | math: numbers kept | math: answer line "
        "| off: numbers kept |",
        "|---|---:|---:|---:|:-:|---:|---:|---:|:-:|---:|---:|---:|",
    ]
    for run in report["scorers"]:
        for row in run["fidelity"]:
            off, on = row["none"], row["math"]
            lines.append(
                f"| {run['scorer']['name']} | {row['ratio']:.1f} "
                f"| {off['mean_achieved']:.4f} ± {off['std_achieved']:.3f} | {off['abs_error']:.4f} "
                f"| {_verdict(off)} "
                f"| {on['mean_achieved']:.4f} ± {on['std_achieved']:.3f} | {on['mean_expected']:.4f} "
                f"| {on['abs_error']:.4f} | {_verdict(on)} "
                f"| {on['share_numbers_survive']:.0%} | {on['share_answer_line_intact']:.0%} "
                f"| {off['share_numbers_survive']:.0%} |"
            )
    return "\n".join(lines) + "\n"


def _loads(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _verdict(point: dict[str, Any]) -> str:
    return "pass" if point["passed"] else "**FAIL**"


# --- entry point ------------------------------------------------------------------------------


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for integers ``>= minimum``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value!r}")
        return number

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the compression core on GSM8K train solutions: scorer and "
        "end-to-end throughput, and keep-ratio fidelity of compress_cot per scorer and γ.",
    )
    parser.add_argument(
        "--limit",
        type=int_at_least(1),
        default=100,
        help="number of GSM8K train solutions to use, from the top of the file (default: 100)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("reports"),
        help="directory for compress_bench.json and compress_bench.md (default: reports)",
    )
    parser.add_argument(
        "--threads",
        type=int_at_least(0),
        default=DEFAULT_THREADS,
        help="torch intra-op threads; 0 keeps torch's default of one per core, faster on an "
        "idle machine (default: 1, which stays fast when another process shares the CPU)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="GSM8K train.jsonl with an 'answer' field per line "
        "(default: ../shared/data/gsm8k/train.jsonl beside the repository)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"error: GSM8K data file not found: {args.data}", file=sys.stderr)
        return EXIT_USAGE
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    from tokenskip.models import load_model

    started = time.perf_counter()
    texts = load_solutions(args.data, args.limit)
    print(f"loaded {len(texts)} solutions; loading {TARGET_MODEL}", flush=True)
    lm, load_seconds = timed(lambda: load_model(TARGET_MODEL))
    target = TextTokenizer(lm.tokenizer, name=TARGET_MODEL)
    print("building scorers (WordPiece training, random BERT-base)", flush=True)
    scorers, build_seconds = timed(lambda: build_scorers(lm.model, target, load_corpus(args.data)))
    runs = [bench_scorer(name, scorer, texts, target) for name, scorer in scorers.items()]
    report = {
        "metadata": metadata(args, args.data, len(texts), load_start),
        "setup_seconds": {"load_target_model": load_seconds, "build_scorers": build_seconds},
        "scorers": runs,
        "total_seconds": time.perf_counter() - started,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / "compress_bench.json", args.out_dir / "compress_bench.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    print(f"wrote {json_path} and {md_path} in {report['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
