"""Scale-out on one shared ledger: a real PostgreSQL server on loopback, two gateway
processes writing to it under load (2,000 requests at 64 concurrency), no row lost or
duplicated, and the same /v1/savings totals from either process.

The server comes from Debian's ``postgresql`` package, which ``make test`` installs where
apt-get is available; elsewhere this test is skipped and says why.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.proxy.fake_upstream import make_upstream_app
from tests.proxy.servers import serve

REQUESTS = 2000
CONCURRENCY = 64
REPO = Path(__file__).resolve().parents[2]


def pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (Debian keeps them off PATH)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A real PostgreSQL server on loopback that a test can stop and start again."""

    def __init__(self, ctl: list[str], options: str, log: Path, url: str):
        self.ctl, self.options, self.log, self.url = ctl, options, log, url

    def start(self) -> None:
        subprocess.run(
            [*self.ctl, "-o", self.options, "-w", "-l", str(self.log), "start"],
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run([*self.ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)

    def database(self, name: str) -> str:
        """A fresh database on this server; its URL."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return self.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="module")
def postgres(pg):
    return pg.url


@pytest.fixture(scope="module")
def pg():
    folder = pg_bin()
    if folder is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl): `make test` installs Debian's "
            "postgresql package where apt-get is available"
        )
    pytest.importorskip("psycopg", reason="the psycopg driver comes with the [dev] extra")
    data = Path(tempfile.mkdtemp(prefix="tokenskip-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as its own user
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    run(
        str(folder / "initdb"),
        "-D",
        str(data / "db"),
        "-A",
        "trust",
        "-U",
        "tokenskip",
        "--no-sync",
    )
    options = (
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    )
    run(
        str(folder / "pg_ctl"),
        "-D",
        str(data / "db"),
        "-o",
        options,
        "-w",
        "-l",
        str(data / "log"),
        "start",
    )
    try:
        yield Postgres(
            [*as_user, str(folder / "pg_ctl"), "-D", str(data / "db")],
            options,
            data / "log",
            f"postgresql+psycopg://tokenskip@127.0.0.1:{port}/postgres",
        )
    finally:
        subprocess.run(
            [*as_user, str(folder / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
            capture_output=True,
        )
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app()) as url:
        yield url


@pytest.fixture(scope="module")
def gateways(postgres, upstream, tmp_path_factory):
    work = tmp_path_factory.mktemp("gateways")
    write_config(work, upstream)
    ports = [free_port(), free_port()]
    procs = []
    try:
        for port in ports:
            procs.append(start_gateway(work, postgres, port))
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for proc in procs:
            stop_gateway(proc)


def write_config(folder: Path, upstream: str) -> None:
    config = {
        "model_list": [
            {
                "model_name": "ok",
                "litellm_params": {"model": "openai/ok", "api_base": upstream + "/v1"},
                "tokenskip": {"tokenizer": "smollm2"},
            }
        ]
    }
    (folder / "config.yaml").write_text(json.dumps(config))


async def drive(urls: list[str]) -> list[tuple[int, str]]:
    """REQUESTS chat completions, CONCURRENCY at a time, alternating between the gateways."""
    sem = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(i: int) -> tuple[int, str]:
            async with sem:
                r = await client.post(
                    urls[i % 2] + "/v1/chat/completions",
                    json={"model": "ok", "messages": [{"role": "user", "content": f"q {i}"}]},
                )
                return r.status_code, r.headers.get("x-request-id", "") or r.json().get("id", "")

        return await asyncio.gather(*(one(i) for i in range(REQUESTS)))


def test_two_gateways_share_one_postgres_ledger_under_load(gateways, postgres):
    import sqlalchemy as sa

    results = asyncio.run(drive(gateways))
    assert [s for s, _ in results].count(200) == REQUESTS
    totals = []
    deadline = time.monotonic() + 60
    while True:  # each gateway writes its rows in the background: wait until all are in
        totals = [httpx.get(u + "/v1/savings", timeout=30).json()["totals"] for u in gateways]
        if all(t["requests"] >= REQUESTS for t in totals) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert totals[0] == totals[1]  # either process reads the same shared ledger
    assert totals[0]["requests"] == REQUESTS and totals[0]["errors"] == 0
    engine = sa.create_engine(postgres)
    with engine.connect() as conn:
        count, distinct = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT request_id) FROM tokenskip_requests")
        ).one()
        words = conn.execute(
            sa.text("SELECT sum(completion_tokens) FROM tokenskip_requests")
        ).scalar()
    engine.dispose()
    assert count == distinct == REQUESTS  # no row lost, none written twice
    assert words == totals[0]["completion_tokens"] == 3 * REQUESTS  # "echo: q i": 3 words each


def start_gateway(config_dir: Path, ledger_url: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenskip.cli",
            "serve",
            "--config",
            str(config_dir / "config.yaml"),
            "--port",
            str(port),
            "--ledger-url",
            ledger_url,
            "--log-level",
            "error",
        ],
        cwd=config_dir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the gateway exited at start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the gateway did not start in 120 s"
        time.sleep(0.3)


def stop_gateway(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


async def burst(url: str, start: int, n: int, concurrency: int = 16) -> list[int]:
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> int:
            async with sem:
                r = await client.post(
                    url + "/v1/chat/completions",
                    json={"model": "ok", "messages": [{"role": "user", "content": f"q {i}"}]},
                )
                return r.status_code

        return await asyncio.gather(*(one(i) for i in range(start, start + n)))


def backlog(url: str) -> int:
    return httpx.get(url + "/healthz", timeout=10).json()["ledger"]["backlog_rows"]


def test_the_ledger_survives_its_database_going_away_under_load(pg, upstream, tmp_path):
    """100 requests before, during and after a database outage (the server stopped and
    started again on the same port), and a gateway stopped during a second outage: every
    request is answered, and every row is written once and only once."""
    import sqlalchemy as sa

    ledger_url = pg.database("outage")
    write_config(tmp_path, upstream)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_gateway(tmp_path, ledger_url, port)
    try:
        statuses = asyncio.run(burst(url, 0, 100))
        pg.stop()
        statuses += asyncio.run(burst(url, 100, 100))
        deadline = time.monotonic() + 30
        while backlog(url) < 100 and time.monotonic() < deadline:
            time.sleep(0.2)
        waiting = backlog(url)  # the outage's rows (and any still in flight) wait on disk
        assert 100 <= waiting <= 200
        health = httpx.get(url + "/healthz").json()
        assert health["status"] == "degraded" and health["ledger"]["dropped_rows"] == 0
        assert f"tokenskip_ledger_backlog_rows {waiting:.1f}" in httpx.get(url + "/metrics").text
        pg.start()
        statuses += asyncio.run(burst(url, 200, 100))
        deadline = time.monotonic() + 60
        while backlog(url) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert backlog(url) == 0
        # a second outage, and the gateway stopped in the middle of it
        pg.stop()
        statuses += asyncio.run(burst(url, 300, 50))
        deadline = time.monotonic() + 30
        while backlog(url) < 50 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop_gateway(proc)
        pg.start() if subprocess.run([*pg.ctl, "status"], capture_output=True).returncode else None
    assert statuses.count(200) == 350  # every request answered, outage or not
    proc = start_gateway(tmp_path, ledger_url, port)  # same address: finds its backlog
    try:
        deadline = time.monotonic() + 60
        while backlog(url) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert backlog(url) == 0
    finally:
        stop_gateway(proc)
    engine = sa.create_engine(ledger_url)
    with engine.connect() as conn:
        count, distinct = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT row_uid) FROM tokenskip_requests")
        ).one()
    engine.dispose()
    assert count == distinct == 350  # every row written, none twice
