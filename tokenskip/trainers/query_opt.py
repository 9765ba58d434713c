"""``tokenskip train query-opt``: teach a model the multi-query answer format (Query-OPT).

Stages, each writing a JSONL you can read, in one run directory::

    run.json       the run's configuration (a rerun must match it: it resumes)
    answers.jsonl  with --answer-source model: the model's own answer to each query asked
                   alone (resumable); the format is what is learnt, not new content
    groups.jsonl   {context, queries, answers} records, N queries per group
    train.jsonl    prompt (context + numbered queries, in the chat template) / completion
                   (the marked JSON array of answers)
    adapter/       the peft adapter + query_opt.json

The built-in data set is GSM8K: a shared k-shot CoT prompt (exemplars from train) is the
context and groups of other train questions are the queries. Any JSONL of
``{"context", "queries", "answers"}`` records works too (e.g. QMSum regrouped by meeting).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tokenskip.errors import InvalidInputError
from tokenskip.multi_query import build_messages, format_answers, make_queries, single_messages
from tokenskip.progress import progress_bar
from tokenskip.provenance import portable_path
from tokenskip.tasks import gsm8k
from tokenskip.trainers.cot_data import JsonlWriter, example_completion, read_jsonl
from tokenskip.trainers.runs import (
    claim_run_dir,
    is_main_process,
    on_main_process_first,
    write_adapter_meta,
)
from tokenskip.trainers.sft import SFTConfig, TrainSettings, train_lora

META_FILE = "query_opt.json"
META_FORMAT = "tokenskip-query-opt/1"


@dataclass
class QueryOptConfig:
    model: str
    out_dir: str
    data: str | None = None
    """None: GSM8K (``gsm8k_data``, default the shared copy); else a {context, queries,
    answers} JSONL."""
    gsm8k_data: str | None = None
    split: str = "train"
    limit: int | None = None
    """First N records (GSM8K problems, or groups of a JSONL)."""
    shots: int = 8
    min_queries: int = 2
    max_queries: int = 8
    groups: int = 500
    """GSM8K groups to build (each a fresh draw of N questions)."""
    group_seed: int | None = None
    """Seed for drawing the groups (None: the training seed). The context's exemplars always
    follow the training seed, so a different group seed gives fresh groups over the same
    context (e.g. to continue an adapter with ``train.init_adapter``)."""
    answer_source: Literal["reference", "model"] = "reference"
    answer_max_new_tokens: int = 256
    batch_size: int = 16
    on_bad_record: Literal["raise", "skip"] = "raise"
    train: TrainSettings = field(default_factory=lambda: TrainSettings(max_length=4096))
    allow_download: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.min_queries <= self.max_queries:
            raise InvalidInputError(
                f"need 1 <= min_queries <= max_queries, got {self.min_queries}..{self.max_queries}"
            )
        if self.answer_source not in ("reference", "model"):
            raise InvalidInputError(
                f"answer source must be reference or model: {self.answer_source}"
            )
        if self.groups <= 0 or self.shots < 0:
            raise InvalidInputError("groups must be positive and shots >= 0")


def gsm8k_context(shots: tuple[gsm8k.Problem, ...]) -> str:
    """The shared k-shot CoT prompt that every query of a group is asked against."""
    parts = [gsm8k.INSTRUCTION, ""]
    for s in shots:
        parts += [f"Question: {s.question}", f"Answer: {gsm8k.strip_calculator(s.solution)}", ""]
    return "\n".join(parts).rstrip()


def _read_groups(path: Path, limit: int | None, on_error: str) -> tuple[list[dict], list[str]]:
    """Validated {context, queries, answers} records; bad lines named by file:line."""
    if not path.is_file():
        raise InvalidInputError(f"data file not found: {path}")
    groups, skipped = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            ok = (
                isinstance(r, dict)
                and isinstance(r.get("context"), str)
                and r["context"].strip()
                and isinstance(r.get("queries"), list)
                and isinstance(r.get("answers"), list)
                and r["queries"]
                and len(r["queries"]) == len(r["answers"])
                and all(isinstance(x, str) and x.strip() for x in r["queries"] + r["answers"])
            )
            if not ok:
                raise ValueError(
                    "expected {context: str, queries: [str], answers: [str]} of equal lengths"
                )
        except ValueError as exc:
            message = f"{path}:{number}: {exc}"
            if on_error == "raise":
                raise InvalidInputError(message) from None
            skipped.append(message)
            continue
        groups.append({"context": r["context"], "queries": r["queries"], "answers": r["answers"]})
        if limit is not None and len(groups) >= limit:
            break
    if not groups:
        raise InvalidInputError(f"{path} holds no usable groups")
    return groups, skipped


def _model_answers(
    config: QueryOptConfig, context: str, pool: list[gsm8k.Problem], progress: bool
) -> dict[int, str]:
    """The model's own single-query answers, cached in answers.jsonl (resumable)."""
    from tokenskip.runtime.generate import LocalGenerator, Prompt

    out = Path(config.out_dir) / "answers.jsonl"
    done = {r["index"]: r["answer"] for r in read_jsonl(out)}
    todo = [p for p in pool if p.index not in done]
    if todo:
        generator = LocalGenerator(config.model, batch_size=config.batch_size)
        bar = progress_bar(len(todo), "single-query answers", progress)
        try:
            with JsonlWriter(out) as writer:

                def store(i: int, g: Any) -> None:
                    writer.write({"index": todo[i].index, "answer": g.text.strip()})
                    done[todo[i].index] = g.text.strip()
                    bar.update(1)

                prompts = [Prompt(tuple(single_messages(context, p.question))) for p in todo]
                generator.generate(prompts, config.answer_max_new_tokens, on_result=store)
        finally:
            bar.close()
            generator.close()
    return done


