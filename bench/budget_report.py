"""The reasoning-budget table (#18) from ``tokenskip eval gsm8k`` runs: per budget, the
original capped there, truncation, the budget instruction and budget forcing side by side,
against the uncapped reference (the original at the largest cap), with the targets.

    .venv/bin/python bench/budget_report.py reports/budget-qwen0.5b [reports/budget-qwen1.5b ...]

writes ``BUDGETS.md`` and ``budgets.json`` into each folder, from its ``run.json`` only (every
number there is recountable from ``samples.jsonl.gz``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

METHODS = ("original", "instruction-budget", "budget-forcing")
LABELS = {
    "original": "original capped at B (= truncation at B)",
    "instruction-budget": "instruction (≤ B tokens)",
    "budget-forcing": "budget forcing",
}


def rows_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """method → its row at γ = 1 (truncation: its γ = 1 row, or the one nearest)."""
    found: dict[str, dict[str, Any]] = {}
    for row in run["rows"]:
        if row["method"] in METHODS and (row["method"] not in found or row["ratio"] == 1.0):
            found[row["method"]] = row
    return found


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    rows = rows_of(run)
    budgets = sorted(int(b) for b in rows["original"]["budgets"])
    ref_budget = budgets[-1]
    ref = rows["original"]["budgets"][str(ref_budget)]
    table = []
    for b in budgets[:-1] or budgets:
        for method in METHODS:
            if method not in rows or str(b) not in rows[method]["budgets"]:
                continue
            r = rows[method]["budgets"][str(b)]
            table.append({
                "budget": b, "method": method, "accuracy": r["accuracy"], "ci95": r["ci95"],
                "cot_tokens_mean": r["cot_tokens_mean"], "output_tokens_mean": r["output_tokens_mean"],
                "cut_off": r["cut_off"],
                "accuracy_vs_uncapped": r["accuracy"] / ref["accuracy"] if ref["accuracy"] else None,
                "output_vs_uncapped": r["output_tokens_mean"] / ref["output_tokens_mean"],
            })  # fmt: skip
    verdicts = []
    bf = {t["budget"]: t for t in table if t["method"] == "budget-forcing"}
    capped = {t["budget"]: t for t in table if t["method"] == "original"}
    if 256 in bf and 256 in capped:
        x = bf[256]["accuracy"] / capped[256]["accuracy"] if capped[256]["accuracy"] else None
        verdicts.append({
            "target": "budget forcing at 256 at least doubles the capped original's accuracy",
            "value": f"{bf[256]['accuracy']:.1%} vs {capped[256]['accuracy']:.1%}"
                     + (f" ({x:.2f}×)" if x is not None else ""),
            "pass": x is not None and x >= 2.0,
        })  # fmt: skip
    good = [t for t in bf.values() if (t["accuracy_vs_uncapped"] or 0) >= 0.9
            and t["output_vs_uncapped"] <= 0.6]  # fmt: skip
    best = max(bf.values(), key=lambda t: t["accuracy"], default=None)
    verdicts.append({
        "target": "budget forcing keeps ≥ 90% of the uncapped accuracy at ≤ 60% of its output "
                  "tokens at some budget",
        "value": (", ".join(f"B={t['budget']}: {t['accuracy_vs_uncapped']:.0%} of the accuracy "
                            f"at {t['output_vs_uncapped']:.0%} of the tokens" for t in good)
                  if good else (f"best B={best['budget']}: {best['accuracy_vs_uncapped'] or 0:.0%} "
                                f"of the accuracy at {best['output_vs_uncapped']:.0%} of the tokens"
                                if best else "no budget-forcing rows")),
        "pass": bool(good),
    })  # fmt: skip
    meta = run["meta"]
    return {
        "model": meta["model"],
        "questions": rows["original"]["n"],
        "command": meta["command"],
        "date": meta["date"],
        "git_commit": meta["git_commit"],
        "uncapped": {"budget": ref_budget, **ref},
        "table": table,
        "verdicts": verdicts,
    }


def render(s: dict[str, Any]) -> str:
    ref = s["uncapped"]
    lines = [
        f"# Reasoning budgets on GSM8K: {s['model']}",
        "",
        f"First {s['questions']} test questions, zero-shot, greedy. Command: `{s['command']}` "
        f"({s['date']}, commit `{s['git_commit'][:10]}`). Every generation's text is in "
        "`samples.jsonl.gz`; `run.json` and `README.md` beside this file are the evaluation's "
        "own report.",
        "",
        f"Uncapped reference: the original at {ref['budget']} tokens: accuracy "
        f"{ref['accuracy']:.1%} [{ref['ci95'][0]:.1%}, {ref['ci95'][1]:.1%}], "
        f"{ref['output_tokens_mean']:.0f} output tokens on average, {ref['cut_off']:.1%} still "
        "cut off there.",
        "",
        "| budget B | method | accuracy [95% CI] | mean CoT tokens | mean output tokens | share cut "
        "| accuracy vs uncapped | output vs uncapped |",
        "|--:|---|---|--:|--:|--:|--:|--:|",
    ]
    for t in s["table"]:
        vs = "–" if t["accuracy_vs_uncapped"] is None else f"{t['accuracy_vs_uncapped']:.0%}"
        lines.append(
            f"| {t['budget']} | {LABELS[t['method']]} | {t['accuracy']:.1%} "
            f"[{t['ci95'][0]:.1%}, {t['ci95'][1]:.1%}] | {t['cot_tokens_mean']:.0f} "
            f"| {t['output_tokens_mean']:.0f} | {t['cut_off']:.1%} | {vs} "
            f"| {t['output_vs_uncapped']:.0%} |"
        )
    lines += [
        "",
        "Budget forcing: the model's own greedy reasoning up to B tokens (identical to the "
        "original's first B tokens), then the cue `\\n\\nFinal answer:` and at most 32 answer "
        "tokens in the same sequence; answers that end under B are untouched. Truncation at B "
        "and the original capped at B are the same text by construction (greedy decoding: the "
        "first B tokens of the uncapped answer, its answer line lost when it runs over), so "
        "they share one row. The instruction asks for at most B tokens of reasoning and is "
        "generated at cap B.",
        "",
        "Targets:",
        "",
    ]
    lines += [f"- **{'PASS' if v['pass'] else 'MISS'}** {v['target']}: {v['value']}"
              for v in s["verdicts"]]  # fmt: skip
    if s.get("notes"):
        lines += ["", "## How it ran", "", s["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    for folder in map(Path, argv or ["reports/budget-qwen0.5b"]):
        summary = summarize(json.loads((folder / "run.json").read_text()))
        notes = folder / "NOTES.md"  # how the run went (machine load, pauses), kept by hand
        summary["notes"] = notes.read_text().strip() if notes.is_file() else None
        (folder / "budgets.json").write_text(json.dumps(summary, indent=2) + "\n")
        (folder / "BUDGETS.md").write_text(render(summary))
        print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
