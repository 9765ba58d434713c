"""The ledger's backlog: rows kept on disk while the database is away, written once and
only once when it answers, bounded without silent loss."""

import logging
import os
import time

import sqlalchemy as sa

from tests.proxy.test_ledger import row
from tokenskip.proxy.infra.ledger import Ledger, requests_table
from tokenskip.proxy.infra.spool import Spool


def test_the_backlog_survives_a_restart_oldest_first(tmp_path):
    path = tmp_path / "backlog.jsonl"
    spool = Spool(path, max_rows=10)
    spool.append([{"row_uid": str(i)} for i in range(4)])
    spool.pop(1)
    again = Spool(path, max_rows=10)
    assert [r["row_uid"] for r in again.peek(10)] == ["1", "2", "3"]
    again.pop(3)
    assert len(again) == 0 and not path.exists()


def test_a_full_backlog_drops_the_oldest_and_says_so(tmp_path, caplog):
    spool = Spool(tmp_path / "b.jsonl", max_rows=3)
    with caplog.at_level(logging.ERROR):
        spool.append([{"row_uid": str(i)} for i in range(5)])
    assert [r["row_uid"] for r in spool.peek(5)] == ["2", "3", "4"]
    assert spool.dropped == 2
    assert "2 oldest row(s) were dropped" in caplog.text
    assert len(Spool(tmp_path / "b.jsonl", max_rows=3)) == 3  # and the file says the same


def test_a_line_cut_by_a_crash_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"row_uid": "a"}\n{"row_uid": "b"}\n{"row_u')
    assert [r["row_uid"] for r in Spool(path).peek(5)] == ["a", "b"]


def count(url):
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        uids = conn.execute(sa.select(requests_table.c.row_uid)).scalars().all()
    engine.dispose()
    return uids


def wait_empty(ledger, seconds=20.0):
    deadline = time.monotonic() + seconds
    while len(ledger.backlog) and time.monotonic() < deadline:
        time.sleep(0.05)
    ledger.flush()


def test_rows_wait_out_an_outage_and_land_once(tmp_path):
    """The SQLite file's folder goes away (the database cannot be opened) and comes back."""
    folder = tmp_path / "db"
    folder.mkdir()
    url = f"sqlite:///{folder / 'ledger.db'}"
    ledger = Ledger(url, backlog_path=tmp_path / "backlog.jsonl", retry_s=0.05)
    for _ in range(3):
        ledger.record(row("a", 10, 5))
    ledger.flush()
    ledger.engine.dispose()
    os.rename(folder, tmp_path / "away")
    for _ in range(5):
        ledger.record(row("a", 10, 5))
    ledger.flush()
    assert len(ledger.backlog) == 5  # kept on disk, not lost
    assert (tmp_path / "backlog.jsonl").exists()
    os.rename(tmp_path / "away", folder)
    wait_empty(ledger)
    ledger.record(row("a", 10, 5))
    ledger.flush()
    uids = count(url)
    assert len(uids) == 9 and len(set(uids)) == 9
    assert len(ledger.backlog) == 0 and not (tmp_path / "backlog.jsonl").exists()
    ledger.close()


def test_a_backlog_left_by_a_stopped_gateway_is_written_at_the_next_start_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = Ledger(url, backlog_path=tmp_path / "backlog.jsonl")
    done = row("a", 10, 5)
    first.record(done)
    first.close()
    # a crash after the database committed a row but before the backlog was trimmed:
    # the row is in both places, and must still be written once
    spool = Spool(tmp_path / "backlog.jsonl")
    from dataclasses import asdict

    waiting = row("a", 20, 5)
    spool.append([asdict(done), asdict(waiting)])
    second = Ledger(url, backlog_path=tmp_path / "backlog.jsonl", retry_s=0.05)
    wait_empty(second)
    uids = count(url)
    assert sorted(uids) == sorted([done.row_uid, waiting.row_uid])
    second.close()


def test_a_backlog_row_kept_by_an_older_version_lands_with_its_new_columns_null(tmp_path):
    from dataclasses import asdict

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    old = asdict(row("a", 10, 5))
    del old["document_ratio"]  # a column newer than the version that kept the row
    new = row("a", 20, 5)
    new.document_ratio = 0.3
    Spool(tmp_path / "backlog.jsonl").append([old, asdict(new)])
    ledger = Ledger(url, backlog_path=tmp_path / "backlog.jsonl", retry_s=0.05)
    wait_empty(ledger)
    with sa.create_engine(url).connect() as conn:
        got = dict(
            conn.execute(sa.select(requests_table.c.row_uid, requests_table.c.document_ratio)).all()
        )
    assert got == {old["row_uid"]: None, new.row_uid: 0.3}
    ledger.close()
