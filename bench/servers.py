"""Benchmark servers as subprocesses on 127.0.0.1: start, wait until ready, measure CPU, stop.

Each server runs in its own session (process group), so stopping it ends the server and every
worker it forked, and nothing else. :class:`ServerPool` stops everything it started when its
``with`` block exits, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

POLL_SECONDS = 0.2
STOP_SECONDS = 10.0
LOG_TAIL_CHARS = 2000


class ServerError(RuntimeError):
    """A server exited or did not become ready; the message carries its log tail."""


@dataclass
class Server:
    """One started server process."""

    name: str
    command: list[str]
    port: int
    log_path: Path
    process: subprocess.Popen
    startup_seconds: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    """Status of ``GET path``, or None if the server does not answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_ready(server: Server, path: str, timeout: float) -> None:
    """Poll ``GET path`` until it answers 200; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ServerError(
                f"{server.name} exited with code {code} before it was ready:\n{server.log_tail()}"
            )
        if http_status(server.port, path) == 200:
            return
        time.sleep(POLL_SECONDS)
    raise ServerError(f"{server.name} was not ready after {timeout:.0f} s:\n{server.log_tail()}")


def stop(server: Server) -> None:
    """SIGTERM the server's process group; SIGKILL whatever is left after a grace period."""
    pgid = server.process.pid  # start_new_session: the group id is the leader's pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while _group_alive(pgid) and time.monotonic() < deadline:
        server.process.poll()  # reap the leader so the group can empty
        time.sleep(POLL_SECONDS)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=STOP_SECONDS)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children(pid: int) -> list[int]:
    """Direct children of a process, from ``/proc`` (empty where there is no /proc)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        stack.extend(_children(current))
    return total


@dataclass
class ServerPool:
    """Starts servers and guarantees they are stopped when the ``with`` block ends."""

    log_dir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    servers: list[Server] = field(default_factory=list)

    def start(
        self,
        name: str,
        command: list[str],
        port: int,
        *,
        ready_path: str = "/healthz",
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Server:
        """Start ``command`` (which must listen on ``port``) and wait until it is ready."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        started = time.monotonic()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.env, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        server = Server(name, command, port, log_path, process)
        self.servers.append(server)
        wait_ready(server, ready_path, timeout)
        server.startup_seconds = time.monotonic() - started
        return server

    def stop(self, server: Server) -> None:
        stop(server)
        if server in self.servers:
            self.servers.remove(server)

    def stop_all(self) -> None:
        for server in reversed(list(self.servers)):
            self.stop(server)

    def __enter__(self) -> ServerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
