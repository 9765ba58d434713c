"""The savings ledger: one row per request, in SQLite by default or any SQLAlchemy URL.

Rows are written by a background thread in small batches, so accounting never sits on a
request's latency path; :meth:`Ledger.flush` waits for everything queued so far. Totals are
grouped by model and by kind of saving, each labeled measured or estimated.

Rows the database cannot take because it is unreachable go to a bounded backlog on local
disk (:class:`tokenskip.proxy.infra.spool.Spool`) and are written when it answers again, once
and only once (every row has a unique ``row_uid``); the backlog survives a restart.
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tokenskip.proxy.infra.spool import DEFAULT_MAX_ROWS, Spool

log = logging.getLogger(__name__)

metadata = sa.MetaData()
requests_table = sa.Table(
    "tokenskip_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("prompt_tokens_original", sa.Integer, nullable=False),
    sa.Column("prompt_tokens_sent", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("prompt_ratio", sa.Float),
    sa.Column("cot_ratio", sa.Float),
    sa.Column("cot_method", sa.String(16), nullable=False),
    sa.Column("cot_tokens_saved_estimated", sa.Integer, nullable=False),
    sa.Column("batch_tokens_saved", sa.Integer, nullable=False),
    sa.Column("tokens_estimated", sa.Boolean, nullable=False),
    sa.Column("cost_original", sa.Float),
    sa.Column("cost_actual", sa.Float),
    sa.Column("reasoning_tokens", sa.Integer),
    sa.Column("reasoning_tokens_saved_estimated", sa.Integer),
    sa.Column("cot_budget", sa.Integer),
    sa.Column("prefix_bytes_identical", sa.Integer),
    sa.Column("prefix_bytes_total", sa.Integer),
    sa.Column("row_uid", sa.String(32)),
    sa.Column("document_ratio", sa.Float),
    sa.Index("ix_tokenskip_requests_row_uid", "row_uid", unique=True),
)
UID_INDEX = "ix_tokenskip_requests_row_uid"
ADDED_COLUMNS = (
    "reasoning_tokens",
    "reasoning_tokens_saved_estimated",
    "cot_budget",
    "prefix_bytes_identical",
    "prefix_bytes_total",
    "row_uid",
    "document_ratio",
)
"""Columns newer than the first ledger schema: added to an existing table when it opens."""


@dataclass
class LedgerRow:
    """One request's accounting; token counts are in the target tokenizer where known."""

    request_id: str
    model: str
    backend: str
    status: int
    stream: bool
    latency_ms: float
    prompt_tokens_original: int
    prompt_tokens_sent: int
    completion_tokens: int
    cot_method: str = "none"
    prompt_ratio: float | None = None
    document_ratio: float | None = None
    """The budget of ranked document selection (see ``CompressionPolicy.document_ratio``)."""
    cot_ratio: float | None = None
    cot_tokens_saved_estimated: int = 0
    batch_tokens_saved: int = 0
    tokens_estimated: bool = False
    cost_original: float | None = None
    cost_actual: float | None = None
    error: str | None = None
    reasoning_tokens: int | None = None
    """Reasoning tokens the upstream reported (measured); None when it reported none."""
    reasoning_tokens_saved_estimated: int = 0
    cot_budget: int | None = None
    """The reasoning budget applied (native field or budget forcing), in tokens."""
    prefix_bytes_identical: int | None = None
    """A compressed request: bytes of its messages' prefix identical to an earlier request's
    (what a provider prompt cache can hit); None when compression changed nothing."""
    prefix_bytes_total: int | None = None
    ts: float = field(default_factory=time.time)
    row_uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Unique per row: what makes a row written from the backlog land once and only once."""


INT32 = 2**31 - 1
"""The newer columns are SQL INTEGER, 32 bits on PostgreSQL: clamped to it."""
MAX_INT = 2**62
"""Token counts above this are not counts (SQL integers are 64-bit): clamped."""


def _int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return max(-MAX_INT, min(MAX_INT, number))


def _float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def valid_row(row: LedgerRow) -> dict[str, Any]:
    """The row as column values the database accepts: integers clamped to 64 bits,
    non-finite numbers as NULL, strings cut to their column's length."""
    d = asdict(row)
    for name in (
        "status",
        "prompt_tokens_original",
        "prompt_tokens_sent",
        "completion_tokens",
        "cot_tokens_saved_estimated",
        "batch_tokens_saved",
        "reasoning_tokens_saved_estimated",
    ):
        d[name] = _int(d[name])
    for name in ("reasoning_tokens", "cot_budget", "prefix_bytes_identical", "prefix_bytes_total"):
        d[name] = None if d[name] is None else max(-INT32, min(INT32, _int(d[name])))
    d["reasoning_tokens_saved_estimated"] = max(
        -INT32, min(INT32, d["reasoning_tokens_saved_estimated"])
    )
    for name in ("prompt_ratio", "document_ratio", "cot_ratio", "cost_original", "cost_actual"):
        d[name] = _float(d[name])
    d["latency_ms"] = _float(d["latency_ms"]) or 0.0
    d["ts"] = _float(d["ts"]) or time.time()
    for name, size in (("request_id", 64), ("model", 200), ("backend", 32), ("cot_method", 16)):
        d[name] = str(d[name])[:size]
    if d["error"] is not None:
        d["error"] = str(d["error"])[:2000]
    d["row_uid"] = str(d["row_uid"])[:32]
    d["stream"], d["tokens_estimated"] = bool(d["stream"]), bool(d["tokens_estimated"])
    return d