def build_groups(config: QueryOptConfig, *, progress: bool = True) -> dict[str, Any]:
    """Write groups.jsonl: the GSM8K groups (or the user's JSONL, checked)."""
    out = Path(config.out_dir) / "groups.jsonl"
    rng = random.Random(config.train.seed if config.group_seed is None else config.group_seed)
    if config.data is not None:
        groups, skipped = _read_groups(Path(config.data), config.limit, config.on_bad_record)
        source = str(config.data)
    else:
        dataset = gsm8k.load_gsm8k(
            config.gsm8k_data, split=config.split, limit=config.limit, on_error=config.on_bad_record
        )
        if len(dataset) < config.shots + config.max_queries:
            raise InvalidInputError(
                f"{len(dataset)} problems cannot fill {config.shots} shots and "
                f"{config.max_queries} queries"
            )
        shots = gsm8k.shots_from(dataset, config.shots, seed=config.train.seed)
        shot_ids = {s.index for s in shots}
        pool = [p for p in dataset.problems if p.index not in shot_ids]
        context = gsm8k_context(shots)
        if config.answer_source == "model":
            answers = _model_answers(config, context, pool, progress)
        else:
            answers = {p.index: gsm8k.strip_calculator(p.solution).strip() for p in pool}
        groups = []
        for _ in range(config.groups):
            picked = rng.sample(pool, rng.randint(config.min_queries, config.max_queries))
            groups.append(
                {
                    "context": context,
                    "queries": [p.question for p in picked],
                    "answers": [answers[p.index] for p in picked],
                    "indices": [p.index for p in picked],
                }
            )
        skipped, source = list(dataset.skipped), portable_path(dataset.source)
    tmp = out.with_suffix(".tmp")
    with JsonlWriter(tmp) as writer:
        for g in groups:
            writer.write(g)
    tmp.replace(out)
    sizes = [len(g["queries"]) for g in groups]
    return {
        "file": str(out),
        "source": source,
        "answer_source": config.answer_source if config.data is None else "file",
        "groups": len(groups),
        "queries": sum(sizes),
        "queries_per_group": {
            "min": min(sizes),
            "max": max(sizes),
            "mean": sum(sizes) / len(sizes),
        },
        "skipped_records": skipped,
    }


def build_examples(config: QueryOptConfig, hf: Any) -> dict[str, Any]:
    """Write train.jsonl: each group as one multi-query prompt and its marked JSON answer."""
    groups = list(read_jsonl(Path(config.out_dir) / "groups.jsonl"))
    out = Path(config.out_dir) / "train.jsonl"
    tmp = out.with_suffix(".tmp")
    with JsonlWriter(tmp) as writer:
        for g in groups:
            queries = make_queries(g["queries"])
            messages = build_messages(g["context"], queries)
            reply = format_answers([(q.id, a) for q, a in zip(queries, g["answers"])])
            prompt = str(
                hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
            writer.write(
                {
                    "n": len(queries),
                    "prompt": prompt,
                    "completion": example_completion(hf, messages, reply),
                }
            )
    tmp.replace(out)
    return {"file": str(out), "examples": len(groups)}


def run_query_opt(
    config: QueryOptConfig, *, progress: bool = True, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """All stages; returns the adapter's metadata (also in ``adapter/query_opt.json``)."""
    from tokenskip.models import load_tokenizer

    hf = load_tokenizer(config.model, allow_download=config.allow_download)
    started = time.time()

    def prepare() -> dict[str, Any]:
        claim_run_dir(config.out_dir, asdict(config))
        return {
            "groups": build_groups(config, progress=progress),
            "build": build_examples(config, hf),
        }

    data = on_main_process_first(prepare, config.out_dir)
    sft = SFTConfig(
        model=config.model,
        train_file=str(Path(config.out_dir) / "train.jsonl"),
        out_dir=config.out_dir,
        train=config.train,
        allow_download=config.allow_download,
    )
    trained = train_lora(sft, callbacks=callbacks, progress=progress)
    if not is_main_process():
        return {}
    return write_adapter_meta(
        META_FILE,
        trained,
        sft,
        started,
        format=META_FORMAT,
        base_model=config.model,
        prompt="tokenskip.multi_query.build_messages(context, queries) in the chat template; "
        "reply = tokenskip.multi_query.format_answers",
        data=data,
    )
