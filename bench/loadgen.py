"""Load generators for the proxy benchmark: a sequential latency client and a throughput driver.

Latency: one keep-alive connection (``http.client``), one request at a time, so each sample is
the server's full turn-around with the least client work in the way.

Throughput: ``wrk`` (C, one thread) with a Lua script that POSTs a JSON body over N keep-alive
connections. Where ``wrk`` is missing, this module run as a script is the fallback: an
``aiohttp`` client with N concurrent keep-alive connections in its own process, printing one
JSON object (``python bench/loadgen.py --help``). Either way the generator shares the machine's
cores with the servers it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PATH = "/v1/chat/completions"


@dataclass
class LatencyResult:
    """Sequential client latencies (ms) over one keep-alive connection."""

    num_requests: int
    num_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    seconds: float
    first_error: str | None = None


@dataclass
class ThroughputResult:
    """Requests per second under ``connections`` concurrent keep-alive connections."""

    tool: str
    connections: int
    seconds: float
    num_requests: int
    num_errors: int
    requests_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty sequence, ``q`` in [0, 100]."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def sequential_latency(
    port: int,
    body: bytes,
    headers: dict[str, str],
    *,
    num_requests: int,
    num_warmup: int,
    time_limit: float,
    path: str = PATH,
) -> LatencyResult:
    """POST ``body`` one request at a time; stops early when ``time_limit`` seconds are spent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    all_headers = {"content-type": "application/json", **headers}
    samples: list[float] = []
    num_errors, first_error = 0, None
    started = time.perf_counter()
    deadline = started + time_limit
    try:
        for i in range(num_warmup + num_requests):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=all_headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status, data = 0, str(exc).encode()
            elapsed = (time.perf_counter() - t0) * 1000
            if i < num_warmup:
                continue
            if status == 200:
                samples.append(elapsed)
            else:
                num_errors += 1
                first_error = first_error or f"{status}: {data[:300].decode(errors='replace')}"
    finally:
        conn.close()
    if not samples:
        raise RuntimeError(f"no successful request on port {port}: {first_error}")
    return LatencyResult(
        num_requests=len(samples) + num_errors,
        num_errors=num_errors,
        p50_ms=percentile(samples, 50),
        p90_ms=percentile(samples, 90),
        p99_ms=percentile(samples, 99),
        mean_ms=sum(samples) / len(samples),
        seconds=time.perf_counter() - started,
        first_error=first_error,
    )


# --- wrk ----------------------------------------------------------------------------------------


def has_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_script(body: bytes, headers: dict[str, str]) -> str:
    """A wrk Lua script that POSTs ``body`` with ``headers`` on every request."""
    text = body.decode()
    level = "=" * 4
    while f"]{level}]" in text:
        level += "="
    lines = ['wrk.method = "POST"', f"wrk.body = [{level}[{text}]{level}]"]
    for name, value in {"Content-Type": "application/json", **headers}.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT_MS[unit]


def parse_wrk(output: str, connections: int) -> ThroughputResult:
    """The numbers of ``wrk --latency`` output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not done or not rps:
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    p50 = re.search(r"^\s+50%\s+([\d.]+\w+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+\w+)", output, re.MULTILINE)
    return ThroughputResult(
        tool="wrk",
        connections=connections,
        seconds=_ms(done.group(2) + done.group(3)) / 1000,
        num_requests=int(done.group(1)),
        num_errors=errors,
        requests_per_s=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)) if p50 else None,
        p99_ms=_ms(p99.group(1)) if p99 else None,
    )


def wrk_throughput(
    port: int,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    duration: float,
    path: str = PATH,
) -> ThroughputResult:
    """Run ``wrk -t1 -c N -d S --latency`` against the chat endpoint."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(body, headers))
        script = f.name
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "--latency",
        "-s", script, f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    finally:
        Path(script).unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse_wrk(out.stdout, connections)


# --- aiohttp fallback -----------------------------------------------------------------------------


def aiohttp_throughput(
    port: int,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    duration: float,
    path: str = PATH,
) -> ThroughputResult:
    """Run this module as a script (its own process) and read its JSON result."""
    command = [
        sys.executable, __file__, "--port", str(port), "--connections", str(connections),
        "--duration", str(duration), "--body", body.decode(), "--headers", json.dumps(headers),
        "--path", path,
    ]  # fmt: skip
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"aiohttp load generator failed: {out.stderr[-2000:]}")
    return ThroughputResult(**json.loads(out.stdout))


def throughput(
    port: int,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    duration: float,
    path: str = PATH,
) -> ThroughputResult:
    """wrk where installed, else the aiohttp fallback."""
    run = wrk_throughput if has_wrk() else aiohttp_throughput
    return run(port, body, headers, connections=connections, duration=duration, path=path)


async def _drive(
    port: int,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    duration: float,
    path: str = PATH,
) -> dict[str, Any]:
    import aiohttp

    url = f"http://127.0.0.1:{port}{path}"
    all_headers = {"content-type": "application/json", **headers}
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=all_headers) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=connections)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    seconds = time.perf_counter() - started
    return asdict(
        ThroughputResult(
            tool="aiohttp",
            connections=connections,
            seconds=seconds,
            num_requests=len(latencies) + errors,
            num_errors=errors,
            requests_per_s=len(latencies) / seconds,
            p50_ms=percentile(latencies, 50) if latencies else None,
            p99_ms=percentile(latencies, 99) if latencies else None,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fallback throughput driver: concurrent keep-alive POSTs to "
        f"127.0.0.1:PORT{PATH} for a fixed time; prints one JSON object."
    )
    parser.add_argument("--port", type=int, required=True, help="server port on 127.0.0.1")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    parser.add_argument("--body", required=True, help="JSON request body")
    parser.add_argument("--headers", default="{}", help="extra headers as a JSON object")
    parser.add_argument("--path", default=PATH, help=f"the path to POST to (default: {PATH})")
    args = parser.parse_args(argv)
    result = asyncio.run(
        _drive(
            args.port,
            args.body.encode(),
            json.loads(args.headers),
            args.connections,
            args.duration,
            args.path,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