def _create_tables(engine: Any) -> None:
    """Create the ledger's tables; two replicas starting at once on PostgreSQL can race on
    CREATE TABLE (a unique violation in pg_type), so a losing replica checks again."""
    for attempt in range(5):
        try:
            metadata.create_all(engine)
            return
        except sa.exc.IntegrityError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def default_backlog_path(url: str, host: str | None = None, port: int | None = None) -> Path:
    """Where a ledger keeps its backlog: one file per database URL, and per gateway address
    when given (two gateways sharing one database keep two backlogs), found again by the
    next start."""
    from tokenskip.models import cache_dir

    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    where = "" if host is None else "-" + re.sub(r"[^\w.-]", "_", f"{host}-{port}")
    return cache_dir() / f"ledger-backlog-{digest}{where}.jsonl"


def _unreachable(exc: BaseException) -> bool:
    """The database could not be reached (rather than refusing the row itself)."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)) and not isinstance(
        exc, sa.exc.IntegrityError
    )


def default_url(host: str = "127.0.0.1", port: int = 8000) -> str:
    """One SQLite file per gateway address, so two gateways never share a ledger unless
    they are told to (a shared ``--ledger-url``)."""
    from tokenskip.models import cache_dir

    safe = re.sub(r"[^\w.-]", "_", f"{host}-{port}")
    path = cache_dir() / f"ledger-{safe}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class Ledger:
    """Append-only request log with aggregate queries."""

    def __init__(
        self,
        url: str | None = None,
        flush_interval_s: float = 0.05,
        *,
        backlog_path: str | Path | None = None,
        backlog_rows: int = DEFAULT_MAX_ROWS,
        retry_s: float = 1.0,
    ):
        self.url = url or default_url()
        self.backlog = Spool(backlog_path or default_backlog_path(self.url), backlog_rows)
        """Rows kept on disk while the database is unreachable."""
        self._retry_s = retry_s
        try:
            # Several workers may share one SQLite file: wait for its lock instead of failing.
            connect_args = {"timeout": 30} if self.url.startswith("sqlite") else {}
            self.engine = sa.create_engine(self.url, connect_args=connect_args)
            _create_tables(self.engine)
            _add_columns(self.engine)
        except Exception as exc:  # any driver / path problem
            raise ValueError(f"cannot open the ledger at {self.url}: {exc}") from None
        self._queue: queue.Queue[LedgerRow | threading.Event | None] = queue.Queue()
        self._interval = flush_interval_s
        self._thread = threading.Thread(target=self._writer, name="tokenskip-ledger", daemon=True)
        self._thread.start()

    def record(self, row: LedgerRow) -> None:
        """Queue a row; returns at once."""
        self._queue.put(row)

    def flush(self, timeout: float = 10.0) -> None:
        """Block until every row queued before this call is committed."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.engine.dispose()

    def _writer(self) -> None:
        while True:
            if len(self.backlog):
                self._drain()
            try:
                item = self._queue.get(timeout=self._retry_s if len(self.backlog) else None)
            except queue.Empty:
                continue
            batch: list[LedgerRow] = []
            events: list[threading.Event] = []
            stop = False
            if isinstance(item, LedgerRow):
                # let the batch gather for one interval, asleep: a waiting get() would wake
                # (and take the interpreter from the event loop) for every row queued
                time.sleep(self._interval)
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    events.append(item)
                else:
                    batch.append(item)
                if stop or len(batch) >= 1024:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(batch)
            for event in events:
                event.set()
            if stop:
                return

    def _write(self, batch: list[LedgerRow]) -> None:
        """Insert a batch; if the database is unreachable, keep it in the backlog; if it
        refuses the batch, each row alone, so one bad row loses no other."""
        values = [valid_row(r) for r in batch]
        if len(self.backlog):  # keep the order: older rows are still waiting
            self.backlog.append(values)
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(requests_table.insert(), values)
            return
        except Exception as exc:  # never take the server down over accounting
            if _unreachable(exc):
                self._keep(values, exc)
                return
            log.warning("ledger batch of %d rows failed; writing them one by one", len(values))
        for row, value in zip(batch, values):
            try:
                with self.engine.begin() as conn:
                    conn.execute(requests_table.insert(), [value])
            except Exception as exc:
                if _unreachable(exc):
                    self._keep([value], exc)
                    continue
                log.error("ledger row of request %s rejected: %s", row.request_id, exc)
                self._write_failed(row, exc)

    def _keep(self, values: list[dict[str, Any]], exc: BaseException) -> None:
        if not len(self.backlog):
            log.error(
                "ledger database unreachable (%s): keeping rows in %s until it answers",
                type(exc).__name__,
                self.backlog.path,
            )
        self.backlog.append(values)

    def _drain(self) -> None:
        """Write the backlog, oldest first, skipping rows the database already holds (a
        commit whose trim a crash cut short); stop at the first failure, to retry later."""
        uid = requests_table.c.row_uid
        while len(self.backlog):
            rows = self.backlog.peek(256)
            try:
                with self.engine.begin() as conn:
                    have = set(
                        conn.execute(
                            sa.select(uid).where(uid.in_([r["row_uid"] for r in rows]))
                        ).scalars()
                    )
                    columns = requests_table.columns.keys()
                    # a row kept by an older version lacks the newer columns: NULL
                    fresh = [
                        {c: r.get(c) for c in columns if c in r or c in ADDED_COLUMNS}
                        for r in rows
                        if r["row_uid"] not in have
                    ]
                    if fresh:
                        conn.execute(requests_table.insert(), fresh)
            except Exception as exc:
                if not _unreachable(exc):
                    log.error("ledger backlog rows refused (%s); retrying", exc)
                return
            self.backlog.pop(len(rows))
            if not len(self.backlog):
                log.warning("ledger database back: backlog written")

    def _write_failed(self, row: LedgerRow, exc: Exception) -> None:
        """What is left of a row the database refused: who, when, what status, and why."""
        bare = LedgerRow(
            request_id=str(row.request_id)[:64],
            model=str(row.model)[:200],
            backend=str(row.backend)[:32],
            status=row.status if isinstance(row.status, int) and 0 <= row.status < 1000 else 0,
            stream=bool(row.stream),
            latency_ms=0.0,
            prompt_tokens_original=0,
            prompt_tokens_sent=0,
            completion_tokens=0,
            error=f"accounting failed: {type(exc).__name__}"[:500],
            ts=time.time(),
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(requests_table.insert(), [asdict(bare)])
        except Exception:
            log.exception("ledger could not record request %s at all", row.request_id)

    def rows(self, limit: int = 100) -> list[dict[str, Any]]:
        self.flush()
        query = sa.select(requests_table).order_by(requests_table.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def totals(self, since: float | None = None, until: float | None = None) -> dict[str, Any]:
        """Savings by model and by kind over an optional ``[since, until)`` time window."""
        self.flush()
        t = requests_table.c
        cols = [
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((t.status >= 400, 1), else_=0)).label("errors"),
            sa.func.coalesce(sa.func.sum(t.prompt_tokens_original), 0).label(
                "prompt_tokens_original"
            ),
            sa.func.coalesce(sa.func.sum(t.prompt_tokens_sent), 0).label("prompt_tokens_sent"),
            sa.func.coalesce(sa.func.sum(t.completion_tokens), 0).label("completion_tokens"),
            sa.func.coalesce(sa.func.sum(t.cot_tokens_saved_estimated), 0).label(
                "cot_tokens_saved_estimated"
            ),
            sa.func.coalesce(sa.func.sum(t.batch_tokens_saved), 0).label("batch_tokens_saved"),
            sa.func.coalesce(sa.func.sum(t.reasoning_tokens), 0).label("reasoning_tokens"),
            sa.func.coalesce(sa.func.sum(t.prefix_bytes_identical), 0).label(
                "prefix_bytes_identical"
            ),
            sa.func.coalesce(sa.func.sum(t.prefix_bytes_total), 0).label("prefix_bytes_total"),
            sa.func.coalesce(sa.func.sum(t.reasoning_tokens_saved_estimated), 0).label(
                "reasoning_tokens_saved_estimated"
            ),
            sa.func.sum(t.cost_original).label("cost_original"),
            sa.func.sum(t.cost_actual).label("cost_actual"),
            sa.func.max(sa.cast(t.tokens_estimated, sa.Integer)).label("tokens_estimated"),
        ]
        where = []
        if since is not None:
            where.append(t.ts >= since)
        if until is not None:
            where.append(t.ts < until)
        with self.engine.connect() as conn:
            total = conn.execute(sa.select(*cols).where(*where)).one()._mapping
            by_model = conn.execute(
                sa.select(t.model, *cols).where(*where).group_by(t.model).order_by(t.model)
            ).all()
        return {
            "window": {"since": since, "until": until},
            "totals": _summary(total),
            "by_model": [{"model": r.model, **_summary(r._mapping)} for r in by_model],
            "by_kind": _by_kind(total),
        }


def _add_columns(engine: sa.Engine) -> None:
    """Add the columns a ledger written by an older version lacks (all nullable), and the
    unique index on ``row_uid``."""
    have = {c["name"] for c in sa.inspect(engine).get_columns(requests_table.name)}
    missing = [name for name in ADDED_COLUMNS if name not in have]
    if not missing:
        return
    _alter(engine, missing)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {UID_INDEX} "
                    f"ON {requests_table.name} (row_uid)"
                )
            )
    except sa.exc.DBAPIError:  # another replica created it first
        if UID_INDEX not in {
            i["name"] for i in sa.inspect(engine).get_indexes(requests_table.name)
        }:
            raise


