"""Downstream answers: does a model still answer correctly from the compressed context?

Each question of ``bench/data/meaning/questions.jsonl`` depends on one constraint of its
text ("May the tenant sublet without consent?"). A model answers it greedily from the
original text and from the text compressed under each condition (scorer × γ, guards on or
off); the report gives accuracy with a 95% Wilson interval, per answer type, beside the
context's tokens and the achieved and forced ratios, all counted in the answering model's
tokenizer (the target).

The answering model defaults to Qwen2.5-Coder-1.5B-Instruct (``tokenskip.models.SPLIT``),
run in bf16 on the CPU. The prompt is the model's chat template around
``Document: ... Question: ... <format hint>``; the document part is computed once per text
and condition and reused for every question on it (the KV cache is copied), which is what
makes several hundred questions per condition affordable on two cores.

Answers are graded by rule: yes/no by the first yes or no, numbers by value (digits or
number words), dates, times and names by normalized containment of any accepted answer.
Every generation is appended to ``--out`` with ``.generations.jsonl`` as it is made, and a
rerun with the same ``--out`` skips what is there, so a long run can be resumed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from provenance import run_facts, write_report

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "bench" / "data" / "meaning"
DEFAULT_CONDITIONS = (
    "original",
    "heuristic@0.7",
    "heuristic@0.5",
    "self-info@0.7",
    "self-info@0.5",
    "heuristic@0.5:no-guards",
)
HINTS = {
    "yes_no": "Answer with yes or no only.",
    "number": "Answer with the number only.",
    "date": "Answer with the date only.",
    "time": "Answer with the time only.",
    "short": "Answer in as few words as possible.",
}
SYSTEM = "Answer the question using only the document. Reply with the answer and nothing else."
NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s:./-]", " ", text.lower())).strip()


def numbers(text: str) -> list[float]:
    out = []
    for m in _NUM.finditer(text):
        try:
            out.append(float(m.group().replace(",", "")))
        except ValueError:
            continue
    out += [float(NUMBER_WORDS[w]) for w in norm(text).split() if w in NUMBER_WORDS]
    return out


def is_correct(kind: str, answers: list[str], output: str) -> bool:
    out = norm(output)
    if kind == "yes_no":
        first = next((w for w in out.split() if w in ("yes", "no")), None)
        return first == norm(answers[0])
    if kind == "number":
        wanted = {v for a in answers for v in numbers(a)}
        got = numbers(output)
        return bool(got) and got[0] in wanted
    return any(norm(a) and norm(a) in out for a in answers)


def parse_condition(spec: str) -> tuple[str, float | None, bool]:
    """``original`` or ``SCORER@γ[:no-guards]``."""
    if spec == "original":
        return "original", None, True
    name, _, rest = spec.partition("@")
    ratio, _, flag = rest.partition(":")
    if flag not in ("", "no-guards"):
        raise SystemExit(f"bad condition {spec!r}: the flag can only be no-guards")
    return name, float(ratio), flag != "no-guards"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b", help="answering model")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS))
    p.add_argument(
        "--classifier", default=None, help="token-classifier directory for 'classifier@γ'"
    )
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.add_argument(
        "--every",
        type=int,
        default=1,
        help="every K-th question (a sample spread over all texts and kinds; before --limit)",
    )
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--out", type=Path, default=REPO_ROOT / "reports" / "meaning" / "downstream.json"
    )
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from tokenskip import compress
    from tokenskip.guards import GUARDS, NO_GUARDS
    from tokenskip.models import load_model
    from tokenskip.scorers import (
        CachedScorer,
        HeuristicScorer,
        SelfInfoScorer,
        TokenClassifierScorer,
    )
    from tokenskip.tokens import TextTokenizer

    texts = {
        t["id"]: t
        for t in (json.loads(line) for line in (DATA / "texts.jsonl").read_text().splitlines())
    }
    questions = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines()]
    questions = questions[:: max(1, args.every)]
    if args.limit:
        questions = questions[: args.limit]
    conditions = [parse_condition(c) for c in args.conditions.split(",")]
    answering = load_model(args.model, dtype=getattr(torch, args.dtype))
    model, hf = answering.model, answering.tokenizer
    target = TextTokenizer(hf, args.model)
    scorers: dict[str, Any] = {}

    def scorer(name: str) -> Any:
        if name not in scorers:
            if name == "heuristic":
                scorers[name] = HeuristicScorer(target)
            elif name == "self-info":
                smol = load_model("smollm2")
                scorers[name] = CachedScorer(
                    SelfInfoScorer(smol.model, TextTokenizer(smol.tokenizer, "smollm2"))
                )
            elif name == "classifier":
                if not args.classifier:
                    raise SystemExit("classifier@γ needs --classifier DIR")
                scorers[name] = CachedScorer(TokenClassifierScorer.from_pretrained(args.classifier))
            else:
                raise SystemExit(f"unknown scorer {name!r}")
        return scorers[name]

    log_path = args.out.with_suffix(".generations.jsonl")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["condition"], row["id"])] = row
    load_before = os.getloadavg()
    started = time.perf_counter()
    by_text: dict[str, list[dict[str, Any]]] = {}
    for q in questions:
        by_text.setdefault(q["text_id"], []).append(q)
    with log_path.open("a") as log:
        for spec, (name, ratio, guarded) in zip(args.conditions.split(","), conditions):
            for text_id, qs in by_text.items():
                todo = [q for q in qs if (spec, q["id"]) not in done]
                if not todo:
                    continue
                original = texts[text_id]["text"]
                if ratio is None:
                    context, achieved, forced = original, 1.0, 0.0
                else:
                    r = compress(
                        original,
                        ratio,
                        tokenizer=target,
                        scorer=scorer(name),
                        guards=GUARDS if guarded else NO_GUARDS,
                    )
                    context, achieved, forced = r.text, r.achieved_ratio, r.forced_ratio
                prefix_cache, prefix_ids = None, None
                for q in todo:
                    messages = [
                        {"role": "system", "content": SYSTEM},
                        {
                            "role": "user",
                            "content": f"Document:\n{context}\n\nQuestion: {q['question']}\n"
                            f"{HINTS[q['type']]}",
                        },
                    ]
                    prompt = hf.apply_chat_template(
                        messages, tokenize=False, add_generation_prompt=True
                    )
                    ids = hf(prompt, add_special_tokens=False)["input_ids"]
                    if prefix_ids is None:
                        head = prompt[: prompt.index("\n\nQuestion: ") + 2]
                        prefix_ids = hf(head, add_special_tokens=False)["input_ids"]
                        with torch.inference_mode():
                            out = model(torch.tensor([prefix_ids]), use_cache=True)
                        prefix_cache = out.past_key_values
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        if ids[: len(prefix_ids)] == prefix_ids:
                            gen = model.generate(
                                torch.tensor([ids]),
                                past_key_values=copy.deepcopy(prefix_cache),
                                max_new_tokens=args.max_new_tokens,
                                do_sample=False,
                            )
                        else:  # the boundary tokenized differently: no reuse
                            gen = model.generate(
                                torch.tensor([ids]),
                                max_new_tokens=args.max_new_tokens,
                                do_sample=False,
                            )
                    output = hf.decode(gen[0][len(ids) :], skip_special_tokens=True)
                    row = {
                        "condition": spec,
                        "id": q["id"],
                        "text_id": text_id,
                        "type": q["type"],
                        "constraint_type": next(
                            (
                                c["type"]
                                for c in texts[text_id]["constraints"]
                                if c["phrase"] == q["constraint"]
                            ),
                            None,
                        ),
                        "answers": q["answers"],
                        "output": output,
                        "correct": is_correct(q["type"], q["answers"], output),
                        "context_tokens": target.count(context),
                        "original_tokens": target.count(original),
                        "achieved_ratio": achieved,
                        "forced_ratio": forced,
                        "constraint_kept": q["constraint"] in context,
                        "seconds": time.perf_counter() - t0,
                    }
                    done[(spec, q["id"])] = row
                    log.write(json.dumps(row, ensure_ascii=False) + "\n")
                    log.flush()
            rows = [done[(spec, q["id"])] for q in questions if (spec, q["id"]) in done]
            correct = sum(r["correct"] for r in rows)
            print(
                f"{spec:>26}: {correct}/{len(rows)} correct ({correct / max(1, len(rows)):.1%})",
                flush=True,
            )
    summary = []
    for spec in args.conditions.split(","):
        rows = [done[(spec, q["id"])] for q in questions if (spec, q["id"]) in done]
        correct = sum(r["correct"] for r in rows)
        by_type: dict[str, list[int]] = {}
        for r in rows:
            by_type.setdefault(r["type"], [0, 0])
            by_type[r["type"]][0] += r["correct"]
            by_type[r["type"]][1] += 1
        per_text = {r["text_id"]: r for r in rows}
        summary.append(
            {
                "condition": spec,
                "questions": len(rows),
                "accuracy": correct / len(rows) if rows else 0.0,
                "ci95": wilson(correct, len(rows)),
                "by_type": {k: v[0] / v[1] for k, v in sorted(by_type.items())},
                "constraint_kept": sum(r["constraint_kept"] for r in rows) / len(rows)
                if rows
                else 0.0,
                "mean_context_tokens": sum(r["context_tokens"] for r in per_text.values())
                / max(1, len(per_text)),
                "mean_original_tokens": sum(r["original_tokens"] for r in per_text.values())
                / max(1, len(per_text)),
                "achieved_ratio": sum(r["achieved_ratio"] for r in per_text.values())
                / max(1, len(per_text)),
                "forced_ratio": sum(r["forced_ratio"] for r in per_text.values())
                / max(1, len(per_text)),
            }
        )
    report = {
        "model": args.model,
        "dtype": args.dtype,
        "target_tokenizer": args.model,
        "questions": len(questions),
        "rows": summary,
        **run_facts(load_before, args.threads),
        "seconds": time.perf_counter() - started,
    }
    print(write_report(args.out, report, render))


def render(report: dict[str, Any]) -> str:
    base = next((r for r in report["rows"] if r["condition"] == "original"), None)
    lines = [
        "# Downstream answers from compressed contexts",
        "",
        f"{report['questions']} constraint-dependent questions over the meaning set's texts, "
        f"answered greedily by {report['model']} ({report['dtype']}, CPU, "
        f"{report['threads']} threads); tokens in its tokenizer. Machine: {report['machine']}; "
        f"load average before {report['load_average']['before'][0]:.2f}, after "
        f"{report['load_average']['after'][0]:.2f}; {report['seconds'] / 60:.0f} min. Commit "
        f"`{(report['commit'] or '')[:10]}`{' (dirty tree)' if report['dirty'] else ''}. "
        f"Command: `{report['command']}`.",
        "",
        "| condition | accuracy [95% CI] | Δ vs original | context tokens | achieved ratio | forced ratio | constraint phrase in context |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for r in report["rows"]:
        delta = (
            ""
            if base is None or r is base
            else f"{(r['accuracy'] - base['accuracy']) * 100:+.1f} pt"
        )
        lines.append(
            f"| {r['condition']} | {r['accuracy']:.1%} [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] | "
            f"{delta} | {r['mean_context_tokens']:.0f} | {r['achieved_ratio']:.3f} | "
            f"{r['forced_ratio']:.3f} | {r['constraint_kept']:.1%} |"
        )
    types = sorted({t for r in report["rows"] for t in r["by_type"]})
    lines += [
        "",
        "Accuracy by answer type:",
        "",
        "| condition | " + " | ".join(types) + " |",
        "|---|" + "--:|" * len(types),
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['condition']} | "
            + " | ".join(f"{r['by_type'].get(t, 0):.1%}" for t in types)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
