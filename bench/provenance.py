"""What every benchmark report records about how it was made: git state and command line."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def command_line() -> str:
    python = Path(sys.executable)
    if python.is_relative_to(Path.cwd()):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), *sys.argv])


def render_main(render: Callable[[dict], str], default: str) -> None:
    """A renderer's command line: JSON report (argv[1] or ``default``) → Markdown beside it."""
    src = Path(sys.argv[1] if len(sys.argv) > 1 else default)
    out = src.with_suffix(".md")
    out.write_text(render(json.loads(src.read_text())) + "\n")
    print(f"wrote {out}")


def notes_lines(report: dict) -> list[str]:
    """A report's hand-written notes (added after the run, labeled so) as Markdown lines."""
    if not report.get("notes"):
        return []
    return (
        ["## Notes (added by hand after the run)", ""] + [f"- {n}" for n in report["notes"]] + [""]
    )


def run_facts(load_before: tuple[float, ...], threads: int) -> dict:
    """How a run was made, as every report records it: command line, commit (and whether
    the tree was dirty), machine, threads, load average before and now, date."""
    import datetime
    import os
    import platform

    return {
        "command": command_line(),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "threads": threads,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_report(out: Path, report: dict, render: Callable[[dict], str]) -> str:
    """``report`` as JSON at ``out`` and rendered as Markdown beside it; the Markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    text = render(report)
    out.with_suffix(".md").write_text(text + "\n")
    return text
