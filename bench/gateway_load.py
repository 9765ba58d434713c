"""Gateway reliability under load: no failed request, no lost ledger row.

Starts, as real processes on 127.0.0.1, the fake OpenAI upstream of the tests (which can
inject faults) and a gateway (``tokenskip serve``) in front of it, then drives it with:

- ``--requests`` chat completions at ``--concurrency`` over keep-alive connections, a mix of
  plain answers (``ok``), a model whose upstream fails and falls back (``bad``), a flaky one
  (``flaky``: HTTP 500 on its first call after a reset, retried), client mistakes that must
  get a 4xx (a tiny ratio, a lone surrogate, a message without content, an unknown model);
- ``--streams`` streamed completions, ``--aborts`` of them cut by the client after the
  first chunk;
- then it reads ``/v1/savings`` and ``/metrics``.

A request *fails* when its status is not the one its kind must get (200, or the 4xx of a
client mistake), when the connection errors, or when a stream that was read to its end has
no ``[DONE]``. *Lost* ledger rows = requests sent − rows the gateway's ledger holds (every
request, refused and aborted ones included, must leave one). Writes ``--out`` (JSON) and the
Markdown beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from provenance import REPO_ROOT, command_line, git, write_report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited while starting: {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} was not ready in {timeout} s")


KINDS = (
    # kind, share, expected status, body
    (
        "ok",
        0.80,
        200,
        lambda i: {"model": "ok", "messages": [{"role": "user", "content": f"q {i}"}]},
    ),
    (
        "fallback",
        0.05,
        200,
        lambda i: {"model": "bad", "messages": [{"role": "user", "content": "x"}]},
    ),
    (
        "flaky",
        0.03,
        200,
        lambda i: {"model": "flaky", "messages": [{"role": "user", "content": "x"}]},
    ),
    (
        "tiny-ratio",
        0.03,
        422,
        lambda i: {
            "model": "ok",
            "messages": [{"role": "user", "content": "x"}],
            "tokenskip": {"cot_ratio": 1e-300},
        },
    ),
    ("surrogate", 0.03, 400, None),  # raw body below
    ("no-content", 0.03, 400, lambda i: {"model": "ok", "messages": [{"role": "user"}]}),
    (
        "unknown-model",
        0.03,
        404,
        lambda i: {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
    ),
)
SURROGATE = b'{"model": "ok", "messages": [{"role": "user", "content": "a\\ud800"}]}'


async def one(
    session: aiohttp.ClientSession, url: str, kind: str, body: Any, expected: int
) -> dict:
    t0 = time.perf_counter()
    try:
        if kind == "surrogate":
            async with session.post(
                url, data=SURROGATE, headers={"content-type": "application/json"}
            ) as r:
                await r.read()
                status = r.status
        else:
            async with session.post(url, json=body) as r:
                await r.read()
                status = r.status
        return {
            "kind": kind,
            "status": status,
            "ok": status == expected,
            "ms": (time.perf_counter() - t0) * 1000,
        }
    except Exception as exc:  # noqa: BLE001 - every failure is counted
        return {
            "kind": kind,
            "status": 0,
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "ms": 0.0,
        }


async def one_stream(session: aiohttp.ClientSession, url: str, i: int, abort: bool) -> dict:
    body = {
        "model": "ok",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": f"stream {i} with several words to send"}],
    }
    try:
        async with session.post(url, json=body) as r:
            if r.status != 200:
                return {"kind": "stream", "status": r.status, "ok": False}
            seen_done = False
            async for line in r.content:
                if abort:
                    r.close()  # the client leaves after the first chunk
                    return {"kind": "stream-aborted", "status": 200, "ok": True}
                if line.strip() == b"data: [DONE]":
                    seen_done = True
            return {"kind": "stream", "status": 200, "ok": seen_done}
    except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the load
        return {"kind": "stream", "status": 0, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


async def drive(
    base: str, num_requests: int, concurrency: int, num_streams: int, num_aborts: int, seed: int
) -> list[dict]:
    rng = random.Random(seed)
    url = base + "/v1/chat/completions"
    weights = [k[1] for k in KINDS]
    plan = [rng.choices(KINDS, weights)[0] for _ in range(num_requests)]
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def run(i: int, item: tuple) -> dict:
            kind, _, expected, make = item
            async with limit:
                return await one(session, url, kind, make(i) if make else None, expected)

        async def run_stream(i: int) -> dict:
            async with limit:
                return await one_stream(session, url, i, i < num_aborts)

        tasks = [run(i, item) for i, item in enumerate(plan)]
        tasks += [run_stream(i) for i in range(num_streams)]
        rng.shuffle(tasks)
        return await asyncio.gather(*tasks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--streams", type=int, default=500)
    p.add_argument("--aborts", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "gateway_load.json")
    args = p.parse_args()

    venv_bin = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    up_port, gw_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.proxy.fake_upstream:make_upstream_app",
            "--factory",
            "--port",
            str(up_port),
            "--log-level",
            "warning",
        ],
        cwd=REPO_ROOT,
        env=env,
    )
    base = {"api_base": f"http://127.0.0.1:{up_port}/v1", "api_key": "k"}
    config = {
        "model_list": [
            {"model_name": "ok", "litellm_params": {"model": "openai/ok", **base}},
            {"model_name": "bad", "litellm_params": {"model": "openai/fail500", **base}},
            {"model_name": "flaky", "litellm_params": {"model": "openai/flaky", **base}},
        ],
        "router_settings": {
            "num_retries": 1,
            "timeout": 30,
            "retry_after": 0,
            "fallbacks": [{"bad": ["ok"]}],
        },
    }
    (work / "config.yaml").write_text(json.dumps(config))
    gateway = subprocess.Popen(
        [
            str(venv_bin / "tokenskip"),
            "serve",
            "--config",
            str(work / "config.yaml"),
            "--port",
            str(gw_port),
            "--ledger-url",
            f"sqlite:///{work / 'ledger.sqlite'}",
            "--log-level",
            "error",
        ],
        cwd=work,
        env=env,
    )
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        wait_ready(f"http://127.0.0.1:{gw_port}/healthz", gateway)
        gw = f"http://127.0.0.1:{gw_port}"
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        results = asyncio.run(
            drive(gw, args.requests, args.concurrency, args.streams, args.aborts, args.seed)
        )
        seconds = time.perf_counter() - t0
        time.sleep(3.0)  # aborted streams are accounted when the gateway sees the client gone
        import urllib.request

        with urllib.request.urlopen(gw + "/v1/savings", timeout=30) as r:
            savings = json.loads(r.read())
        with urllib.request.urlopen(gw + "/metrics", timeout=30) as r:
            metrics = r.read().decode()
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    sent = len(results)
    failed = [r for r in results if not r["ok"]]
    by_kind: dict[str, dict[str, int]] = {}
    for r in results:
        k = by_kind.setdefault(r["kind"], {"sent": 0, "failed": 0})
        k["sent"] += 1
        k["failed"] += not r["ok"]
    rows = savings["totals"]["requests"]
    latencies = sorted(r["ms"] for r in results if r.get("ms") and r["kind"] == "ok")
    report = {
        "requests_sent": sent,
        "failed": len(failed),
        "failures": failed[:20],
        "ledger_rows": rows,
        "lost_ledger_rows": sent - rows,
        "by_kind": by_kind,
        "seconds": seconds,
        "requests_per_s": sent / seconds,
        "ok_p50_ms": statistics.median(latencies) if latencies else None,
        "ok_p99_ms": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
        "fallbacks_metric": next(
            (
                line
                for line in metrics.splitlines()
                if line.startswith("tokenskip_fallbacks_total{")
            ),
            None,
        ),
        "settings": vars(args) | {"out": str(args.out.name)},
        "command": command_line(),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(write_report(args.out, report, render))


def render(r: dict[str, Any]) -> str:
    lines = [
        "# Gateway reliability under load",
        "",
        f"{r['requests_sent']:,} requests ({r['settings']['requests']:,} completions at "
        f"{r['settings']['concurrency']} concurrency, {r['settings']['streams']} streams of which "
        f"{r['settings']['aborts']} aborted by the client) against a gateway in front of the fake "
        f"upstream of the tests, one worker, {r['seconds']:.1f} s ({r['requests_per_s']:.0f} req/s, "
        f"load generator on the same machine). Machine: {r['machine']}; load average before "
        f"{r['load_average']['before'][0]:.2f}, after {r['load_average']['after'][0]:.2f}. Commit "
        f"`{(r['commit'] or '')[:10]}`{' (dirty tree)' if r['dirty'] else ''}. Command: `{r['command']}`.",
        "",
        f"- **failed requests: {r['failed']}**",
        f"- **lost ledger rows: {r['lost_ledger_rows']}** ({r['ledger_rows']:,} rows for "
        f"{r['requests_sent']:,} requests)",
        f"- plain answers: p50 {r['ok_p50_ms']:.1f} ms, p99 {r['ok_p99_ms']:.1f} ms (under the full mixed load)",
        f"- fallbacks counted: `{r['fallbacks_metric']}`",
        "",
        "| kind | sent | failed |",
        "|---|--:|--:|",
    ]
    lines += [f"| {k} | {v['sent']} | {v['failed']} |" for k, v in sorted(r["by_kind"].items())]
    if r["failures"]:
        lines += ["", "First failures:", ""] + [f"- `{json.dumps(f)}`" for f in r["failures"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
