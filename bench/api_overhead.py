"""Part ``apis`` of the proxy benchmark: the pass-through cost of each API the gateway speaks
(OpenAI Chat Completions, OpenAI Responses, Anthropic Messages) in front of the same very fast
upstream, side by side with LiteLLM's proxy on the same deployments.

One upstream (``fast_upstream.py``) answers all three paths. ``tokenskip serve`` runs with
compression off (``tokenskip: {enabled: false}``), one worker: chat completions on the direct
backend, Responses and Messages forwarded to the upstream's own endpoints (the same-protocol
pass-through). LiteLLM's proxy (``.bench-venv``), one worker, no database, serves the same
three paths on the same two deployments. Each round visits every (API, target) pair in a
rotated order; per pair: sequential latency on one keep-alive connection, then throughput with
N keep-alive connections; medians over rounds. Added = target − the upstream directly.
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
LITELLM = "litellm-proxy"
ADDED_HOP_TARGET_X = 1.5
"""Issue #31: the added p50 at most 1.5x the direct hop's own p50 in the same run."""
THROUGHPUT_TARGET_X = 20.0
"""Issue #31: throughput at least 20x LiteLLM's proxy's in the same run."""
CLAUDE = "claude-m"
MESSAGE = "Say hi."
MAX_TOKENS = 16

APIS: dict[str, dict[str, Any]] = {
    "chat": {
        "path": "/v1/chat/completions",
        "body": {"model": targets.MODEL, "messages": [{"role": "user", "content": MESSAGE}],
                 "max_tokens": MAX_TOKENS},
    },
    "responses": {
        "path": "/v1/responses",
        "body": {"model": targets.MODEL, "input": MESSAGE, "max_output_tokens": MAX_TOKENS},
    },
    "messages": {
        "path": "/v1/messages",
        "body": {"model": CLAUDE, "messages": [{"role": "user", "content": MESSAGE}],
                 "max_tokens": MAX_TOKENS},
    },
}  # fmt: skip


def model_list(upstream_port: int, policy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The two deployments every proxy serves: an OpenAI-protocol one and an Anthropic one."""
    claude = {
        "model": f"anthropic/{CLAUDE}",
        "api_base": f"http://127.0.0.1:{upstream_port}",
        "api_key": "x",
    }
    found = [
        {"model_name": targets.MODEL, "litellm_params": targets.deployment(upstream_port)},
        {"model_name": CLAUDE, "litellm_params": claude},
    ]
    if policy is not None:
        for entry in found:
            entry["tokenskip"] = dict(policy)
    return found


def launches(upstream_port: int, work_dir: Path, key: str) -> list[targets.Launch]:
    found = []
    config = {
        "model_list": model_list(upstream_port, {"enabled": False}),
        "general_settings": {"master_key": key},
    }
    path = targets.write_yaml(work_dir / "tokenskip-apis.yaml", config)
    command = [
        str(targets.VENV_BIN / "tokenskip"), "serve", "--config", str(path),
        "--port", str(free_port()), "--workers", "1", "--log-level", "warning",
        "--ledger-url", f"sqlite:///{work_dir / 'tokenskip-apis-ledger.db'}",
    ]  # fmt: skip
    port = int(command[command.index("--port") + 1])
    found.append(targets.Launch(TOKENSKIP, command, port, "/healthz", {}, config))
    if targets.has_litellm_proxy():
        config = {
            "model_list": model_list(upstream_port, None),
            "general_settings": {"master_key": key},
        }
        path = targets.write_yaml(work_dir / "litellm-apis.yaml", config)
        port = free_port()
        command = [
            str(targets.BENCH_VENV / "bin" / "litellm"), "--config", str(path),
            "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
        ]  # fmt: skip
        found.append(
            targets.Launch(
                LITELLM, command, port, "/health/liveliness", dict(targets.LITELLM_ENV), config
            )  # fmt: skip
        )
    return found


def headers_for(key: str) -> dict[str, str]:
    """Both ways of carrying the key (Bearer and Anthropic's x-api-key), and the version."""
    return {"Authorization": f"Bearer {key}", "x-api-key": key, "anthropic-version": "2023-06-01"}


def check_answer(port: int, api: str, key: str) -> None:
    """One request, its answer checked to be the API's own shape (a proxy that answers 200
    with something else is not measured)."""
    import http.client

    spec = APIS[api]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST", spec["path"], body=json.dumps(spec["body"]),
            headers={"content-type": "application/json", **headers_for(key)},
        )  # fmt: skip
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"{api}: {response.status}: {data[:300]!r}")
    body = json.loads(data)
    shape = {"chat": "chat.completion", "responses": "response", "messages": "message"}[api]
    if body.get("object", body.get("type")) != shape:
        raise RuntimeError(f"{api}: not a {shape}: {data[:300]!r}")


