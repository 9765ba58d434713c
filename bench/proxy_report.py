"""Renders ``proxy_bench.json`` as Markdown. Data first: nothing here measures anything."""

from __future__ import annotations

from typing import Any

NOTE_CORES = (
    "The machine has {cpus} CPU cores. The load generator, the upstream and the proxy under "
    "test share them (and so does anything else running on the machine: see the load "
    "averages), so throughput is that of the whole set, not of the proxy alone; CPU ms per "
    "request (from /proc, over the throughput run) shows where the time goes."
)


def render(report: dict[str, Any]) -> str:
    meta = report.get("meta", {})
    parts = report.get("parts", {})
    lines = ["# Proxy benchmark", ""]
    lines += _meta_lines(meta)
    lines += [
        "",
        "Each part records the commit it ran on (the tree may move between parts).",
        "",
        "| part | date | commit | runtime | load avg start → end | status |",
        "|---|---|---|--:|---|---|",
    ]
    for name, part in parts.items():
        m = part["meta"]
        commit = (m.get("git_commit") or "?")[:10] + ("+dirty" if m.get("git_dirty") else "")
        lines.append(
            f"| {name} | {m['date']} | `{commit}` | {m['runtime_s']:.0f} s "
            f"| {_loads(m['load_average_start'])} → {_loads(m['load_average_end'])} "
            f"| {part.get('error') or 'ok'} |"
        )
    render_part = {
        "overhead": _overhead,
        "apis": _apis,
        "compression": _compression,
        "concurrency": _concurrency,
    }
    for name, part in parts.items():
        lines += ["", f"## {name.capitalize()}", "", f"Command: `{part['meta']['command']}`", ""]
        if part.get("error"):
            lines += [f"**Failed:** `{part['error']}`"]
            continue
        lines += render_part[name](part, meta)
    return "\n".join(lines) + "\n"


