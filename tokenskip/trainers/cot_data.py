"""TokenSkip training data, in three stages that each write a JSONL you can read and reuse.

1. :func:`collect_cots`: one chain of thought per training problem, from the target model
   (greedy, batched; kept only when its answer is right and it is short enough) or from the
   dataset's reference solutions. Every outcome is recorded, so a rerun skips what is done.
2. :func:`compress_cots`: each kept CoT's reasoning compressed with the core at every γ of
   the grid (the final-answer line stays verbatim), scored once per CoT.
3. :func:`build_examples`: one γ drawn per CoT (the grid plus 1.0, as in the paper), and the
   example written in the model's chat template: the prompt is the question + DELIM + γ +
   DELIM (nothing at γ = 1.0) in the evaluation's zero-shot format, the completion is the
   compressed reasoning + the answer line + the end of the assistant turn.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokenskip.compress import check_ratio
from tokenskip.errors import InvalidInputError
from tokenskip.progress import progress_bar
from tokenskip.provenance import portable_path
from tokenskip.tasks import gsm8k

DEFAULT_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)


def check_grid(grid: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """A sorted, duplicate-free γ grid, every value in (0, 1)."""
    if not grid:
        raise InvalidInputError("the γ grid is empty")
    values = []
    for g in grid:
        try:
            values.append(check_ratio(g))
        except InvalidInputError as exc:
            raise InvalidInputError(f"γ grid {list(grid)}: {exc}") from None
    values = sorted(set(values))
    if 1.0 in values:
        values.remove(1.0)  # γ = 1.0 is the uncompressed CoT, always part of the mix
    if not values:
        raise InvalidInputError("the γ grid needs at least one value below 1.0")
    return tuple(values)


# ---------------------------------------------------------------------------- JSONL helpers


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a stage file; a line cut by a crash (the last one) is skipped."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # the sample in flight when a run died: it is redone
            raise InvalidInputError(
                f"{path}:{number}: corrupt record; delete the file to redo the stage"
            ) from None
        yield record


class JsonlWriter:
    """Appends one record per line and flushes it, so a crash loses at most one record."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # A record torn by a crash (no final newline) is cut off: its sample is redone.
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with path.open("r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self._f = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- 1. collect


@dataclass
class CollectConfig:
    model: str
    """The target model (its tokenizer counts lengths; with ``source="model"`` it generates)."""
    out_file: str
    data: str | None = None
    """GSM8K JSONL file or directory, or ``openai/gsm8k`` (default: the shared copy)."""
    split: str = "train"
    limit: int | None = None
    source: Literal["model", "reference"] = "model"
    max_cot_tokens: int = 500
    max_new_tokens: int = 512
    batch_size: int = 16
    on_bad_record: Literal["raise", "skip"] = "raise"

    def __post_init__(self) -> None:
        if self.source not in ("model", "reference"):
            raise InvalidInputError(
                f"cot source must be 'model' or 'reference', got {self.source!r}"
            )
        for name in ("max_cot_tokens", "max_new_tokens", "batch_size"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}")


def collect_cots(
    config: CollectConfig, *, progress: bool = True, tokenizer: Any = None
) -> dict[str, Any]:
    """Write one record per problem to ``out_file``: the CoT, whether it is kept, and why not.

    Problems already in the file are skipped, so an interrupted collection resumes.
    """
    from tokenskip.models import load_tokenizer
    from tokenskip.tokens import TextTokenizer

    dataset = gsm8k.load_gsm8k(
        config.data, split=config.split, limit=config.limit, on_error=config.on_bad_record
    )
    out = Path(config.out_file)
    done = {r["index"] for r in read_jsonl(out)}
    todo = [p for p in dataset.problems if p.index not in done]
    hf = tokenizer if tokenizer is not None else load_tokenizer(config.model)
    target = TextTokenizer(hf, name=config.model)

    def record(problem: gsm8k.Problem, text: str, finished: bool) -> dict[str, Any]:
        predicted = gsm8k.extract_answer(text)
        tokens = target.count(text)
        if not finished:
            reason = "cut off at max_new_tokens"
        elif not gsm8k.is_correct(predicted, problem.answer):
            reason = f"wrong answer ({predicted!r}, reference {problem.answer})"
        elif tokens > config.max_cot_tokens:
            reason = f"{tokens} tokens > {config.max_cot_tokens}"
        elif not gsm8k.cot_and_answer(text)[0].strip():
            reason = "no reasoning before the answer"
        else:
            reason = None
        return {
            "index": problem.index,
            "question": problem.question,
            "answer": problem.answer,
            "cot": text,
            "tokens": tokens,
            "source": config.source,
            "kept": reason is None,
            "reason": reason,
        }

    with JsonlWriter(out) as writer, progress_bar(len(todo), "collect CoTs", progress) as bar:
        if config.source == "reference":
            for p in todo:
                writer.write(record(p, gsm8k.strip_calculator(p.solution).strip(), True))
                bar.update(1)
        elif todo:
            from tokenskip.runtime.generate import LocalGenerator, Prompt

            generator = LocalGenerator(config.model, batch_size=config.batch_size)
            try:
                prompts = [Prompt(tuple(gsm8k.build_messages(p.question))) for p in todo]

                def store(i: int, g: Any) -> None:
                    writer.write(record(todo[i], g.text.strip(), g.finished))
                    bar.update(1)

                generator.generate(prompts, config.max_new_tokens, on_result=store)
            finally:
                generator.close()
    records = list(read_jsonl(out))
    kept = [r for r in records if r["kept"]]
    return {
        "file": str(out),
        "source": config.source,
        "dataset": portable_path(dataset.source),
        "dataset_sha256": dataset.sha256,
        "problems": len(records),
        "kept": len(kept),
        "skipped_records": list(dataset.skipped),
        "mean_kept_tokens": round(sum(r["tokens"] for r in kept) / len(kept), 2) if kept else 0,
    }


# ---------------------------------------------------------------------------- 2. compress


@dataclass
class CompressConfig:
    model: str
    """The target model: its tokenizer counts tokens; self-info scores with it."""
    cots_file: str
    out_file: str
    grid: tuple[float, ...] = DEFAULT_GRID
    scorer: str = "self-info"
    scorer_model: str | None = None
    allow_download: bool = False

    def __post_init__(self) -> None:
        self.grid = check_grid(self.grid)
        from tokenskip.scorers import SCORER_NAMES

        if self.scorer not in SCORER_NAMES:
            raise InvalidInputError(
                f"unknown scorer {self.scorer!r}; choose one of {', '.join(SCORER_NAMES)}"
            )


def compress_cots(
    config: CompressConfig,
    *,
    progress: bool = True,
    loaded: Any = None,
) -> dict[str, Any]:
    """Write, per kept CoT, its reasoning compressed at every γ of the grid.

    Each CoT is scored once (a :class:`CachedScorer` serves the other ratios). CoTs already
    in ``out_file`` are skipped.
    """
    from tokenskip.compress import compress_cot
    from tokenskip.models import load_model, load_tokenizer
    from tokenskip.scorers import CachedScorer, build_scorer
    from tokenskip.tokens import TextTokenizer

    cots = [r for r in read_jsonl(Path(config.cots_file)) if r.get("kept")]
    if not cots:
        raise InvalidInputError(f"{config.cots_file} holds no kept CoTs to compress")
    out = Path(config.out_file)
    done = {r["index"] for r in read_jsonl(out)}
    todo = [r for r in cots if r["index"] not in done]
    if todo:
        needs_lm = config.scorer == "self-info" and config.scorer_model is None
        if loaded is None and needs_lm:
            loaded = load_model(config.model, allow_download=config.allow_download)
        hf = loaded.tokenizer if loaded is not None else load_tokenizer(config.model)
        target = TextTokenizer(hf, name=config.model)
        scorer = CachedScorer(
            build_scorer(
                config.scorer,
                tokenizer=target,
                lm=loaded.model if loaded is not None else None,
                scorer_model=config.scorer_model,
                allow_download=config.allow_download,
            ),
            max_entries=8,
        )
        with JsonlWriter(out) as writer, progress_bar(len(todo), "compress CoTs", progress) as bar:
            for r in todo:
                versions = {}
                for gamma in config.grid:
                    result = compress_cot(r["cot"], gamma, tokenizer=target, scorer=scorer)
                    versions[f"{gamma:g}"] = {
                        "text": result.text,
                        "reasoning_tokens": result.reasoning.original_tokens,
                        "kept_tokens": result.reasoning.kept_tokens,
                        "achieved_ratio": round(result.reasoning.achieved_ratio, 4),
                    }
                writer.write(
                    {
                        "index": r["index"],
                        "question": r["question"],
                        "answer": r["answer"],
                        "cot": r["cot"],
                        "compressed": versions,
                    }
                )
                bar.update(1)
    records = list(read_jsonl(out))
    achieved = {
        f"{g:g}": round(
            sum(r["compressed"][f"{g:g}"]["achieved_ratio"] for r in records) / len(records), 4
        )
        for g in config.grid
    }
    return {
        "file": str(out),
        "cots": len(records),
        "scorer": config.scorer,
        "scorer_model": config.scorer_model,
        "grid": list(config.grid),
        "mean_achieved_ratio": achieved,
    }


# ---------------------------------------------------------------------------- 3. build


@dataclass
class BuildConfig:
    model: str
    """Whose chat template writes the examples."""
    compressed_file: str
    out_file: str
    delimiter: str | None = None
    """The TokenSkip delimiter (default: the tokenizer's end-of-turn token)."""
    include_original: bool = True
    """Draw γ from the grid plus 1.0 (the uncompressed CoT), as the paper does."""
    instruction: str = gsm8k.INSTRUCTION
    """The system turn; the evaluation's zero-shot prompt uses the same one."""
    seed: int = 0


def example_completion(hf: Any, prompt_messages: list[dict[str, str]], answer_text: str) -> str:
    """What follows the prompt in the chat template: the answer and the end of the turn."""
    prompt = hf.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full = hf.apply_chat_template(
        prompt_messages + [{"role": "assistant", "content": answer_text}], tokenize=False
    )
    if not full.startswith(prompt) or answer_text not in full[len(prompt) :]:
        raise InvalidInputError(
            "this chat template rewrites the assistant turn; cannot split prompt and completion"
        )
    return full[len(prompt) :]


def build_examples(config: BuildConfig, *, tokenizer: Any = None) -> dict[str, Any]:
    """Write the training pairs (one γ per CoT) to ``out_file``, replacing it."""
    from tokenskip.models import load_tokenizer
    from tokenskip.ratio_prompt import check_delimiter, default_delimiter, ratio_suffix

    hf = tokenizer if tokenizer is not None else load_tokenizer(config.model)
    delimiter = config.delimiter or default_delimiter(hf)
    check_delimiter(hf, delimiter)
    records = list(read_jsonl(Path(config.compressed_file)))
    if not records:
        raise InvalidInputError(f"{config.compressed_file} holds no compressed CoTs")
    rng = random.Random(config.seed)
    out = Path(config.out_file)
    tmp = out.with_suffix(".tmp")
    counts: dict[str, int] = {}
    with JsonlWriter(tmp) as writer:
        for r in records:
            choices = sorted(r["compressed"], key=float) + (
                ["1"] if config.include_original else []
            )
            key = rng.choice(choices)
            gamma = float(key)
            text = r["cot"] if key == "1" else r["compressed"][key]["text"]
            messages = gsm8k.build_messages(r["question"], instruction=config.instruction)
            messages[-1]["content"] += ratio_suffix(gamma, delimiter)
            prompt = str(
                hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
            writer.write(
                {
                    "index": r["index"],
                    "gamma": gamma,
                    "prompt": prompt,
                    "completion": example_completion(hf, messages, text),
                }
            )
            counts[f"{gamma:g}"] = counts.get(f"{gamma:g}", 0) + 1
    tmp.replace(out)
    return {
        "file": str(out),
        "examples": len(records),
        "delimiter": delimiter,
        "gamma_counts": dict(sorted(counts.items(), key=lambda kv: float(kv[0]))),
        "include_original": config.include_original,
    }
