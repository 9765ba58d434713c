"""Tool outputs under load (#30): what the lossless transform costs a gateway serving an
agent loop, one request at a time and under 16 concurrent clients.

The body is an agent chat whose last message is a log-search tool's result: the 300
records of :func:`tool_outputs.log_records`, pretty-printed as a tool returns them
(~34k tokens in SmolLM2's tokenizer). The same body goes to three targets on this machine,
one after another (never side by side): the fast upstream directly
(``fast_upstream.py``, canned answer), ``tokenskip serve`` with compression off
(``tokenskip: {enabled: false}``) and ``tokenskip serve`` with the default policy (the
tool output minified into a table). Every request is the same chat, as an agent loop
resends its tool output on each later turn, so after the first the gateway's compression
memo answers it. Per target: sequential latency on one keep-alive
connection, then throughput over ``--connections`` keep-alive connections. Each gateway
answers once first and its ``tokenskip`` object is checked: the default must report the
saving, compression off none.

Target: throughput with compression no worse than with compression off by more than the
transform's own cost, i.e. ``1/rps_on - 1/rps_off <= transform``, where the transform is the
gateway's prompt step on this chat in-process (the lossless transforms and the count of the
saving, one core, median; target ≤ 10 ms).

Run: ``.venv/bin/python bench/tool_output_load.py --out reports/tool_output_load.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
import targets  # noqa: E402
from provenance import run_facts, write_report  # noqa: E402
from servers import ServerPool, cpu_seconds, free_port  # noqa: E402
from tool_outputs import log_records  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CALL_ID = "call_logs_1"


def agent_chat() -> dict[str, Any]:
    """The request: a user's ask, the assistant's tool call and the tool's pretty JSON."""
    records = json.dumps(log_records(), indent=2)
    return {
        "model": targets.MODEL,
        "max_tokens": 16,
        "messages": [
            {"role": "system", "content": "You are an SRE assistant. Use the tools."},
            {"role": "user", "content": "Which service had the most 5xx errors this morning?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "search_logs", "arguments": '{"since": "09:00"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": CALL_ID, "content": records},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "search_logs",
                    "description": "Search the service logs.",
                    "parameters": {
                        "type": "object",
                        "properties": {"since": {"type": "string"}},
                        "required": ["since"],
                    },
                },
            }
        ],
    }


def prompt_step_ms(request: dict[str, Any], repeats: int = 21) -> float:
    """The gateway's prompt step on this chat in-process, one core, median: the default
    policy's transforms (:func:`tokenskip.proxy.serving.prompt.compress_messages`) and the count of
    the saving in SmolLM2's tokenizer."""
    import torch

    from tokenskip.models import load_tokenizer
    from tokenskip.proxy.infra.policy import CompressionPolicy
    from tokenskip.proxy.serving.prepare import prompt_settings
    from tokenskip.proxy.serving.prompt import compress_messages
    from tokenskip.tokens import TextTokenizer

    torch.set_num_threads(1)
    tokenizer = TextTokenizer(load_tokenizer("smollm2"), "smollm2")
    settings = prompt_settings(CompressionPolicy())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = compress_messages(
            request["messages"], settings, tokenizer=tokenizer, scorer=None, count=False
        )
        done.count(tokenizer)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def first_answer(port: int, body: bytes, key: str) -> dict[str, Any]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            loadgen.PATH,
            body=body,
            headers={"content-type": "application/json", "Authorization": f"Bearer {key}"},
        )
        response = conn.getresponse()
        data = json.loads(response.read())
    finally:
        conn.close()
    if response.status != 200 or data.get("object") != "chat.completion":
        raise SystemExit(f"port {port}: {response.status} {str(data)[:300]}")
    return data


