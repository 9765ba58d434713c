"""Render ``reports/meaning/MINIMAL.md``: phrase survival before and after minimal guard spans.

Reads the meaning reports written by ``bench/meaning.py`` (clause guards: ``after.json``,
``heldout.json``; minimal spans: ``minimal.json``, ``minimal_heldout.json``; no guards:
``after_noguards.json``) and writes one table with each one's commands and load averages.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FOLDER = REPO_ROOT / "reports" / "meaning"
LABELS = {
    "after": "clause guards",
    "heldout": "clause guards",
    "minimal": "minimal spans",
    "minimal_heldout": "minimal spans",
    "after_noguards": "no guards",
}
SETS = (
    ("meaning", ("after", "minimal", "after_noguards")),
    ("held-out", ("heldout", "minimal_heldout")),
)


def load(name: str) -> dict:
    return json.loads((FOLDER / f"{name}.json").read_text())


def main() -> None:
    lines = [
        "# Meaning guards on minimal spans: before and after",
        "",
        "Each text of the meaning set (74 texts, 1,229 hand-annotated constraint phrases) and of "
        "the held-out set (21 texts, 375 phrases, written separately) compressed at each γ as "
        "`tokenskip compress` does by default; a phrase counts as kept only when it survives "
        "whole (word for word). Target tokenizer: SmolLM2's. Every compressed text is in the "
        "`.outputs.jsonl.gz` beside each JSON.",
        "",
        "- *clause guards* (`after.json`, `heldout.json`): the previous guards, a cue guarding "
        "its whole chunk;",
        "- *minimal spans* (`minimal.json`, `minimal_heldout.json`): a cue guarding its minimal "
        "phrase, the rest of its clause (its scope) kept first while γ allows;",
        "- *no guards* (`after_noguards.json`): every guard off.",
        "",
        "| set | guards | scorer | γ | phrases kept | texts intact | achieved ratio | forced ratio |",
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
    lines += ["", "Commands of the minimal-span runs (load average before → after):", ""]
    for name in ("minimal", "minimal_heldout"):
        d = load(name)
        la = d["load_average"]
        lines.append(f"- `{d['command']}` ({la['before'][0]:.2f} → {la['after'][0]:.2f})")
    (FOLDER / "MINIMAL.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
