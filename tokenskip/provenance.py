"""What every report records about how it was made, and how it names files.

``provenance()``: machine, versions and git commit. ``portable_path()``: a path as a report
may print it (never a machine's absolute path). Shared by evaluation, training and the
benchmarks; imports nothing of the project.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any


def provenance() -> dict[str, Any]:
    """Machine, versions and git commit: what a reader needs to reproduce a number."""
    import torch
    import transformers

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain")),
        "hardware": {
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def portable_path(path: str) -> str:
    """A path as a report may print it: relative to the repository's parent folder (e.g.
    ``shared/data/gsm8k/test.jsonl``) when it lies under it, else its file name; never a
    machine's absolute path. Hub names pass unchanged."""
    where = Path(path)
    if not where.is_absolute():
        return path
    base = Path(__file__).resolve().parents[2]
    try:
        return str(where.resolve().relative_to(base))
    except ValueError:
        return where.name


def portable_paths(value: Any) -> Any:
    """``value`` (a JSON-able tree) with every absolute path in it made portable
    (:func:`portable_path`), in strings of their own and inside command lines."""
    if isinstance(value, dict):
        return {k: portable_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_paths(v) for v in value]
    if isinstance(value, str) and "\n" not in value and (value.startswith("/") or " /" in value):
        # a path, or a command line holding paths: each absolute word made portable
        return " ".join(portable_path(w) if w.startswith("/") else w for w in value.split(" "))
    return value
