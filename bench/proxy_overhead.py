"""Part 1 of the proxy benchmark: what a proxy in front of a very fast upstream costs.

Targets, all measured in one run with the same load generators: the fast upstream directly,
``tokenskip serve`` in pass-through mode (``tokenskip: {enabled: false}``) with its default
backend for OpenAI-protocol deployments and with ``direct_openai_compatible: false`` (the
litellm Router path), and LiteLLM's own proxy on the same deployment. One worker each.

Every target runs for the whole part; the measurement rounds visit them in a rotated order so
that drift in the machine's background load spreads over all of them. Per round and target:
sequential latency (one keep-alive connection), then throughput (N keep-alive connections),
and the CPU seconds the target's processes (and the upstream's) spent during the throughput
run. Results are medians over rounds.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import loadgen
import targets
from servers import ServerError, ServerPool, cpu_seconds, free_port

DIRECT = "direct"
TOKENSKIP = "tokenskip"
TOKENSKIP_ROUTER = "tokenskip-router"
LITELLM = "litellm-proxy"
ADDED_P50_TARGET_MS = 1.0
MESSAGE = "Say hi."
MAX_TOKENS = 16


def request_body() -> bytes:
    messages = [{"role": "user", "content": MESSAGE}]
    return json.dumps(
        {"model": targets.MODEL, "messages": messages, "max_tokens": MAX_TOKENS}
    ).encode()


def launches(upstream_port: int, work_dir: Path, key: str) -> list[targets.Launch]:
    """The proxies to measure (the upstream itself is started separately)."""
    passthrough = {"enabled": False}
    found = [
        targets.tokenskip_proxy(
            TOKENSKIP,
            free_port(),
            work_dir,
            key,
            upstream_port=upstream_port,
            policy=passthrough,
        ),
        targets.tokenskip_proxy(
            TOKENSKIP_ROUTER,
            free_port(),
            work_dir,
            key,
            upstream_port=upstream_port,
            policy=passthrough,
            settings={"direct_openai_compatible": False},
        ),
    ]
    if targets.has_litellm_proxy():
        found.append(targets.litellm_proxy(free_port(), upstream_port, work_dir, key))
    return found


def measure(port: int, pids: list[int], key: str, *, args: Any) -> dict[str, Any]:
    """One round on one target: sequential latency, then throughput with CPU accounting."""
    body, headers = request_body(), {"Authorization": f"Bearer {key}"}
    latency = loadgen.sequential_latency(
        port,
        body,
        headers,
        num_requests=args.requests,
        num_warmup=args.warmup,
        time_limit=args.latency_time_limit,
    )
    cpu_before = [cpu_seconds(pid) for pid in pids]
    load = loadgen.throughput(
        port, body, headers, connections=args.connections, duration=args.duration
    )
    cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before)]
    completed = max(load.num_requests, 1)
    return {
        "latency": asdict(latency),
        "throughput": asdict(load),
        "cpu_ms_per_request": [round(c / completed * 1000, 4) for c in cpu],
    }


def first_request_ms(port: int, key: str) -> float:
    """Latency of the first request a fresh server answers (lazy imports, pools, caches)."""
    body, headers = request_body(), {"Authorization": f"Bearer {key}"}
    cold = loadgen.sequential_latency(
        port, body, headers, num_requests=1, num_warmup=0, time_limit=60
    )
    return round(cold.p50_ms, 2)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of the numbers the report compares."""

    def median(get: Any) -> float:
        return statistics.median(get(r) for r in rounds)

    return {
        "p50_ms": median(lambda r: r["latency"]["p50_ms"]),
        "p90_ms": median(lambda r: r["latency"]["p90_ms"]),
        "p99_ms": median(lambda r: r["latency"]["p99_ms"]),
        "requests_per_s": median(lambda r: r["throughput"]["requests_per_s"]),
        "loaded_p50_ms": median(lambda r: r["throughput"]["p50_ms"] or 0.0),
        "loaded_p99_ms": median(lambda r: r["throughput"]["p99_ms"] or 0.0),
        "target_cpu_ms_per_request": median(lambda r: r["cpu_ms_per_request"][0]),
        "upstream_cpu_ms_per_request": median(lambda r: r["cpu_ms_per_request"][-1]),
        "num_errors": sum(
            r["latency"]["num_errors"] + r["throughput"]["num_errors"] for r in rounds
        ),
    }


