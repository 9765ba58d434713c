"""Render ``reports/meaning/REACH.md``: how far a guard reaches, and what it costs and keeps.

Reads the meaning reports written by ``bench/meaning.py`` (clause guards: ``after.json``,
``heldout.json``; two-word reaches: ``minimal.json``, ``minimal_heldout.json``; clause
reach, the default: ``reach.json``, ``reach_heldout.json``; no guards:
``after_noguards.json``) and the downstream frontiers of ``bench/downstream.py``
(``frontier_minimal.json`` for two-word reaches, ``frontier.json`` for the default), and
writes one page with each run's command and load averages.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FOLDER = REPO_ROOT / "reports" / "meaning"
LABELS = {
    "after": "clause guards (before #30)",
    "heldout": "clause guards (before #30)",
    "minimal": "two-word reach",
    "minimal_heldout": "two-word reach",
    "reach": "clause reach (default)",
    "reach_heldout": "clause reach (default)",
    "after_noguards": "no guards",
}
SETS = (
    ("meaning", ("after", "minimal", "reach", "after_noguards")),
    ("held-out", ("heldout", "minimal_heldout", "reach_heldout")),
)
FRONTIERS = (("two-word reach", "frontier_minimal"), ("clause reach (default)", "frontier"))


def load(name: str) -> dict:
    return json.loads((FOLDER / f"{name}.json").read_text())


def annotation_floor(path: Path, tokenizer) -> float:
    """The forced share a guard would need to keep every annotated phrase and nothing else:
    per text, the tokens of its phrases (overlaps once) over its tokens; a tool output's
    JSON at its lossless size (data is never cut word by word). Mean over texts."""
    from tokenskip.lossless import lossless

    shares = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        text, total = item["text"], tokenizer.count(item["text"])
        if item["kind"] == "tool_output":
            shares.append(tokenizer.count(lossless(text).text) / total)
            continue
        spans: list[list[int]] = []
        for start, end in sorted(
            (text.find(c["phrase"]), text.find(c["phrase"]) + len(c["phrase"]))
            for c in item["constraints"]
            if c["phrase"] in text
        ):
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        shares.append(sum(tokenizer.count(text[a:b]) for a, b in spans) / total)
    return sum(shares) / len(shares)


def _command(d: dict) -> str:
    la = d["load_average"]
    return f"`{d['command']}` (load {la['before'][0]:.2f} → {la['after'][0]:.2f})"


def main() -> None:
    from tokenskip.models import load_model
    from tokenskip.tokens import TextTokenizer

    tokenizer = TextTokenizer(load_model("smollm2").tokenizer, "smollm2")
    data = REPO_ROOT / "bench" / "data"
    floor = annotation_floor(data / "meaning" / "texts.jsonl", tokenizer)
    held = annotation_floor(data / "meaning_heldout" / "texts.jsonl", tokenizer)
    lines = [
        "# How far a meaning guard reaches: what it forces, what it keeps",
        "",
        "Each text of the meaning set (74 texts, 1,229 hand-annotated constraint phrases) and of "
        "the held-out set (21 texts, 375 phrases, written separately) compressed at each γ as "
        "`tokenskip compress` does by default; a phrase counts as kept only when it survives "
        "whole (word for word). Target tokenizer: SmolLM2's. Every compressed text is in the "
        "`.outputs.jsonl.gz` beside each JSON.",
        "",
        "- *clause guards*: a cue guarding its whole chunk and the list items beside it;",
        "- *two-word reach*: a cue guarding its lead words and two words on either side, run on "
        'to finish its head ("should not sign anything"), the rest of its clause kept first '
        "while γ allows;",
        "- *clause reach* (the default): a negation or obligation reaching back to its subject "
        "(six words at most, never over a clause boundary), a limit or condition three words "
        'back, every cue on to the end of its clause; inclusions ("including candles") are '
        'condition cues; a number keeps the words that bound it ("within 24 hours"); cues of '
        'ability or need ("can", "need") keep the two-word reach;',
        "- *no guards*: every guard off.",
        "",
        "| set | guards | scorer | γ | phrases kept | texts intact | achieved ratio "
        "| forced ratio |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for set_name, names in SETS:
        for name in names:
            rows = sorted(load(name)["rows"], key=lambda r: (r["scorer"], -r["ratio"]))
            for r in rows:
                if r["scorer"] not in ("heuristic", "self-info"):
                    continue
                lines.append(
                    f"| {set_name} | {LABELS[name]} | {r['scorer']} | {r['ratio']} "
                    f"| {r['phrases_kept']:.1%} | {r['texts_intact']:.1%} "
                    f"| {r['achieved_ratio']:.3f} | {r.get('forced_ratio', 0.0):.3f} |"
                )
    lines += [
        "",
        "## What the target asked, and the floor under it",
        "",
        "Issue #30 asked for a forced share of at most 0.45 with at least 99% of the phrases "
        f"kept. The annotated phrases themselves are {floor:.2f} of the meaning set's tokens "
        f"({held:.2f} of the held-out set's; per text, in SmolLM2 tokens, with a tool output's "
        "JSON at its lossless size, since data is never cut word by word): rules would have to "
        "force the annotation and nothing else. In the table (heuristic scorer, γ 0.5): "
        + "; ".join(
            f"{LABELS[name]} forces {r['forced_ratio']:.2f} and keeps {r['phrases_kept']:.1%}"
            for name in ("minimal", "reach", "after")
            for r in load(name)["rows"]
            if r["scorer"] == "heuristic" and r["ratio"] == 0.5
        )
        + ". On constraint-dense text the "
        "choice is between savings and constraints; the default keeps the constraints, and "
        "the savings come from prose without them and from question-aware selection, which "
        "drops whole documents.",
        "",
        "## Downstream answers at each reach",
        "",
        "63 constraint-dependent questions over the meaning set's texts (every fifth), "
        "answered greedily by Qwen2.5-Coder-1.5B-Instruct (bf16, CPU) from the compressed "
        "text; raw generations beside each JSON.",
        "",
        "| guards | condition | accuracy [95% CI] | Δ vs original | achieved ratio "
        "| forced ratio | constraint phrase in context |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    for label, name in FRONTIERS:
        path = FOLDER / f"{name}.json"
        if not path.is_file():
            continue
        d = load(name)
        base = next(r["accuracy"] for r in d["rows"] if r["condition"] == "original")
        for r in d["rows"]:
            lo, hi = r["ci95"]
            delta = (
                "" if r["condition"] == "original" else f"{100 * (r['accuracy'] - base):+.1f} pt"
            )
            lines.append(
                f"| {label} | {r['condition']} | {r['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] "
                f"| {delta} | {r['achieved_ratio']:.3f} | {r['forced_ratio']:.3f} "
                f"| {r['constraint_kept']:.1%} |"
            )
    lines += ["", "## Commands", ""]
    for name in ("minimal", "minimal_heldout", "reach", "reach_heldout"):
        lines.append(f"- {LABELS[name]}: {_command(load(name))}")
    for label, name in FRONTIERS:
        if (FOLDER / f"{name}.json").is_file():
            d = load(name)
            kept = "" if name == "frontier" else f"; run at commit `{d['commit'][:10]}`, renamed"
            lines.append(f"- downstream, {label}: {_command(d)}{kept}")
    lines.append("- this page: `.venv/bin/python bench/meaning_report.py`")
    (FOLDER / "REACH.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
