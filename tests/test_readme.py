"""The README's quick tour runs as written, from a fresh folder, against a real server.

Every fenced ``bash`` and ``python`` block between ``<!-- quick-tour -->`` and
``<!-- /quick-tour -->`` runs in a temporary folder that holds only links to ``.venv`` and
``examples/`` (as a user's clone would, minus everything else), so an example that writes
files writes them there, and one that relies on the repository's layout fails. The server
the tour assumes (``make serve``) is started with the same CLI on a free port; the only
change made to a block is that port.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SOLUTIONS
from tokenskip.tasks.gsm8k import DIR_ENV, default_dir

ROOT = Path(__file__).resolve().parents[1]
TOUR = re.compile(r"<!-- quick-tour -->(.*?)<!-- /quick-tour -->", re.S)
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)


def tour_blocks() -> list[tuple[str, str]]:
    match = TOUR.search((ROOT / "README.md").read_text())
    assert match, "README.md has no quick-tour section"
    return BLOCK.findall(match.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    where = tmp_path_factory.mktemp("fresh")
    venv = Path(sys.prefix)
    (where / ".venv").symlink_to(venv if (venv / "bin").is_dir() else ROOT / ".venv")
    (where / "examples").symlink_to(ROOT / "examples")
    return where


@pytest.fixture(scope="module")
def gsm8k_env(tmp_path_factory) -> dict[str, str]:
    """The GSM8K data the eval example reads: the shared data set where this clone has it,
    else five inline problems in a folder named by ``$TOKENSKIP_GSM8K_DIR`` (how a user
    points the CLI at their own copy)."""
    if (default_dir() / "test.jsonl").is_file():
        return {}
    where = tmp_path_factory.mktemp("gsm8k")
    rows = [
        json.dumps({"question": f"Question {i}: what is the answer?", "answer": a})
        for i, a in enumerate(SOLUTIONS)
    ]
    for split in ("train", "test"):
        (where / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return {DIR_ENV: str(where)}


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    port = free_port()
    env = {
        **os.environ,
        "TOKENSKIP_LEDGER_URL": f"sqlite:///{tmp_path_factory.mktemp('l') / 'l.db'}",
    }
    proc = subprocess.Popen(
        [str(folder / ".venv" / "bin" / "tokenskip"), "serve", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
        if proc.poll() is not None:
            pytest.fail(f"tokenskip serve exited: {proc.stderr.read().decode()[-2000:]}")
    else:
        proc.kill()
        pytest.fail("tokenskip serve did not start within 120 s")
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def test_the_tour_has_shell_and_python_examples():
    kinds = [kind for kind, _ in tour_blocks()]
    assert kinds.count("bash") >= 2 and kinds.count("python") >= 2


@pytest.mark.parametrize("index", range(len(tour_blocks())))
def test_each_quick_tour_example_runs_as_written(index, folder, server, gsm8k_env):
    kind, code = tour_blocks()[index]
    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{server}")
    command = (
        ["bash", "-euo", "pipefail", "-c", code]
        if kind == "bash"
        else [
            str(folder / ".venv" / "bin" / "python"),
            "-c",
            code,
        ]
    )
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **gsm8k_env}
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"block {index} ({kind}) failed:\n{code}\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"block {index} printed nothing"
    assert "Traceback" not in done.stderr


def test_the_package_imports_from_a_folder_holding_a_clone_named_tokenskip(folder, tmp_path):
    """Run from a clone's parent folder, ``tokenskip/`` (the clone, no ``__init__.py``) must
    not shadow the installed package."""
    (tmp_path / "tokenskip" / "tokenskip").mkdir(parents=True)
    (tmp_path / "tokenskip" / "README.md").write_text("a clone\n")
    done = subprocess.run(
        [
            str(folder / ".venv" / "bin" / "python"),
            "-c",
            "from tokenskip import compress; print(compress.__module__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "tokenskip.compress"
