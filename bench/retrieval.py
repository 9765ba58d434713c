"""Retrieval prompts (#30): does the gateway keep the answer when the question's text comes
among distractor documents?

Each question of ``bench/data/meaning/questions.jsonl`` is asked in one user message that
holds its own text and ``--distractors`` other texts of the set (never ``tool_output``
texts, which are JSON), chosen and shuffled by a RNG seeded with ``--seed`` and the
question's id, each as ``<document index="N">`` inside ``<documents>``: an index is all
that tells them apart. The question and its answer-format hint follow after a blank line.

The message goes through the gateway's own policy path
(:func:`tokenskip.proxy.serving.prepare.compress_prompt` on a registry whose one model counts in
the answering model's tokenizer: the ``heuristic`` scorer, the policy merged with the
condition's overrides as a request's ``tokenskip`` fields are). Conditions:
``uncompressed`` (the message as is), ``default`` (``CompressionPolicy()``), ``ratio@R``
(``prompt_ratio`` R: words dropped too), ``documents@R`` (``document_ratio`` R) and
``relevant-only`` (only the question's own text, uncompressed).

The answering model (default Qwen2.5-Coder-1.5B-Instruct, bf16 on the CPU) answers greedily
from the chat template around the system prompt and that message; answers are graded by
:func:`downstream.is_correct`. The report gives per condition the accuracy with a 95%
Wilson interval, the whole chat prompt's tokens in the answering model's tokenizer and
their ratio to the uncompressed prompt's, the documents the gateway dropped, how often the
question's own text was among them, and how often its constraint phrase survived.

Every generation (with the user message as sent) is appended to ``--out`` with
``.generations.jsonl`` as it is made, and the finished run gzips the rows its report counts
into ``.generations.jsonl.gz``. Every message is compressed afresh; one identical to a
message already answered (in this run or the one before: the gateway often sends the same
one at several ratios) takes that answer, as greedy decoding would give it again.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from downstream import HINTS, is_correct, wilson
from provenance import run_facts, write_report

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "bench" / "data" / "meaning"
DEFAULT_CONDITIONS = (
    "uncompressed",
    "default",
    "documents@0.5",
    "ratio@0.7",
    "relevant-only",
)
SYSTEM = "Answer the question using only the documents. Reply with the answer and nothing else."
UPSTREAM = {"model": "openai/retrieval-bench", "api_base": "http://127.0.0.1:9/v1"}
"""The gateway model's deployment: never called, it only gives the registry a model whose
tokenizer (the answering model's) counts and scores."""


def document_order(
    question: dict[str, Any], texts: dict[str, dict[str, Any]], num_distractors: int, seed: int
) -> list[str]:
    """Text ids in the order the message shows them: the question's own among distractors."""
    rng = random.Random(f"{seed}:{question['id']}")
    pool = sorted(
        i for i, t in texts.items() if t["kind"] != "tool_output" and i != question["text_id"]
    )
    order = [*rng.sample(pool, num_distractors), question["text_id"]]
    rng.shuffle(order)
    return order


def user_message(question: dict[str, Any], documents: list[str]) -> str:
    body = "\n".join(
        f'<document index="{i}">\n{text}\n</document>' for i, text in enumerate(documents, 1)
    )
    return (
        f"<documents>\n{body}\n</documents>\n\n"
        f"Question: {question['question']}\n{HINTS[question['type']]}"
    )


def parse_condition(spec: str) -> dict[str, Any] | None:
    """The policy overrides of a condition; None for the two that are not compressed."""
    if spec in ("uncompressed", "relevant-only"):
        return None
    if spec == "default":
        return {}
    name, _, ratio = spec.partition("@")
    try:
        if name == "ratio":
            return {"prompt_ratio": float(ratio)}
        if name == "documents":
            return {"document_ratio": float(ratio)}
    except ValueError:
        pass
    raise SystemExit(
        f"bad condition {spec!r}: uncompressed, default, ratio@R, documents@R or relevant-only"
    )


def load_generations(out: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Earlier generations of this ``--out`` (gzipped by a finished run, then appended)."""
    done = {}
    packed, log = out.with_suffix(".generations.jsonl.gz"), out.with_suffix(".generations.jsonl")
    lines = gzip.decompress(packed.read_bytes()).decode().splitlines() if packed.is_file() else []
    lines += log.read_text().splitlines() if log.is_file() else []
    for line in lines:
        row = json.loads(line)
        done[(row["condition"], row["id"], row["input_sha256"])] = row
    return done


def summarize(spec: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / n if n else 0.0

    correct = sum(r["correct"] for r in rows)
    by: dict[str, dict[str, list[int]]] = {"type": {}, "kind": {}}
    for r in rows:
        for field, key in (("type", r["type"]), ("kind", r["own_kind"])):
            tally = by[field].setdefault(key, [0, 0])
            tally[0] += r["correct"]
            tally[1] += 1
    return {
        "condition": spec,
        "prompt_ratio": rows[0]["prompt_ratio"] if rows else None,
        "document_ratio": rows[0].get("document_ratio") if rows else None,
        "questions": n,
        "accuracy": correct / n if n else 0.0,
        "ci95": wilson(correct, n),
        "by_type": {k: v[0] / v[1] for k, v in sorted(by["type"].items())},
        "by_kind": {k: v[0] / v[1] for k, v in sorted(by["kind"].items())},
        "mean_prompt_tokens": mean("prompt_tokens"),
        "mean_uncompressed_prompt_tokens": mean("uncompressed_prompt_tokens"),
        "ratio_vs_uncompressed": sum(
            r["prompt_tokens"] / r["uncompressed_prompt_tokens"] for r in rows
        )
        / max(1, n),
        "mean_documents_dropped": mean("documents_dropped"),
        "own_dropped": mean("own_dropped"),
        "constraint_kept": mean("constraint_kept"),
        "relevance": dict(Counter(str(r["relevance"]) for r in rows)),
        "answers_reused": sum(r["reused_from"] is not None for r in rows),
        "mean_compress_seconds": mean("compress_seconds"),
        "mean_seconds": mean("seconds"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="answering model")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="weights")
    p.add_argument(
        "--conditions",
        default=",".join(DEFAULT_CONDITIONS),
        help="comma-separated: uncompressed, default, ratio@R, relevant-only",
    )
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.add_argument(
        "--every",
        type=int,
        default=1,
        help="every K-th question (a sample spread over all texts and kinds; before --limit)",
    )
    p.add_argument("--distractors", type=int, default=5, help="other texts in each message")
    p.add_argument("--seed", type=int, default=0, help="seeds the distractors and their order")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer, in tokens")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "reports" / "retrieval" / "retrieval.json",
        help="JSON report; Markdown and generations beside it",
    )
    args = p.parse_args()
    specs = args.conditions.split(",")
    overrides = {spec: parse_condition(spec) for spec in specs}

    import torch

    torch.set_num_threads(args.threads)
    from tokenskip.models import load_model
    from tokenskip.proxy.errors import ProxyError
    from tokenskip.proxy.infra.config import GatewayConfig, ModelEntry
    from tokenskip.proxy.infra.metrics import Metrics
    from tokenskip.proxy.infra.policy import CompressionPolicy
    from tokenskip.proxy.serving.prepare import compress_prompt, merged_policy
    from tokenskip.proxy.serving.registry import Registry
    from tokenskip.relevance import marker

    texts = {
        t["id"]: t
        for t in (json.loads(line) for line in (DATA / "texts.jsonl").read_text().splitlines())
    }
    questions = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines()]
    questions = questions[:: max(1, args.every)]
    if args.limit:
        questions = questions[: args.limit]
    entry = ModelEntry(
        "retrieval-bench",
        CompressionPolicy(),
        litellm_params=UPSTREAM,
        tokenizer=args.model,
        backend="direct",
    )
    gateway, metrics = Registry(GatewayConfig(models={entry.name: entry})), Metrics()
    policies = {}
    for spec, changes in overrides.items():
        try:
            policies[spec] = None if changes is None else merged_policy(entry, changes)
        except ProxyError as exc:
            raise SystemExit(f"condition {spec}: {exc.message}") from None
    answering = load_model(args.model, dtype=getattr(torch, args.dtype))
    model, hf = answering.model, answering.tokenizer

    def chat(user: str) -> list[int]:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return hf(prompt, add_special_tokens=False)["input_ids"]

    def through_gateway(user: str, policy: CompressionPolicy) -> tuple[str, Any]:
        """The user message as the gateway sends it upstream, and its PartCompression."""
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        compressed = compress_prompt(gateway, metrics, entry, policy, messages)
        if compressed is None:
            return user, None
        compressed.count(gateway.counter(entry).tokenizer)
        part = next((x for x in compressed.parts if x.message == 1), None)
        return compressed.messages[1]["content"], part

    def answer(ids: list[int]) -> tuple[str, float]:
        t0 = time.perf_counter()
        with torch.inference_mode():
            gen = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                use_cache=True,
            )
        return hf.decode(gen[0][len(ids) :], skip_special_tokens=True), time.perf_counter() - t0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = load_generations(args.out)
    answered = {row["prompt_sha256"]: row for row in done.values()}
    keys: dict[str, list[tuple[str, str, str]]] = {spec: [] for spec in specs}
    load_before = os.getloadavg()
    started = time.perf_counter()
    with args.out.with_suffix(".generations.jsonl").open("a") as log:
        for number, q in enumerate(questions, 1):
            order = document_order(q, texts, args.distractors, args.seed)
            own = order.index(q["text_id"]) + 1
            full = user_message(q, [texts[i]["text"] for i in order])
            only = user_message(q, [texts[q["text_id"]]["text"]])
            uncompressed_tokens = len(chat(full))
            for spec in specs:
                source, own_index = (only, 1) if spec == "relevant-only" else (full, own)
                key = (spec, q["id"], hashlib.sha256(source.encode()).hexdigest()[:16])
                keys[spec].append(key)
                policy = policies[spec]
                t0 = time.perf_counter()
                user, part = (source, None) if policy is None else through_gateway(source, policy)
                compress_seconds = time.perf_counter() - t0
                ids = chat(user)
                prompt_sha = hashlib.sha256(user.encode()).hexdigest()[:16]
                earlier = answered.get(prompt_sha)
                if earlier is None:
                    output, seconds = answer(ids)
                else:  # greedy: the same prompt gets the same answer
                    output, seconds = earlier["output"], earlier["seconds"]
                row = {
                    "condition": spec,
                    "id": q["id"],
                    "input_sha256": key[2],
                    "prompt_sha256": prompt_sha,
                    "reused_from": (earlier["reused_from"] or earlier["condition"])
                    if earlier
                    else None,
                    "text_id": q["text_id"],
                    "own_kind": texts[q["text_id"]]["kind"],
                    "type": q["type"],
                    "documents": [q["text_id"]] if spec == "relevant-only" else order,
                    "own_index": own_index,
                    "seed": args.seed,
                    "prompt_ratio": policy.prompt_ratio if policy else None,
                    "document_ratio": policy.document_ratio if policy else None,
                    "answers": q["answers"],
                    "output": output,
                    "correct": is_correct(q["type"], q["answers"], output),
                    "prompt_tokens": len(ids),
                    "uncompressed_prompt_tokens": uncompressed_tokens,
                    "relevance": part.relevance if part else None,
                    "documents_dropped": part.num_dropped if part else 0,
                    "own_dropped": marker("", f"index {own_index}") in user,
                    "constraint_kept": q["constraint"] in user,
                    "user_message": user,
                    "compress_seconds": compress_seconds,
                    "seconds": seconds,
                }
                done[key] = row
                answered.setdefault(prompt_sha, row)
                log.write(json.dumps(row, ensure_ascii=False) + "\n")
                log.flush()
                timing = f"as {row['reused_from']}" if earlier else f"{seconds:.1f} s"
                print(
                    f"[{number}/{len(questions)}] {q['id']} {spec}: {output.strip()[:40]!r} "
                    f"({'right' if row['correct'] else 'wrong'}, {len(ids)} tokens, {timing})",
                    flush=True,
                )
    report = {
        "model": args.model,
        "dtype": args.dtype,
        "target_tokenizer": args.model,
        "scorer": entry.policy.scorer,
        "questions": len(questions),
        "distractors": args.distractors,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "rows": [summarize(spec, [done[k] for k in keys[spec]]) for spec in specs],
        **run_facts(load_before, args.threads),
        "seconds": time.perf_counter() - started,
    }
    write_report(args.out, report, render)
    with gzip.open(args.out.with_suffix(".generations.jsonl.gz"), "wt") as f:
        for row in (done[k] for spec in specs for k in keys[spec]):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    args.out.with_suffix(".generations.jsonl").unlink()
    print(render(report))


def render(report: dict[str, Any]) -> str:
    base = next((r for r in report["rows"] if r["condition"] == "uncompressed"), None)
    lines = [
        "# Retrieval prompts: the question's text among distractors, through the gateway",
        "",
        f"{report['questions']} constraint-dependent questions of the meaning set, each asked "
        f"in one user message holding its own text and {report['distractors']} other texts "
        f'(no tool outputs; seed {report["seed"]}) as `<document index="N">`, then the '
        "question. Compressed by the gateway's policy path (`compress_prompt`, scorer "
        f"`{report['scorer']}`) and answered greedily by {report['model']} ({report['dtype']}, "
        f"CPU, {report['threads']} threads); tokens are the whole chat prompt in its "
        f"tokenizer. Machine: {report['machine']}; load average before "
        f"{report['load_average']['before'][0]:.2f}, after "
        f"{report['load_average']['after'][0]:.2f}; {report['seconds'] / 60:.0f} min. Commit "
        f"`{(report['commit'] or '')[:10]}`{' (dirty tree)' if report['dirty'] else ''}. "
        f"Command: `{report['command']}`.",
        "",
        "| condition | prompt_ratio | document_ratio | accuracy [95% CI] | Δ vs uncompressed | prompt tokens "
        "| vs uncompressed | documents dropped | own text dropped | constraint phrase kept "
        "| s / question |",
        "|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["rows"]:
        delta = (
            ""
            if base is None or r is base
            else f"{(r['accuracy'] - base['accuracy']) * 100:+.1f} pt"
        )
        ratio = "" if r["prompt_ratio"] is None else f"{r['prompt_ratio']:g}"
        budget = "" if r.get("document_ratio") is None else f"{r['document_ratio']:g}"
        lines.append(
            f"| {r['condition']} | {ratio} | {budget} | {r['accuracy']:.1%} "
            f"[{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] | {delta} | "
            f"{r['mean_prompt_tokens']:.0f} | {r['ratio_vs_uncompressed']:.3f} | "
            f"{r['mean_documents_dropped']:.2f} | {r['own_dropped']:.1%} | "
            f"{r['constraint_kept']:.1%} | "
            f"{r['mean_compress_seconds'] + r['mean_seconds']:.1f} |"
        )
    reused = sum(r.get("answers_reused", 0) for r in report["rows"])
    lines += [
        "",
        "Prompt tokens are the whole chat prompt (system prompt, message, template), their "
        "ratio the mean over questions of the ratio to the same question's uncompressed "
        "prompt. Documents dropped are the gateway's own count (`PartCompression.num_dropped`); "
        "own text dropped is the share of questions whose text became a marker; the constraint "
        "phrase is the question's key phrase, word for word in the message as sent. Seconds are "
        f"compression plus generation; {reused} answers were reused from an identical message "
        "of another condition (their time is that generation's).",
    ]
    for title, field in (("answer type", "by_type"), ("kind of the question's text", "by_kind")):
        keys = sorted({k for r in report["rows"] for k in r[field]})
        lines += [
            "",
            f"Accuracy by {title}:",
            "",
            "| condition | " + " | ".join(keys) + " |",
            "|---|" + "--:|" * len(keys),
        ]
        for r in report["rows"]:
            lines.append(
                f"| {r['condition']} | "
                + " | ".join(f"{r[field][k]:.1%}" if k in r[field] else "" for k in keys)
                + " |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
