"""Renders a ``bench/query_opt.py`` report (JSON) as Markdown. Data first: nothing here
measures anything.

    .venv/bin/python bench/query_opt_report.py [reports/query_opt_smollm2.json]
"""

from __future__ import annotations

from typing import Any

from provenance import notes_lines, render_main

# the targets, after training, at N = 4
FORMAT_TARGET, REDUCTION_TARGET, ACCURACY_POINTS = 0.95, 3.0, 2.0


def render(r: dict[str, Any]) -> str:
    hw, versions = r.get("hardware", {}), r.get("versions", {})
    commit = (r.get("git_commit") or "?")[:10] + (" (dirty)" if r.get("git_dirty") else "")
    results = r["results"]
    modes = [m for m in ("base", "adapter") if any(m in row for row in results.values())]
    lines = [
        "# Query-OPT on the embedded model: N queries per call vs one call per query",
        "",
        f"Command: `{r.get('command', '?')}`  ",
        f"Status: {r.get('status', 'complete')}  ",
        f"Adapter: `{r.get('adapter')}`  ",
        f"Commit: `{commit}`, date {r.get('date', '?')}  ",
        f"Machine: {hw.get('machine')}, {hw.get('cpu_count')} CPUs, GPU: "
        f"{hw.get('cuda') or 'none'}; torch {versions.get('torch')}, transformers "
        f"{versions.get('transformers')}  ",
        f"Workload: GSM8K test questions, each group of N asked against one shared "
        f"{r.get('shots')}-shot CoT context; single calls ask each question alone against the "
        f"same context (base model). Budget {r.get('answer_tokens')} new tokens per answer "
        f"(merged: N × that + 32). Decoding: greedy"
        + (
            f" with OpenAI's frequency penalty {r.get('frequency_penalty', 0)} and presence "
            f"penalty {r.get('presence_penalty', 0)} (single and merged calls alike)"
            if r.get("frequency_penalty") or r.get("presence_penalty")
            else ""
        )
        + (
            "; a merged reply whose answer loops is stopped (the proxy's `batch.stop_loops`)"
            if r.get("stop_loops")
            else ""
        )
        + f". {_sentence(r.get('wall_note', ''))}",
        "",
        "| N | model | groups | format success | missing answers | failed at token budget "
        + ("(stopped as loops) " if r.get("stop_loops") else "")
        + "| accuracy single | accuracy merged | merged + fallback | same final answer as single "
        "| input tokens/query merged / single | calls/query (with retries) | s/query merged / "
        "single |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|---|",
    ]
    for n in sorted(results, key=int):
        row = results[n]
        for m in modes:
            if m not in row:
                continue
            x = row[m]
            label = "base" if m == "base" else "Query-OPT LoRA"
            lines.append(
                f"| {n} | {label} | {row['groups']} | {x['format_success']:.0%} "
                f"| {x['missing_answers']}/{row['queries']} | {x.get('failed_at_token_budget', '—')}"
                f"{_stopped(x)} "
                f"| {row['accuracy_single']:.1%} | {x['accuracy_merged']:.1%} "
                f"| {_pct(x.get('accuracy_with_fallback'))} "
                f"| {x['same_final_answer_as_single']:.1%} "
                f"| {row['input_tokens_per_query_merged']:,.0f} / "
                f"{row['input_tokens_per_query_single']:,.0f} ({row['input_token_reduction']:.2f}×) "
                f"| {row['calls_per_query_merged']:.3f} ({x['calls_per_query_with_retries']:.3f}) "
                f"| {x['wall_s_per_query_merged']:.2f} / {row['wall_s_per_query_single']:.2f} |"
            )
    lines += [
        "",
        *_finished_lines(results),
        "Format success: the reply parsed with every id. Accuracy merged counts only answers "
        "that came back; merged + fallback is what the proxy returns (a missing answer is asked "
        "again alone, i.e. the single answer, at the cost of the extra call in the calls "
        "column).",
        "",
    ]
    lines += notes_lines(r)
    four = results.get("4")
    if four and "adapter" in four:
        a = four["adapter"]
        gap = abs(four["accuracy_single"] - a["accuracy_merged"]) * 100
        lines += [
            "## Against the targets (after training, N = 4)",
            "",
            f"- Format success {a['format_success']:.0%} (target ≥ {FORMAT_TARGET:.0%}): "
            f"**{_verdict(a['format_success'] >= FORMAT_TARGET)}**.",
            f"- Input tokens per query {four['input_token_reduction']:.2f}× fewer than single "
            f"calls (target ≥ {REDUCTION_TARGET:.0f}×): "
            f"**{_verdict(four['input_token_reduction'] >= REDUCTION_TARGET)}**.",
            f"- Accuracy merged {a['accuracy_merged']:.1%} vs single "
            f"{four['accuracy_single']:.1%}: {gap:.1f} points apart (target ≤ "
            f"{ACCURACY_POINTS:.0f}): **{_verdict(gap <= ACCURACY_POINTS)}** "
            f"({four['queries']} questions: one question is "
            f"{100 / four['queries']:.1f} points).",
            "",
        ]
    example = next(
        (row["adapter"]["example_reply"] for row in results.values() if "adapter" in row), None
    )
    if example:
        lines += ["## A merged reply (after training, first group)", "", "```", example, "```", ""]
    return "\n".join(lines)


def _finished_lines(results: dict[str, Any]) -> list[str]:
    """How often a single answer ends by itself: a merged reply parses only if all N do."""
    if not all("single_finished" in row for row in results.values()):
        return []
    shares = ", ".join(
        f"N = {n}: {results[n]['single_finished']:.0%}" for n in sorted(results, key=int)
    )
    return [
        f"Single answers that ended by themselves within the budget: {shares} (a merged reply "
        "parses only if all N of its answers end).",
        "",
    ]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "." if text else ""


def _stopped(x: dict[str, Any]) -> str:
    return f" ({x['stopped_as_loops']})" if x.get("stopped_as_loops") is not None else ""


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "missed"


if __name__ == "__main__":
    render_main(render, "reports/query_opt_smollm2.json")