def _alter(engine: sa.Engine, missing: list[str]) -> None:
    for name in missing:
        column = requests_table.c[name]
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {requests_table.name} ADD COLUMN {name} {kind}"))
        except sa.exc.DBAPIError:
            # another replica starting against the same old ledger added it first
            have = {c["name"] for c in sa.inspect(engine).get_columns(requests_table.name)}
            if name not in have:
                raise


def _summary(m: Any) -> dict[str, Any]:
    original, sent = int(m["prompt_tokens_original"] or 0), int(m["prompt_tokens_sent"] or 0)
    cost_original, cost_actual = m["cost_original"], m["cost_actual"]
    return {
        "requests": int(m["requests"] or 0),
        "errors": int(m["errors"] or 0),
        "prompt_tokens_original": original,
        "prompt_tokens_sent": sent,
        "prompt_tokens_saved": original - sent,
        "completion_tokens": int(m["completion_tokens"] or 0),
        "cot_tokens_saved_estimated": int(m["cot_tokens_saved_estimated"] or 0),
        "batch_tokens_saved": int(m["batch_tokens_saved"] or 0),
        "reasoning_tokens": int(m["reasoning_tokens"] or 0),
        "reasoning_tokens_saved_estimated": int(m["reasoning_tokens_saved_estimated"] or 0),
        "tokens_estimated": bool(m["tokens_estimated"] or 0),
        "cost_original": cost_original,
        "cost_actual": cost_actual,
        "cost_saved": None
        if cost_original is None or cost_actual is None
        else cost_original - cost_actual,
    }


