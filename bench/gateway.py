"""Benchmark of the tokenskip proxy (``tokenskip serve``): overhead, compression, concurrency.

Parts (``--part``, default all):

1. ``overhead``: latency added and throughput of the proxy in pass-through mode in front of a
   very fast OpenAI-compatible upstream (``bench/fast_upstream.py``), beside the upstream
   itself, tokenskip's litellm Router path and LiteLLM's own proxy (from ``.bench-venv``).
   Targets: added p50 ≤ 1 ms, and throughput at least LiteLLM's proxy's.
2. ``compression``: a ~4,000-token prompt through the proxy at prompt_ratio 0.5 with each
   served scorer, against tokenskip disabled: tokens original/sent/saved and added latency.
3. ``concurrency``: concurrent clients against the embedded local model vs the same
   requests one at a time.
4. ``apis``: the pass-through cost of each API the gateway speaks (Chat Completions,
   Responses, Messages) in front of one fast upstream that answers all three, beside LiteLLM's
   proxy on the same deployments (``api_overhead.py``). Targets (issue #31): on each API,
   added p50 ≤ 1.5× the direct hop's own p50 in the same run, throughput ≥ 20× LiteLLM's
   proxy's.

Every server is a subprocess on 127.0.0.1, started and stopped by this script (see
``servers.py``; ``targets.py`` says how each is launched). Parts run one after another and
each is bounded in requests and in time. Results go to ``proxy_bench.json`` under
``--out-dir``; a part run alone replaces only its own section. ``proxy_bench.md`` is rendered
from the JSON.

The servers under test run as subprocesses: nothing here imports the ``proxy`` package.
(This file was ``bench/proxy.py``; it was renamed so that it no longer shadows that
package for the other benchmarks, whose folder comes first on ``sys.path``.)

LiteLLM's proxy is installed for the benchmark only, in its own venv::

    python3 -m venv .bench-venv && .bench-venv/bin/pip install 'litellm[proxy]==1.106.2'
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import api_overhead
import proxy_compression
import proxy_concurrency
import proxy_overhead
import proxy_report
from provenance import command_line, git
from targets import BENCH_VENV, REPO_ROOT

from tokenskip.cli.args import positive

PARTS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "overhead": proxy_overhead.run,
    "apis": api_overhead.run,
    "compression": proxy_compression.run,
    "concurrency": proxy_concurrency.run,
}
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
DISTRIBUTIONS = (
    "tokenskip", "fastapi", "uvicorn", "uvloop", "httptools", "httpx", "openai", "litellm",
    "torch", "transformers",
)  # fmt: skip


# --- metadata -----------------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    bench = sorted(BENCH_VENV.glob("lib/python*/site-packages/litellm-*.dist-info"))
    if bench:
        name = bench[-1].name.removesuffix(".dist-info")
        found["litellm (.bench-venv, LiteLLM proxy)"] = name.split("-", 1)[1]
    found["wrk"] = wrk_version() or "not installed"
    return found


def wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0].split()[1] if first and len(first[0].split()) > 1 else None


def metadata() -> dict[str, Any]:
    status = git("status", "--porcelain")
    return {
        "date": now(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
    }


# --- running ------------------------------------------------------------------------------------


def run_part(name: str, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """One part with its own timing and load averages; an exception becomes ``error``."""
    status = git("status", "--porcelain")
    meta = {
        "command": command_line(),
        "date": now(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "load_average_start": list(os.getloadavg()),
    }
    started = time.monotonic()
    part_dir = work_dir / name
    part_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = PARTS[name](args, part_dir)
    except Exception as exc:  # a failed part is reported, and the other parts still run
        result = {"error": f"{type(exc).__name__}: {exc}"}
    meta.update(runtime_s=time.monotonic() - started, load_average_end=list(os.getloadavg()))
    return {"meta": meta, **result}


def load_report(path: Path) -> dict[str, Any]:
    """The existing report (its other parts are kept), or an empty one."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"parts": {}}
    return report if isinstance(report.get("parts"), dict) else {"parts": {}}