def measure(port: int, pids: list[int], api: str, key: str, args: Any) -> dict[str, Any]:
    spec = APIS[api]
    body, headers = json.dumps(spec["body"]).encode(), headers_for(key)
    latency = loadgen.sequential_latency(
        port, body, headers, num_requests=args.requests, num_warmup=args.warmup,
        time_limit=args.latency_time_limit, path=spec["path"],
    )  # fmt: skip
    cpu_before = [cpu_seconds(pid) for pid in pids]
    load = loadgen.throughput(
        port, body, headers, connections=args.connections, duration=args.duration,
        path=spec["path"],
    )  # fmt: skip
    cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before)]
    completed = max(load.num_requests, 1)
    return {
        "latency": asdict(latency),
        "throughput": asdict(load),
        "cpu_ms_per_request": [round(c / completed * 1000, 4) for c in cpu],
    }


def summarize(points: list[dict[str, Any]]) -> dict[str, Any]:
    def median(get: Any) -> float:
        return statistics.median(get(r) for r in points)

    return {
        "p50_ms": median(lambda r: r["latency"]["p50_ms"]),
        "p99_ms": median(lambda r: r["latency"]["p99_ms"]),
        "requests_per_s": median(lambda r: r["throughput"]["requests_per_s"]),
        "loaded_p50_ms": median(lambda r: r["throughput"]["p50_ms"] or 0.0),
        "target_cpu_ms_per_request": median(lambda r: r["cpu_ms_per_request"][0]),
        "num_errors": sum(
            r["latency"]["num_errors"] + r["throughput"]["num_errors"] for r in points
        ),
    }


def verdicts(api: str, summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    if TOKENSKIP in summary and DIRECT in summary:
        added, hop = summary[TOKENSKIP]["added_p50_ms"], summary[DIRECT]["p50_ms"]
        out.append({"target": f"{api}: added p50 <= {ADDED_HOP_TARGET_X:g}x the direct hop's p50",
                    "value": f"{added:.3f} ms vs {hop:.3f} ms ({added / hop:.1f}x)",
                    "pass": added <= ADDED_HOP_TARGET_X * hop})  # fmt: skip
    if TOKENSKIP in summary and LITELLM in summary:
        mine, theirs = (summary[n]["requests_per_s"] for n in (TOKENSKIP, LITELLM))
        ratio = mine / theirs if theirs else float("inf")
        out.append({
            "target": f"{api}: throughput >= {THROUGHPUT_TARGET_X:g}x LiteLLM proxy's",
            "value": f"{mine:.0f} vs {theirs:.0f} req/s ({ratio:.1f}x)",
            "pass": ratio >= THROUGHPUT_TARGET_X,
        })  # fmt: skip
    return out


def run(args: Any, work_dir: Path) -> dict[str, Any]:
    key = targets.new_master_key()
    settings = ("rounds", "requests", "warmup", "connections", "duration")
    result: dict[str, Any] = {
        "settings": {k: getattr(args, k) for k in settings},
        "throughput_tool": "wrk -t1" if loadgen.has_wrk() else "aiohttp (separate process)",
        "servers": {},
        "failures": {},
        "rounds": {api: {} for api in APIS},
    }
    with ServerPool(work_dir / "logs", targets.base_env()) as pool:
        up = targets.upstream(free_port())
        upstream = targets.start(pool, up)
        result["servers"][DIRECT] = up.describe(upstream)
        ports = {DIRECT: (upstream.port, [upstream.process.pid])}
        for launch in launches(upstream.port, work_dir, key):
            try:
                server = targets.start(pool, launch, args.startup_timeout)
                for api in APIS:
                    check_answer(server.port, api, key)
            except (ServerError, RuntimeError) as exc:
                result["failures"][launch.name] = {**launch.describe(), "error": str(exc)}
                continue
            result["servers"][launch.name] = launch.describe(server)
            ports[launch.name] = (server.port, [server.process.pid, upstream.process.pid])
        if not targets.has_litellm_proxy():
            result["failures"][LITELLM] = {
                "error": f"not installed: {targets.litellm_install_hint()}"
            }
        pairs = [(api, name) for api in APIS for name in ports]
        deadline = time.monotonic() + args.time_budget
        for index in range(args.rounds):
            if time.monotonic() > deadline:
                result["stopped_early"] = f"time budget spent after {index} rounds"
                break
            shift = (index * len(ports)) % len(pairs)
            for api, name in pairs[shift:] + pairs[:shift]:
                port, pids = ports[name]
                try:
                    point = measure(port, pids, api, key, args)
                except RuntimeError as exc:
                    result["failures"].setdefault(f"{name} {api}", {})["error"] = str(exc)
                    continue
                result["rounds"][api].setdefault(name, []).append(point)
    result["summary"], result["verdicts"] = {}, []
    for api, rounds in result["rounds"].items():
        summary = {name: summarize(points) for name, points in rounds.items() if points}
        base = summary.get(DIRECT)
        for values in summary.values():
            if base:
                values["added_p50_ms"] = values["p50_ms"] - base["p50_ms"]
                values["added_p99_ms"] = values["p99_ms"] - base["p99_ms"]
        result["summary"][api] = summary
        result["verdicts"] += verdicts(api, summary)
    return result