def _by_kind(m: Any) -> dict[str, Any]:
    return {
        "prompt_compression": {
            "tokens_saved": int(m["prompt_tokens_original"] or 0)
            - int(m["prompt_tokens_sent"] or 0),
            "measured": True,
        },
        "cot_compression": {
            "tokens_saved": int(m["cot_tokens_saved_estimated"] or 0),
            "measured": False,
            "note": "estimated: completion tokens / cot_ratio minus completion tokens",
        },
        "query_batching": {"tokens_saved": int(m["batch_tokens_saved"] or 0), "measured": True},
        "reasoning": {
            "reasoning_tokens": int(m["reasoning_tokens"] or 0),
            "measured": True,
            "note": "reasoning tokens the upstreams reported (completion_tokens_details)",
        },
        "cache_safety": {
            "prefix_bytes_identical": int(m["prefix_bytes_identical"] or 0),
            "prefix_bytes_total": int(m["prefix_bytes_total"] or 0),
            "measured": True,
            "note": "compressed requests only: bytes of each one's messages whose prefix is "
            "byte for byte one an earlier request sent (what provider prompt caches can hit), "
            "of all their bytes",
        },
        "reasoning_budget": {
            "tokens_saved": int(m["reasoning_tokens_saved_estimated"] or 0),
            "measured": False,
            "note": "estimated: reasoning tokens / the budget's ratio to the model's typical "
            "reasoning length, minus reasoning tokens",
        },
    }