def write_report(report: dict[str, Any], out_dir: Path, work_root: Path) -> None:
    """The JSON and Markdown reports; the run's scratch folder is named ``<tmp>`` in them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = {name: report["parts"][name] for name in PARTS if name in report["parts"]}
    parts = json.loads(json.dumps(ordered).replace(str(work_root), "<tmp>"))
    report = {"meta": metadata(), "parts": parts}
    (out_dir / "proxy_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "proxy_bench.md").write_text(proxy_report.render(report))


def print_summary(name: str, part: dict[str, Any]) -> None:
    print(f"[{name}] {part['meta']['runtime_s']:.0f} s", file=sys.stderr)
    if part.get("error"):
        print(f"  error: {part['error']}", file=sys.stderr)
    for verdict in part.get("verdicts", []):
        mark = "PASS" if verdict["pass"] else "MISS"
        print(f"  {mark} {verdict['target']}: {verdict['value']}", file=sys.stderr)
    for failed, failure in part.get("failures", {}).items():
        last = (failure["error"].strip().splitlines() or ["?"])[-1]
        print(f"  {failed} failed: {last}", file=sys.stderr)


# --- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark tokenskip serve: proxy overhead vs LiteLLM's proxy, prompt "
        "compression, and concurrent local generation. Writes proxy_bench.json/.md.",
    )
    p.add_argument(
        "--part", choices=[*PARTS, "all"], default="all", help="which part to run (default: all)"
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT / "reports",
        help="where the reports go (default: reports/)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"GSM8K train JSONL (default: {DEFAULT_DATA})",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="keep configs, ledgers and server logs here (default: a temporary directory, removed)",
    )
    p.add_argument(
        "--startup-timeout",
        type=positive(float),
        default=180.0,
        help="seconds a server may take to become ready (default: 180)",
    )
    p.add_argument(
        "--time-budget",
        type=positive(float),
        default=900.0,
        help="seconds of measuring per part before it stops early (default: 900)",
    )
    p.add_argument(
        "--server-threads",
        type=positive(int),
        default=None,
        help="OMP_NUM_THREADS for the tokenskip servers that run SmolLM2 (compression, "
        "concurrency); default: torch's own choice (one per core)",
    )
    g = p.add_argument_group("overhead")
    g.add_argument(
        "--rounds",
        type=positive(int),
        default=3,
        help="measurement rounds over all targets (default: 3)",
    )
    g.add_argument(
        "--requests",
        type=positive(int),
        default=2000,
        help="sequential requests per target and round (default: 2000)",
    )
    g.add_argument(
        "--warmup",
        type=positive(int),
        default=200,
        help="sequential warmup requests, not timed (default: 200)",
    )
    g.add_argument(
        "--latency-time-limit",
        type=positive(float),
        default=60.0,
        help="max seconds of one sequential run (default: 60)",
    )
    g.add_argument(
        "--connections",
        type=positive(int),
        default=32,
        help="concurrent keep-alive connections for throughput (default: 32)",
    )
    g.add_argument(
        "--duration",
        type=positive(float),
        default=10.0,
        help="seconds of one throughput run (default: 10)",
    )
    g = p.add_argument_group("compression")
    g.add_argument(
        "--compression-requests",
        type=positive(int),
        default=10,
        help="timed requests per variant (default: 10)",
    )
    g.add_argument(
        "--prompt-tokens",
        type=positive(int),
        default=4000,
        help="prompt size in SmolLM2 tokens (default: 4000)",
    )
    g = p.add_argument_group("concurrency")
    g.add_argument(
        "--clients",
        type=positive(int),
        default=32,
        help="concurrent clients = requests per mode (default: 32)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. from timeout) unwinds like Ctrl-C, so every started server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = list(PARTS) if args.part == "all" else [args.part]
    report = load_report(args.out_dir / "proxy_bench.json")
    work_root = args.work_dir or Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    failed = False
    try:
        for name in names:
            part = run_part(name, args, work_root)
            report["parts"][name] = part
            # after every part: a later crash loses nothing
            write_report(report, args.out_dir, work_root)
            print_summary(name, part)
            failed = failed or bool(part.get("error"))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_root, ignore_errors=True)
    print(f"wrote {args.out_dir / 'proxy_bench.json'} and proxy_bench.md", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