def _meta_lines(meta: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    dirty = " (working tree dirty)" if meta.get("git_dirty") else ""
    return [
        f"Last written: {meta.get('date')}  ",
        f"Commit when last written: `{meta.get('git_commit')}`{dirty}  ",
        f"Machine: {meta.get('processor')}, {meta.get('cpu_count')} CPUs, {meta.get('platform')}  ",
        f"Versions: Python {meta.get('python')}, {versions}",
    ]


def _loads(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _ms(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _servers(servers: dict[str, Any]) -> list[str]:
    lines = ["", "Servers (the bench master key is masked):", ""]
    for name, s in servers.items():
        env = " ".join(f"{k}={v}" for k, v in (s.get("env") or {}).items())
        timing = ", ".join(
            f"{label} {s[key]:.2f} {unit}"
            for key, label, unit in (
                ("startup_s", "ready after", "s"),
                ("first_request_ms", "first request", "ms"),
            )
            if s.get(key) is not None
        )
        lines.append(f"- **{name}**: `{(env + ' ') if env else ''}{s['command']}`")
        if timing:
            lines.append(f"  ({timing})")
        if s.get("config"):
            lines.append(f"  config: `{_flow(s['config'])}`")
    return lines


def _flow(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, default_flow_style=True, sort_keys=False, width=10**6).strip()


def _overhead(part: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    args = part["settings"]
    lines = [
        f"Sequential latency: 1 keep-alive connection, {args['requests']} requests after "
        f"{args['warmup']} warmup. Throughput: {part['throughput_tool']} with "
        f"{args['connections']} keep-alive connections for {args['duration']:g} s. "
        f"{args['rounds']} rounds, targets visited in rotated order; medians over rounds. "
        "Added = target − direct.",
        "",
        NOTE_CORES.format(cpus=meta.get("cpu_count")),
        "",
        "| target | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms | req/s | loaded p50 ms "
        "| loaded p99 ms | proxy CPU ms/req | upstream CPU ms/req | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, s in part["summary"].items():
        cpu = "–" if name == "direct" else _ms(s["target_cpu_ms_per_request"], 3)
        lines.append(
            f"| {name} | {_ms(s['p50_ms'], 3)} | {_ms(s['p90_ms'], 3)} | {_ms(s['p99_ms'], 3)} "
            f"| {_ms(s.get('added_p50_ms'), 3)} | {_ms(s.get('added_p99_ms'), 3)} "
            f"| {s['requests_per_s']:.0f} | {_ms(s['loaded_p50_ms'])} | {_ms(s['loaded_p99_ms'])} "
            f"| {cpu} | {_ms(s['upstream_cpu_ms_per_request'], 3)} | {s['num_errors']} |"
        )
    lines += ["", "Per round (p50 ms / req/s):", ""]
    for name, rounds in part["rounds"].items():
        values = ", ".join(
            f"{r['latency']['p50_ms']:.3f} / {r['throughput']['requests_per_s']:.0f}"
            for r in rounds
        )
        lines.append(f"- {name}: {values}")
    lines += ["", "Targets:", ""]
    for v in part["verdicts"]:
        lines.append(f"- **{'PASS' if v['pass'] else 'MISS'}** {v['target']}: {v['value']}")
    for name, failure in part.get("failures", {}).items():
        lines += ["", f"**{name} failed:**", "", "```", failure["error"].strip(), "```"]
    if part.get("stopped_early"):
        lines += ["", f"Stopped early: {part['stopped_early']}"]
    return lines + _servers(part["servers"])


def _apis(part: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    args = part["settings"]
    lines = [
        "Chat Completions, Responses and Messages in front of one fast upstream that answers "
        "all three; tokenskip with compression off (Responses and Messages forwarded to the "
        "upstream's own endpoints), LiteLLM's proxy on the same two deployments, one worker "
        f"each. Sequential latency: 1 keep-alive connection, {args['requests']} requests after "
        f"{args['warmup']} warmup. Throughput: {part['throughput_tool']} with "
        f"{args['connections']} keep-alive connections for {args['duration']:g} s. "
        f"{args['rounds']} rounds, (API, target) pairs visited in rotated order; medians over "
        "rounds. Added = target − the upstream directly.",
        "",
        NOTE_CORES.format(cpus=meta.get("cpu_count")),
        "",
        "| API | target | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s | loaded p50 ms "
        "| proxy CPU ms/req | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for api, summary in part["summary"].items():
        for name, s in summary.items():
            cpu = "–" if name == "direct" else _ms(s["target_cpu_ms_per_request"], 3)
            lines.append(
                f"| {api} | {name} | {_ms(s['p50_ms'], 3)} | {_ms(s['p99_ms'], 3)} "
                f"| {_ms(s.get('added_p50_ms'), 3)} | {_ms(s.get('added_p99_ms'), 3)} "
                f"| {s['requests_per_s']:.0f} | {_ms(s['loaded_p50_ms'])} | {cpu} "
                f"| {s['num_errors']} |"
            )
    lines += ["", "Per round (p50 ms / req/s):", ""]
    for api, rounds in part["rounds"].items():
        for name, points in rounds.items():
            values = ", ".join(
                f"{r['latency']['p50_ms']:.3f} / {r['throughput']['requests_per_s']:.0f}"
                for r in points
            )
            lines.append(f"- {api} {name}: {values}")
    lines += ["", "Targets:", ""]
    for v in part["verdicts"]:
        lines.append(f"- **{'PASS' if v['pass'] else 'MISS'}** {v['target']}: {v['value']}")
    for name, failure in part.get("failures", {}).items():
        lines += ["", f"**{name} failed:**", "", "```", failure["error"].strip(), "```"]
    if part.get("stopped_early"):
        lines += ["", f"Stopped early: {part['stopped_early']}"]
    return lines + _servers(part["servers"])


def _compression(part: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    built = part["prompt_tokens_built"]
    lines = [
        f"Prompts: {len(built)} distinct GSM8K-train prompts of {min(built)}–{max(built)} SmolLM2 "
        f"tokens (target {part['prompt_tokens_target']}; the first is warmup), one user message "
        "each. Token counts come from the response (`usage`); the upstream counts what it "
        f"receives with the SmolLM2 tokenizer. Requested prompt_ratio {part['prompt_ratio']}. "
        f"Latency: client wall time, median of {part['num_timed_prompts']} requests; added = "
        "median − median with tokenskip disabled. Cache hit: one repeat of an already-scored "
        f"prompt. Server torch threads: {part.get('server_torch_threads', '?')}.",
        "",
        "| variant | original tokens | sent tokens | saved tokens | keep ratio | median ms "
        "| min–max ms | added ms | cache-hit ms | counts consistent |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for name, s in part["summary"].items():
        problems = "; ".join(s["consistency_problems"]) or "yes"
        hit = part.get("cache_hit_ms", {}).get(name)
        lines.append(
            f"| {name} | {s['prompt_tokens_original']:.0f} | {s['prompt_tokens_sent']:.0f} "
            f"| {s['prompt_tokens_saved']:.0f} | {s['keep_ratio']:.3f} | {s['median_ms']:.1f} "
            f"| {s['min_ms']:.1f}–{s['max_ms']:.1f} | {_ms(s['added_ms'], 1)} | {_ms(hit, 1)} "
            f"| {problems} |"
        )
    lines += [
        "",
        "The first timed request of each variant: its `usage` prompt counts, then headers.",
        "",
    ]
    for name, s in part["summary"].items():
        lines.append(f"- {name}: `{s['example']['usage']}` `{s['example']['headers']}`")
    lines += ["", f"Warmup (first request of each variant, ms): {part['warmup_ms']}"]
    if part.get("stopped_early"):
        lines += ["", f"Stopped early: {part['stopped_early']}"]
    return lines + _servers(part["servers"])


def _concurrency(part: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        f"{part['num_clients']} short GSM8K train questions to the embedded `{part['model']}` "
        f"(max_tokens {part['max_tokens']}, temperature 0): one at a time, then all at once "
        "(asyncio, official `openai` client); the server batches concurrent requests up to its "
        "default `local_max_batch`. One warmup request first. Server torch threads: "
        f"{part.get('server_torch_threads', '?')}.",
        "",
        "| mode | requests | 200s | non-empty | wall s | completion tokens | tokens/s | req/s "
        "| median latency ms | max latency ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for mode in ("sequential", "concurrent"):
        s = part[mode]
        lines.append(
            f"| {mode} | {s['num_requests']} | {s['num_200']} | {s['num_nonempty']} "
            f"| {s['wall_s']:.2f} | {s['completion_tokens']} | {s['completion_tokens_per_s']:.1f} "
            f"| {s['requests_per_s']:.2f} | {s['median_latency_ms']:.0f} "
            f"| {s['max_latency_ms']:.0f} |"
        )
        if s["first_error"]:
            lines.append(f"\nFirst error ({mode}): `{s['first_error']}`\n")
    lines += [
        "",
        f"Speedup (sequential wall / concurrent wall): **{part['speedup']:.2f}×**. "
        f"Identical answers sequential vs concurrent: {part['num_identical_answers']}"
        f"/{part['num_clients']}.",
    ]
    return lines + _servers(part["servers"])