def verdicts(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The two targets: added p50 ≤ 1 ms, and throughput at least LiteLLM's."""
    out = []
    for name in (TOKENSKIP, TOKENSKIP_ROUTER):
        if name not in summary:
            continue
        added = summary[name]["added_p50_ms"]
        out.append(
            {
                "target": f"{name}: added p50 <= {ADDED_P50_TARGET_MS:g} ms",
                "value": round(added, 3),
                "pass": added <= ADDED_P50_TARGET_MS,
            }
        )
        if LITELLM in summary:
            mine, theirs = (summary[n]["requests_per_s"] for n in (name, LITELLM))
            out.append(
                {
                    "target": f"{name}: throughput >= LiteLLM proxy's",
                    "value": f"{mine:.0f} vs {theirs:.0f} req/s",
                    "pass": mine >= theirs,
                }
            )
    return out


def start_targets(
    pool: ServerPool, args: Any, work_dir: Path, key: str, result: dict[str, Any]
) -> dict[str, tuple[int, list[int]]]:
    """Start the upstream and every proxy; name → (port, pids whose CPU to count).

    A proxy that does not start is recorded under ``failures`` and left out.
    """
    up = targets.upstream(free_port())
    upstream = targets.start(pool, up)
    result["servers"][DIRECT] = up.describe(upstream)
    ports = {DIRECT: (upstream.port, [upstream.process.pid])}
    for launch in launches(upstream.port, work_dir, key):
        try:
            server = targets.start(pool, launch, args.startup_timeout)
        except ServerError as exc:
            result["failures"][launch.name] = {**launch.describe(), "error": str(exc)}
            continue
        result["servers"][launch.name] = {
            **launch.describe(server),
            "first_request_ms": first_request_ms(server.port, key),
        }
        ports[launch.name] = (server.port, [server.process.pid, upstream.process.pid])
    if not targets.has_litellm_proxy():
        result["failures"][LITELLM] = {"error": f"not installed: {targets.litellm_install_hint()}"}
    return ports


def run_rounds(
    ports: dict[str, tuple[int, list[int]]], key: str, args: Any, result: dict[str, Any]
) -> None:
    """Measure every target once per round, starting each round one target later."""
    names = list(ports)
    deadline = time.monotonic() + args.time_budget
    for index in range(args.rounds):
        if time.monotonic() > deadline:
            result["stopped_early"] = f"time budget {args.time_budget} s spent after {index} rounds"
            return
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            port, pids = ports[name]
            try:
                point = measure(port, pids, key, args=args)
            except RuntimeError as exc:
                result["failures"].setdefault(name, {})["error"] = str(exc)
                continue
            result["rounds"].setdefault(name, []).append(point)


def run(args: Any, work_dir: Path) -> dict[str, Any]:
    key = targets.new_master_key()
    settings = ("rounds", "requests", "warmup", "connections", "duration")
    result: dict[str, Any] = {
        "settings": {k: getattr(args, k) for k in settings},
        "throughput_tool": "wrk -t1" if loadgen.has_wrk() else "aiohttp (separate process)",
        "servers": {},
        "failures": {},
        "rounds": {},
    }
    with ServerPool(work_dir / "logs", targets.base_env()) as pool:
        ports = start_targets(pool, args, work_dir, key, result)
        run_rounds(ports, key, args, result)
    result["summary"] = _summary(result["rounds"])
    result["verdicts"] = verdicts(result["summary"])
    return result


def _summary(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary = {name: summarize(points) for name, points in rounds.items() if points}
    base = summary.get(DIRECT)
    for values in summary.values():
        if base:
            values["added_p50_ms"] = values["p50_ms"] - base["p50_ms"]
            values["added_p99_ms"] = values["p99_ms"] - base["p99_ms"]
    return summary
