"""Renders ``reports/local_runtime.json`` (from ``bench/local_runtime.py``) as Markdown.
Data first: nothing here measures anything.

    .venv/bin/python bench/local_runtime_report.py [reports/local_runtime.json]
"""

from __future__ import annotations

from typing import Any

from provenance import notes_lines, render_main

LOSSLESS_TARGET = 1.3  # the target: lossless mode vs HF generate, batch 1


def render(r: dict[str, Any]) -> str:
    rows = r["rows"]
    hw, versions = r.get("hardware", {}), r.get("versions", {})
    commit = (r.get("git_commit") or "?")[:10] + (" (dirty)" if r.get("git_dirty") else "")
    lines = [
        "# Local runtime: decode speed on the embedded model",
        "",
        f"Command: `{r.get('command', '?')}`  ",
        f"Status: {r.get('status', 'complete')}  ",
        f"Commit: `{commit}`, date {r.get('date', '?')}  ",
        f"Machine: {hw.get('machine')}, {hw.get('cpu_count')} CPUs, torch threads "
        f"{r.get('threads')}, GPU: {hw.get('cuda') or 'none'}; torch {versions.get('torch')}, "
        f"transformers {versions.get('transformers')}  ",
        f"Workload: {r['prompts']} GSM8K test questions (zero-shot chat prompt), greedy, up to "
        f"{r['max_new_tokens']} new tokens each; tokens/s = generated tokens / wall seconds of "
        "the whole set.",
        "",
        "| mode | batch | tokens | tokens/s | × HF b1 | identical to HF | drafts lookup / skip "
        "| acceptance | layers/token | exit rate | agreement with full model |",
        "|---|--:|--:|--:|--:|---|---|--:|--:|--:|---|",
    ]
    speedups = r.get("speedup_vs_hf_b1", {})
    for name, row in rows.items():
        spec, exits = row.get("speculative"), row.get("early_exit")
        agree = row.get("agreement_with_full_model")
        layers = (spec or exits or {}).get("layers_per_token")
        lines.append(
            f"| {name} | {row['batch']} | {row['tokens']:,} | {row['tokens_per_s']:.1f} "
            f"| {_num(speedups.get(name), 2)} | {_yes(row.get('identical_to_hf'))} "
            f"| {_drafts(spec)} "
            f"| {_num((spec or {}).get('acceptance'), 3)} | {_num(layers, 1)} "
            f"| {_num((exits or {}).get('exit_rate'), 3)} "
            f"| {_agreement(agree)} |"
        )
    lines += [
        "",
        "`trained_exits_*` rows run base + the early-exit LoRA merged; their speed-up and "
        "identity are against HF generate on that same merged model. Early exit is lossy: "
        "its identity column says whether every row still matched; the agreement column gives "
        "the rows identical to the full model's and the mean share of each full-model output "
        "reproduced before the first different token.",
        "",
    ]
    lines += notes_lines(r)
    lines += _targets(rows, speedups)
    for label, key in (("base model", "base"), ("base + trained exits", "trained_exits")):
        extra = r.get(key)
        if extra:
            lines += _calibration(label, extra)
    if r.get("setup_wall_s"):
        lines += ["## Setup time (not in tokens/s)", ""]
        lines += [f"- {k}: {v} s" for k, v in r["setup_wall_s"].items()]
        lines.append("")
    profile = (r.get("base") or {}).get("profile_engine_b1")
    if profile:
        lines += [
            "## Where batch-1 decode time goes (torch profiler, engine hot path, 1 prompt)",
            "",
            "| op | calls | self CPU ms | share |",
            "|---|--:|--:|--:|",
        ]
        lines += [
            f"| `{p['op']}` | {p['calls']:,} | {p['self_cpu_ms']:,.1f} | {p['share']:.1%} |"
            for p in profile
        ]
        lines.append("")
    return "\n".join(lines)


