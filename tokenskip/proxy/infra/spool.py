"""The ledger's backlog: rows its database could not take, kept on local disk until it can.

A ledger row is the product's proof of what it saved, so a database outage must not lose
one. Rows the database refuses for being unreachable are appended here (JSON lines, one row
a line, flushed and fsynced) and written to the database once it answers again, oldest
first; the file survives a restart, so a gateway stopped during an outage writes its backlog
at its next start. Every row carries a unique ``row_uid``, and the ledger skips the ones the
database already holds, so a row is written once and only once even when the gateway dies
between the database's commit and the backlog's trim.

The backlog is bounded (``max_rows``). When it is full the *oldest* rows go, and never
silently: each drop is logged as an error and counted (``dropped``, exported as
``tokenskip_ledger_rows_dropped``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_ROWS = 100_000
"""About 60 MB of rows: hours of a busy gateway's traffic."""


class Spool:
    """A bounded, durable FIFO of ledger rows (column dicts) in one JSON-lines file."""

    def __init__(self, path: str | Path, max_rows: int = DEFAULT_MAX_ROWS):
        if max_rows < 1:
            raise ValueError(f"the ledger backlog must hold at least 1 row, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self.dropped = 0
        """Rows dropped because the backlog was full (oldest first)."""
        self._rows: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        bad = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a crash mid-write
                bad += 1
                continue
            if isinstance(row, dict):
                self._rows.append(row)
        if bad:
            log.error("ledger backlog %s: %d unreadable line(s) skipped", self.path, bad)
        if self._rows:
            log.warning(
                "ledger backlog %s holds %d row(s) from an earlier run: they are written "
                "when the database answers",
                self.path,
                len(self._rows),
            )
        self._trim()
        self._rewrite()

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Keep ``rows`` (after the ones already kept), durably; drop the oldest past the
        bound, saying so."""
        if not rows:
            return
        with self._lock:
            self._rows.extend(rows)
            if self._trim():
                self._rewrite()
                return
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())

    def peek(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` oldest rows, left in place."""
        with self._lock:
            return [self._rows[i] for i in range(min(n, len(self._rows)))]

    def pop(self, n: int) -> None:
        """Forget the ``n`` oldest rows (once the database holds them)."""
        with self._lock:
            for _ in range(min(n, len(self._rows))):
                self._rows.popleft()
            self._rewrite()

    def _trim(self) -> bool:
        over = len(self._rows) - self.max_rows
        if over <= 0:
            return False
        for _ in range(over):
            self._rows.popleft()
        self.dropped += over
        log.error(
            "ledger backlog full (%d rows): the %d oldest row(s) were dropped; bring the "
            "database back, or raise TOKENSKIP_LEDGER_BACKLOG_ROWS",
            self.max_rows,
            over,
        )
        return True

    def _rewrite(self) -> None:
        """The file made to hold exactly the rows kept (a new file, renamed over the old)."""
        if not self._rows:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in self._rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
