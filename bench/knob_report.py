"""The TokenSkip knob report (#20 item 3, #18's adapter row) from one ``tokenskip eval gsm8k``
run of an adapter with ``--methods original,tokenskip,budget-forcing,tokenskip-forcing``:

- the ratio knob: mean CoT tokens, achieved ratio and accuracy per γ at the largest cap,
  beside the base model and an earlier adapter's run (``--against``), with the targets
  (achieved within ±0.1 of γ at every γ < 1; accuracy at γ = 1.0 no lower than the base);
- the budget knob beside it: per budget B, the adapter's own γ = 1.0 reasoning capped at B
  and budget-forced at B, and the base model budget-forced at B;
- the training curve, from the run's ``loss.jsonl`` (step, loss) when it is there.

    .venv/bin/python bench/knob_report.py reports/tokenskip-smollm2/packed-s800 \\
        --against reports/tokenskip-smollm2/s800

writes ``KNOB.md``, ``knob.json`` and ``training_curve.png`` into the folder, from its
``run.json`` only (every number there is recountable from ``samples.jsonl.gz``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TOLERANCE = 0.1


def _row(run: dict[str, Any], method: str, ratio: float = 1.0) -> dict[str, Any] | None:
    return next((r for r in run["rows"] if r["method"] == method and r["ratio"] == ratio), None)


def _cell(row: dict[str, Any], budget: int) -> dict[str, Any]:
    m = row["budgets"][str(budget)]
    return {
        "accuracy": m["accuracy"],
        "ci95": m["ci95"],
        "cut_off": m["cut_off"],
        "cot_tokens_mean": m["cot_tokens_mean"],
        "output_tokens_mean": m["output_tokens_mean"],
        "achieved_ratio": m["achieved_ratio"],
    }


def knob_rows(run: dict[str, Any], budget: int) -> list[dict[str, Any]]:
    rows = [r for r in run["rows"] if r["method"] == "tokenskip"]
    return [
        {"ratio": r["ratio"], **_cell(r, budget)}
        for r in sorted(rows, key=lambda r: r["ratio"], reverse=True)
    ]


def summarize(run: dict[str, Any], against: dict[str, Any] | None) -> dict[str, Any]:
    budgets = sorted(int(b) for b in _row(run, "original")["budgets"])
    top = budgets[-1]
    base = {"ratio": 1.0, **_cell(_row(run, "original"), top)}
    knob = knob_rows(run, top)
    earlier = (
        knob_rows(against, max(int(b) for b in _row(against, "original")["budgets"]))
        if against
        else []
    )
    off = {k["ratio"]: abs(k["achieved_ratio"] - k["ratio"]) for k in knob if k["ratio"] < 1.0}
    full = next(k for k in knob if k["ratio"] == 1.0)
    verdicts = [
        {
            "target": f"achieved ratio within ±{TOLERANCE} of γ at every γ < 1",
            "value": ", ".join(
                f"γ {k['ratio']:g}: {k['achieved_ratio']:.2f}" for k in knob if k["ratio"] < 1.0
            ),
            "pass": bool(off) and max(off.values()) <= TOLERANCE + 1e-9,
        },
        {
            "target": "accuracy at γ = 1.0 no lower than the base model",
            "value": f"{full['accuracy']:.1%} vs base {base['accuracy']:.1%}",
            "pass": full["accuracy"] >= base["accuracy"],
        },
    ]
    forcing = []
    for b in budgets[:-1]:
        for method, label in (
            ("tokenskip", "adapter γ = 1.0 capped at B"),
            ("tokenskip-forcing", "adapter γ = 1.0, budget forcing at B"),
            ("original", "base capped at B"),
            ("budget-forcing", "base, budget forcing at B"),
        ):
            row = _row(run, method)
            if row is not None and str(b) in row["budgets"]:
                forcing.append({"budget": b, "method": method, "label": label, **_cell(row, b)})
    meta = run["meta"]
    return {
        "model": meta["model"],
        "adapter": meta.get("adapter"),
        "questions": _row(run, "original")["n"],
        "command": meta["command"],
        "date": meta["date"],
        "git_commit": meta["git_commit"],
        "top_budget": top,
        "base": base,
        "knob": knob,
        "against": {"adapter": against["meta"].get("adapter"), "knob": earlier}
        if against
        else None,
        "forcing": forcing,
        "verdicts": verdicts,
    }


def _pct(x: float) -> str:
    return f"{x:.1%}"


def render(s: dict[str, Any], curve: list[dict[str, Any]], notes: str | None) -> str:
    top = s["top_budget"]
    lines = [
        f"# The TokenSkip knob on GSM8K: {s['model']} + `{s['adapter']}`",
        "",
        f"First {s['questions']} test questions, zero-shot, greedy, cap {top}. Command: "
        f"`{s['command']}` ({s['date']}, commit `{s['git_commit'][:10]}`). Every generation's "
        "text is in `samples.jsonl.gz`; `run.json` and `README.md` beside this file are the "
        "evaluation's own report.",
        "",
        "## The ratio knob",
        "",
        f"Achieved ratio: the adapter's mean CoT tokens at γ over its own at γ = 1.0 (cap {top}).",
        "",
        "| model | γ | mean CoT tokens | achieved ratio | accuracy [95% CI] | share cut |",
        "|---|--:|--:|--:|---|--:|",
    ]
    b = s["base"]
    lines.append(
        f"| base | – | {b['cot_tokens_mean']:.0f} | – | {_pct(b['accuracy'])} "
        f"[{_pct(b['ci95'][0])}, {_pct(b['ci95'][1])}] | {_pct(b['cut_off'])} |"
    )
    groups = [("this adapter", s["knob"])]
    if s.get("against"):
        groups.append((f"`{s['against']['adapter']}`", s["against"]["knob"]))
    for name, knob in groups:
        for k in knob:
            lines.append(
                f"| {name} | {k['ratio']:g} | {k['cot_tokens_mean']:.0f} | "
                f"{k['achieved_ratio']:.2f} | {_pct(k['accuracy'])} "
                f"[{_pct(k['ci95'][0])}, {_pct(k['ci95'][1])}] | {_pct(k['cut_off'])} |"
            )
    lines += ["", "Targets:", ""]
    lines += [
        f"- **{'PASS' if v['pass'] else 'MISS'}** {v['target']}: {v['value']}"
        for v in s["verdicts"]
    ]
    lines += [
        "",
        "## The budget knob beside it",
        "",
        "Budget forcing: the reasoning is the greedy generation's first B tokens, then the cue "
        "`\\n\\nFinal answer:` and at most 32 answer tokens in the same sequence; an answer "
        "that ends under B is untouched. On the adapter the reasoning is its own γ = 1.0 run "
        "(`tokenskip-forcing`); on the base model the original run (`budget-forcing`).",
        "",
        "| budget B | run | accuracy [95% CI] | mean CoT tokens | mean output tokens | share cut |",
        "|--:|---|---|--:|--:|--:|",
    ]
    for t in s["forcing"]:
        lines.append(
            f"| {t['budget']} | {t['label']} | {_pct(t['accuracy'])} "
            f"[{_pct(t['ci95'][0])}, {_pct(t['ci95'][1])}] | {t['cot_tokens_mean']:.0f} | "
            f"{t['output_tokens_mean']:.0f} | {_pct(t['cut_off'])} |"
        )
    if curve:
        lines += [
            "",
            "## Training curve",
            "",
            f"`loss.jsonl`: the logged training loss every {curve[1]['step'] - curve[0]['step'] if len(curve) > 1 else 1} "
            f"steps, {curve[0]['loss']:.3f} at step {curve[0]['step']} → {curve[-1]['loss']:.3f} at "
            f"step {curve[-1]['step']}.",
            "",
            "![training loss](training_curve.png)",
        ]
    if notes:
        lines += ["", "## How it ran", "", notes]
    return "\n".join(lines) + "\n"


def plot_curve(curve: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([c["step"] for c in curve], [c["loss"] for c in curve])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--against", type=Path, help="an earlier adapter's eval folder")
    args = parser.parse_args(argv)
    run = json.loads((args.folder / "run.json").read_text())
    against = json.loads((args.against / "run.json").read_text()) if args.against else None
    summary = summarize(run, against)
    curve_file = args.folder / "loss.jsonl"
    curve = (
        [json.loads(line) for line in curve_file.read_text().splitlines() if line.strip()]
        if curve_file.is_file()
        else []
    )
    if curve:
        plot_curve(curve, args.folder / "training_curve.png")
    notes_file = args.folder / "NOTES.md"  # how the run went (machine load), kept by hand
    notes = notes_file.read_text().strip() if notes_file.is_file() else None
    summary["training_curve"] = curve
    (args.folder / "knob.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = render(summary, curve, notes)
    (args.folder / "KNOB.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