def _targets(rows: dict, speedups: dict) -> list[str]:
    out = ["## Against the targets", ""]
    for prefix, label in (("", "base"), ("trained_exits_", "trained exits")):
        for mode, what in (
            ("speculative", "layer-skip drafts"),
            ("speculative_lookup", "lookup + layer-skip drafts"),
        ):
            name = f"{prefix}engine_{mode}_b1"
            if name not in rows:
                continue
            s = speedups.get(name)
            verdict = "met" if s is not None and s >= LOSSLESS_TARGET else "missed"
            off = (
                ""
                if rows[name].get("speculation_on", True)
                else " (speculation off: empty skip set)"
            )
            out.append(
                f"- Lossless self-speculative, {what}, batch 1 ({label}): {_num(s, 2)}× HF "
                f"generate (target ≥ {LOSSLESS_TARGET}×: **{verdict}**), identical output: "
                f"{_yes(rows[name].get('identical_to_hf'))}{off}."
            )
    if "engine_b1" in rows:
        out.append(
            f"- Plain engine loop, batch 1: {_num(speedups.get('engine_b1'), 2)}× HF generate, "
            f"identical output: {_yes(rows['engine_b1'].get('identical_to_hf'))}."
        )
    if "engine_b8" in rows and "hf_generate_b8" in rows:
        ratio = rows["engine_b8"]["tokens_per_s"] / rows["hf_generate_b8"]["tokens_per_s"]
        out.append(
            f"- Batch 8: engine {rows['engine_b8']['tokens_per_s']:.1f} vs HF generate "
            f"{rows['hf_generate_b8']['tokens_per_s']:.1f} tokens/s ({ratio:.2f}×)."
        )
    out.append("")
    return out


def _calibration(label: str, extra: dict) -> list[str]:
    out = [f"## Calibration ({label})", ""]
    cal = extra.get("calibration") or {}
    if cal.get("trace"):
        steps = ", ".join(
            f"+{t['add']}: {t['agreement']:.3f}"
            + (f" (×{t['modeled_speedup']:.2f})" if "modeled_speedup" in t else "")
            for t in cal["trace"]
        )
        out.append(
            f"- Skip-set search (layer added: draft agreement"
            f"{', modeled speed-up' if 'modeled_speedup' in cal else ''}): {steps}"
        )
    out.append(
        f"- Speculative skip set: {extra.get('skip')} "
        + (
            f"(calibrated: draft agreement {_num(cal.get('agreement'), 3)} on the calibration "
            f"texts, target {cal.get('target')})"
            if cal
            else "(given)"
        )
    )
    for target, policy in (extra.get("early_exit_policies") or {}).items():
        c = policy.get("calibration") or {}
        by_layer = c.get("candidate_agreement_by_layer") or {}
        agreement = ", ".join(f"{k}: {v:.2f}" for k, v in by_layer.items())
        out.append(
            f"- Early exit, target {target}: layers kept {policy.get('layers')}, dropped "
            f"{c.get('dropped_layers')}; exit-layer agreement with the full model (candidate "
            f"layer: share) {agreement}; calibration-set agreement {_num(c.get('agreement'), 3)}, "
            f"exit rate {_num(c.get('exit_rate'), 3)}, layers/token "
            f"{_num(c.get('layers_per_token'), 1)}"
        )
    out.append("")
    return out


def _drafts(spec: dict | None) -> str:
    if not spec:
        return "—"
    lookup = spec.get("lookup_rounds", 0)
    text = f"{lookup:,} / {spec['rounds'] - lookup:,}"
    if lookup:
        text += f" (lookup acceptance {spec['lookup_accepted'] / spec['lookup_drafted']:.2f})"
    return text


def _agreement(a: dict | None) -> str:
    if not a:
        return "—"
    return f"{a['identical_rows']}/{a['rows']} rows, prefix {a['mean_prefix_share']:.2f}"


def _num(x: Any, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _yes(x: Any) -> str:
    return "—" if x is None else ("yes" if x else "no")


if __name__ == "__main__":
    render_main(render, "reports/local_runtime.json")
