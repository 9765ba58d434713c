"""The GSM8K 8-shot exemplar-compression table (LLMLingua's setting) from one eval run per
scorer: accuracy beside prompt tokens at each γ.

Each scorer's run is ``tokenskip eval gsm8k --shots 8 --methods original,prompt-compression
--ratios 0.7,0.5,0.3 --scorer S --out DIR/S``; this reads ``DIR/*/run.json`` and writes
``DIR/README.md`` and ``DIR/summary.json``.

    python bench/exemplars_report.py reports/exemplars-qwen0.5b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--note", default="", help="a line on the machine and load")
    args = parser.parse_args()
    runs = {
        p.parent.name: json.loads(p.read_text()) for p in sorted(args.folder.glob("*/run.json"))
    }
    if not runs:
        raise SystemExit(f"no */run.json under {args.folder}")
    rows = []
    for scorer, run in runs.items():
        budget = str(max(run["meta"]["config"]["budgets"]))
        original = next(r for r in run["rows"] if r["method"] == "original")
        base_prompt = original["prompt_tokens_mean"]
        for r in sorted(run["rows"], key=lambda r: -r["ratio"]):
            b = r["budgets"][budget]
            rows.append(
                {
                    "scorer": scorer if r["method"] != "original" else "(none)",
                    "gamma": r["ratio"],
                    "n": r["n"],
                    "accuracy": b["accuracy"],
                    "ci95": b["ci95"],
                    "prompt_tokens_mean": r["prompt_tokens_mean"],
                    "prompt_ratio_achieved": r["prompt_tokens_mean"] / base_prompt,
                    "cut_off": b["cut_off"],
                    "output_tokens_mean": b["output_tokens_mean"],
                }
            )
    seen, unique = set(), []
    for row in rows:  # the original row is the same run in every scorer's folder
        key = (row["scorer"], row["gamma"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    first = next(iter(runs.values()))["meta"]
    lines = [
        "# GSM8K 8-shot exemplar compression (LLMLingua's setting)",
        "",
        f"Model `{first['model']}` ({first['config']['dtype']}, greedy, cap "
        f"{max(first['config']['budgets'])} new tokens), the first {first['dataset']['n']} "
        f"GSM8K test questions, {first['config']['shots']} exemplars from train; each exemplar's "
        "question compressed with the prompt guards and its solution with the chain-of-thought "
        "guards (the `#### N` line kept verbatim). Prompt tokens are the whole chat prompt in "
        "the model's tokenizer; the achieved ratio divides them by the uncompressed prompt's. "
        + args.note,
        "",
        "| scorer | γ | accuracy [95% CI] | prompt tokens | achieved prompt ratio | cut off at cap |",
        "|---|--:|---|--:|--:|--:|",
    ]
    for r in unique:
        lo, hi = r["ci95"]
        lines.append(
            f"| {r['scorer']} | {r['gamma']:g} | {r['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] | "
            f"{r['prompt_tokens_mean']:.0f} | {r['prompt_ratio_achieved']:.3f} | {r['cut_off']:.0%} |"
        )
    lines += [
        "",
        "Commands, one per scorer (each folder's `run.json` holds its exact command, data hash, "
        "commit and machine; `samples.jsonl.gz` every generation's text):",
        "",
    ]
    lines += [f"- `{run['meta']['command']}`" for run in runs.values()]
    (args.folder / "README.md").write_text("\n".join(lines) + "\n")
    (args.folder / "summary.json").write_text(json.dumps(unique, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
