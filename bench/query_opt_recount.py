"""Recount a Query-OPT report from its saved merged replies with today's parser.

The parser now treats answers that only copy the instruction's shape as missing (the
example's "...", answers that repeat their ids, one answer given to several different
queries; :func:`tokenskip.multi_query.parse_answers`). This re-reads every merged reply in
OUT.replies.jsonl, recounts format success, missing answers and merged accuracy, and writes
them beside the published numbers in the JSON report (``recount``) and in a section appended
to its Markdown. Numbers that need the single calls' texts (merged + fallback, agreement with
single) are not in the replies file and are left as published, said so.

    .venv/bin/python bench/query_opt_recount.py reports/query_opt_smollm2_continued.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from tokenskip.multi_query import parse_answers
from tokenskip.tasks import gsm8k

LABELS = {"base": "base", "adapter": "Query-OPT LoRA"}
SECTION = "## Recounted with the shape checks"


def recount(report_path: Path, data: str | None) -> dict:
    report = json.loads(report_path.read_text())
    test = gsm8k.load_gsm8k(data, split="test").problems
    rows: dict[tuple[int, str], dict] = defaultdict(
        lambda: {"groups": 0, "complete": 0, "missing": 0, "correct": 0, "queries": 0}
    )
    for line in report_path.with_suffix(".replies.jsonl").read_text().splitlines():
        reply = json.loads(line)
        problems = [test[i] for i in reply["indices"]]
        ids = list(range(1, len(problems) + 1))
        parsed = parse_answers(reply["text"], ids, [p.question for p in problems])
        row = rows[(reply["n"], reply["model"])]
        row["groups"] += 1
        row["queries"] += len(ids)
        row["complete"] += parsed.complete
        row["missing"] += len(parsed.missing)
        for qid, problem in zip(ids, problems):
            answer = parsed.answers.get(qid)
            predicted = gsm8k.extract_answer(answer) if answer else None
            row["correct"] += gsm8k.is_correct(predicted, problem.answer)
    out = {}
    for (n, model), row in sorted(rows.items()):
        published = report["results"][str(n)][model]
        out.setdefault(str(n), {})[model] = {
            "format_success": round(row["complete"] / row["groups"], 4),
            "format_success_published": published["format_success"],
            "missing_answers": row["missing"],
            "missing_answers_published": published["missing_answers"],
            "accuracy_merged": round(row["correct"] / row["queries"], 4),
            "accuracy_merged_published": published["accuracy_merged"],
        }
    report["recount"] = {
        "what": "format success, missing answers and merged accuracy re-parsed from the saved "
        "replies with the shape checks (placeholders, echoed ids, one answer for different "
        "queries); merged + fallback and agreement need the single calls' texts, which the "
        "replies file does not hold: those stay as published",
        "command": f"python bench/query_opt_recount.py {report_path.as_posix()}",
        "results": out,
    }
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    md = report_path.with_suffix(".md")
    if md.exists():
        text = md.read_text().split("\n" + SECTION)[0].rstrip() + "\n\n"
        lines = [
            SECTION,
            "",
            report["recount"]["what"] + ".",
            "",
            f"Command: `{report['recount']['command']}`",
            "",
            "| N | model | format success (published) | missing answers (published) | "
            "accuracy merged (published) |",
            "|--:|---|--:|--:|--:|",
        ]
        for n, models in out.items():
            for model, r in models.items():
                lines.append(
                    f"| {n} | {LABELS.get(model, model)} | {r['format_success']:.0%} "
                    f"({r['format_success_published']:.0%}) | {r['missing_answers']} "
                    f"({r['missing_answers_published']}) | {r['accuracy_merged']:.1%} "
                    f"({r['accuracy_merged_published']:.1%}) |"
                )
        md.write_text(text + "\n".join(lines) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="query_opt JSON reports")
    parser.add_argument("--data", default=None, help="GSM8K folder (default: ../shared)")
    args = parser.parse_args()
    for path in args.reports:
        print(path, json.dumps(recount(path, args.data)))


if __name__ == "__main__":
    main()
