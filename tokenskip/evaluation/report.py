"""Reports: the run's JSON (all numbers + provenance), rendered to Markdown and PNG plots.

Rendering reads only the JSON, so ``tokenskip eval report RUN.json`` re-renders any run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenskip.errors import InvalidInputError


def load_run(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise InvalidInputError(f"{path} is not a run JSON (invalid JSON)") from None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render_markdown(run: dict[str, Any]) -> str:
    meta = run["meta"]
    budgets = [str(b) for b in meta["config"]["budgets"]]
    lines = [
        f"# GSM8K token savings: {meta['model']}",
        "",
        f"- Model: `{meta['model']}`"
        + (f" + adapter `{meta['adapter']}`" if meta.get("adapter") else "")
        + f"; CoT tokens counted with the `{meta['tokenizer']}` tokenizer",
        f"- Data: {meta['dataset']['source']} ({meta['dataset']['split']}, n={meta['dataset']['n']}, sha256 `{meta['dataset']['sha256'][:16]}…`); {meta['config']['shots']}-shot; greedy",
        f"- Machine: {meta['hardware']['cpu_count']} CPUs"
        + (f", {meta['hardware']['cuda']}" if meta["hardware"].get("cuda") else ", no GPU")
        + f"; torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}; commit `{(meta.get('git_commit') or 'unknown')[:12]}`"
        + (" (dirty)" if meta.get("git_dirty") else ""),
        f"- Command: `{meta.get('command', '')}`",
        "",
        "Accuracy is at each generation cap (budgeted accuracy), with its 95% Wilson interval; *cut* is the share of answers still running at the cap. "
        "CoT tokens are the reasoning before the final-answer line at the largest cap; the achieved ratio divides them by the γ = 1.0 run of the same method (truncation and instruction: the original).",
        "",
    ]
    head = (
        "| method | γ | "
        + " | ".join(f"acc@{b} [95% CI] | cut@{b}" for b in budgets)
        + " | CoT tokens | achieved ratio | output tokens saved/sample | prompt tokens |"
    )
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    top = budgets[-1]
    for row in run["rows"]:
        cells = []
        for b in budgets:
            m = row["budgets"].get(b)
            if m is None:  # a method run at some caps only (--instruction-budgets)
                cells += ["not run", "–"]
                continue
            lo, hi = m["ci95"]
            cells += [f"{_pct(m['accuracy'])} [{_pct(lo)}–{_pct(hi)}]", f"{_pct(m['cut_off'])}%"]
        m = row["budgets"].get(top) or row["budgets"][max(row["budgets"], key=int)]
        ratio = "—" if m["achieved_ratio"] is None else f"{m['achieved_ratio']:.2f}"
        lines.append(
            f"| {row['method']} | {row['ratio']:g} | "
            + " | ".join(cells)
            + f" | {m['cot_tokens_mean']:.0f} | {ratio} | {m['output_tokens_saved_per_sample']:.0f} | {row['prompt_tokens_mean']:.0f} |"
        )
    lines += [
        "",
        "## Speed (labeled apart: never mixed)",
        "",
        "| method | γ | latency/sample, batch 1 (median s) | batch-1 tokens/s | throughput at batch B (output tokens/s) |",
        "|---|---|---|---|---|",
    ]
    for row in run["rows"]:
        lat = row.get("latency_batch1")
        thr = row.get("throughput") or {}
        lat_cells = (
            f"{lat['median_s']:.2f} (n={lat['samples']}) | {lat['tokens_per_s']:.1f}"
            if lat
            else "— | —"
        )
        thr_cell = (
            f"{thr['output_tokens_per_s']:.1f} (B={thr['batch_size']})"
            if "output_tokens_per_s" in thr
            else thr.get("note", "— (no generation)")
        )
        lines.append(f"| {row['method']} | {row['ratio']:g} | {lat_cells} | {thr_cell} |")
    if run.get("skipped_methods"):
        lines += [
            "",
            "Not run: " + "; ".join(f"`{k}` {v}" for k, v in run["skipped_methods"].items()) + ".",
        ]
    price = meta["config"]["price_per_1k_output"]
    lines += [
        "",
        f"Cost of saved output tokens at ${price} per 1,000 output tokens is in the JSON (`cost_saved_per_1k_samples_usd`).",
        "",
        "![accuracy vs CoT tokens](frontier.png)",
        "![achieved vs requested ratio](ratios.png)",
        "",
    ]
    return "\n".join(lines)


def render_plots(run: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [str(b) for b in run["meta"]["config"]["budgets"]]
    methods: dict[str, list[dict[str, Any]]] = {}
    for row in run["rows"]:
        methods.setdefault(row["method"], []).append(row)
    original = methods.get("original", [])

    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4.2), squeeze=False)
    for ax, b in zip(axes[0], budgets):
        for method, rows in methods.items():
            pts = rows if method in ("original", "tokenskip") else original + rows
            pts = [r for r in pts if b in r["budgets"]]
            pts = sorted(pts, key=lambda r: r["budgets"][b]["cot_tokens_mean"])
            xs = [r["budgets"][b]["cot_tokens_mean"] for r in pts]
            ys = [100 * r["budgets"][b]["accuracy"] for r in pts]
            ax.plot(xs, ys, marker="o", label=method)
            for r, x, y in zip(pts, xs, ys):
                ax.annotate(
                    f"{r['ratio']:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7
                )
        ax.set_title(f"cap {b} tokens")
        ax.set_xlabel("mean CoT tokens")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"GSM8K savings frontier: {run['meta']['model']} (n={run['meta']['dataset']['n']})"
    )
    fig.tight_layout()
    frontier = out_dir / "frontier.png"
    fig.savefig(frontier, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4.2))
    top = budgets[-1]
    for method, rows in methods.items():
        if method == "original":
            continue
        pts = sorted(
            (r["ratio"], r["budgets"][top]["achieved_ratio"])
            for r in rows
            if top in r["budgets"] and r["budgets"][top]["achieved_ratio"] is not None
        )
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.plot([0.4, 1.0], [0.4, 1.0], "k--", lw=1, label="achieved = requested")
    ax.set_xlabel("requested ratio γ")
    ax.set_ylabel(f"achieved CoT ratio (cap {top})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    ratios = out_dir / "ratios.png"
    fig.savefig(ratios, dpi=120)
    plt.close(fig)
    return [frontier, ratios]


def write_reports(run: dict[str, Any], out_dir: Path, samples_file: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_path = out_dir / "run.json"
    run_path.write_text(json.dumps({k: v for k, v in run.items() if k != "samples"}, indent=1))
    paths = {"json": run_path}
    if samples_file:
        samples = out_dir / "samples.jsonl"
        samples.write_text("".join(json.dumps(s) + "\n" for s in run.get("samples", [])))
        paths["samples"] = samples
    md = out_dir / "README.md"
    md.write_text(render_markdown(run))
    paths["markdown"] = md
    frontier, ratios = render_plots(run, out_dir)
    paths.update(frontier=frontier, ratios=ratios)
    return paths