def measure(port: int, pid: int, body: bytes, key: str, args: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    latency = loadgen.sequential_latency(
        port,
        body,
        headers,
        num_requests=args.requests,
        num_warmup=5,
        time_limit=args.duration,
    )
    before = cpu_seconds(pid)
    load = loadgen.throughput(
        port, body, headers, connections=args.connections, duration=args.duration
    )
    cpu = cpu_seconds(pid) - before
    return {
        "latency": asdict(latency),
        "throughput": asdict(load),
        "cpu_ms_per_request": cpu / max(1, load.num_requests) * 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=16, help="concurrent clients")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per target")
    p.add_argument("--requests", type=int, default=60, help="sequential requests per target")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "tool_output_load.json")
    args = p.parse_args()
    import os

    load_before = os.getloadavg()
    request = agent_chat()
    body = json.dumps(request).encode()
    tool_text = request["messages"][-1]["content"]
    results: dict[str, Any] = {"transform_ms": prompt_step_ms(request)}
    key = targets.new_master_key()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerPool(Path(tmp) / "logs", targets.base_env()) as pool,
    ):
        work = Path(tmp)
        up = targets.upstream(free_port())
        upstream = targets.start(pool, up)
        results["direct"] = measure(upstream.port, upstream.process.pid, body, key, args)
        for name, policy in (("compression-off", {"enabled": False}), ("default", {})):
            launch = targets.tokenskip_proxy(
                f"tokenskip-{name}",
                free_port(),
                work,
                key,
                upstream_port=upstream.port,
                policy={**policy, "tokenizer": "smollm2"},
            )
            server = targets.start(pool, launch)
            info = first_answer(server.port, body, key).get("tokenskip", {})
            saved = info.get("prompt_tokens_saved", 0)
            if (name == "default") != (saved > 0):
                raise SystemExit(f"{name}: prompt_tokens_saved {saved}: {info}")
            results[name] = {
                **measure(server.port, server.process.pid, body, key, args),
                "prompt_tokens_saved": saved,
                "compressed": info.get("compressed"),
            }
            pool.stop(server)
    on, off = (results[n]["throughput"]["requests_per_s"] for n in ("default", "compression-off"))
    extra_ms = (1 / on - 1 / off) * 1000 if on and off else float("inf")
    results["verdict"] = {
        "ms_per_request_over_compression_off": extra_ms,
        "transform_ms": results["transform_ms"],
        "pass": extra_ms <= results["transform_ms"],
    }
    report = {
        "body_bytes": len(body),
        "tool_output_chars": len(tool_text),
        "connections": args.connections,
        "duration_s": args.duration,
        "throughput_tool": "wrk -t1" if loadgen.has_wrk() else "aiohttp (separate process)",
        "results": results,
        **run_facts(load_before, 1),
    }
    print(write_report(args.out, report, render))


def render(report: dict[str, Any]) -> str:
    r = report["results"]
    base = r["direct"]["latency"]["p50_ms"]
    lines = [
        "# Tool outputs under load: the lossless transform in a gateway",
        "",
        f"An agent chat ending in a {report['tool_output_chars']:,}-character pretty-printed "
        f"JSON tool output (300 log records; body {report['body_bytes']:,} bytes), sent to "
        "each target one after another: the fast upstream directly, `tokenskip serve` with "
        "compression off, and with the default policy (one worker each). Latency: one "
        f"keep-alive connection, one request at a time; throughput: {report['connections']} "
        f"keep-alive connections for {report['duration_s']:g} s ({report['throughput_tool']}, "
        "on the same machine). Every request is the same chat, as an agent loop resends its "
        "tool output on each later turn: after the first, the gateway's compression memo "
        "(`CompressionMemo`) answers it, so the default's cost over compression off is the "
        "memo's lookup, the count and the larger re-serialized body; the prompt step as "
        "first seen is measured in-process below. "
        f"Machine: {report['machine']}; load average before "
        f"{report['load_average']['before'][0]:.2f}, after "
        f"{report['load_average']['after'][0]:.2f}. Commit "
        f"`{(report['commit'] or '')[:10]}`{' (dirty tree)' if report['dirty'] else ''}. "
        f"Command: `{report['command']}`.",
        "",
        "| target | p50 ms | added p50 ms | p99 ms | req/s at "
        f"{report['connections']} clients | gateway CPU ms / request | prompt tokens saved |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name in ("direct", "compression-off", "default"):
        m = r[name]
        added = "" if name == "direct" else f"{m['latency']['p50_ms'] - base:.1f}"
        cpu = "" if name == "direct" else f"{m['cpu_ms_per_request']:.1f}"
        lines.append(
            f"| {name} | {m['latency']['p50_ms']:.1f} | {added} | {m['latency']['p99_ms']:.1f} "
            f"| {m['throughput']['requests_per_s']:.1f} | {cpu} | "
            f"{m.get('prompt_tokens_saved', '')} |"
        )
    v = r["verdict"]
    lines += [
        "",
        f"Throughput target (compression costs no more per request than its prompt step as "
        f"first seen, {v['transform_ms']:.1f} ms in-process on one core: transforms and the "
        "count of the saving): "
        f"{v['ms_per_request_over_compression_off']:.1f} ms per request over compression off "
        f"at {report['connections']} clients: **{'met' if v['pass'] else 'missed'}**.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
