import time

import pytest

from tokenskip.proxy.infra.ledger import Ledger, LedgerRow


def row(model, original, sent, status=200, **kw):
    return LedgerRow(
        request_id="r",
        model=model,
        backend="litellm",
        status=status,
        stream=False,
        latency_ms=1.0,
        prompt_tokens_original=original,
        prompt_tokens_sent=sent,
        completion_tokens=10,
        **kw,
    )


def test_totals_by_model_and_kind_and_window(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.record(
        row("a", 100, 60, cost_original=1.0, cost_actual=0.6, cot_tokens_saved_estimated=5)
    )
    ledger.record(row("a", 50, 50, status=502))
    ledger.record(row("b", 10, 10, ts=time.time() - 3600))
    totals = ledger.totals()
    assert totals["totals"]["requests"] == 3 and totals["totals"]["errors"] == 1
    assert totals["totals"]["prompt_tokens_saved"] == 40
    a = next(m for m in totals["by_model"] if m["model"] == "a")
    assert a["cost_saved"] == pytest.approx(0.4)
    assert totals["by_kind"]["prompt_compression"] == {"tokens_saved": 40, "measured": True}
    assert totals["by_kind"]["cot_compression"]["tokens_saved"] == 5
    assert totals["by_kind"]["cot_compression"]["measured"] is False
    recent = ledger.totals(since=time.time() - 60)
    assert recent["totals"]["requests"] == 2
    assert len(ledger.rows()) == 3
    ledger.close()


def test_ledger_survives_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    first = Ledger(url)
    first.record(row("a", 10, 5))
    first.close()
    second = Ledger(url)
    assert second.totals()["totals"]["prompt_tokens_saved"] == 5
    second.close()


def test_an_unusable_url_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot open the ledger"):
        Ledger("notadb://x")


def test_each_gateway_address_gets_its_own_ledger_by_default(tmp_path, monkeypatch):
    from tokenskip.proxy.infra.ledger import default_url

    monkeypatch.setenv("TOKENSKIP_CACHE_DIR", str(tmp_path))
    a, b = default_url("127.0.0.1", 8000), default_url("127.0.0.1", 8001)
    assert a != b and a.endswith("ledger-127.0.0.1-8000.sqlite")
    assert default_url("::1", 9000).endswith("ledger-__1-9000.sqlite")


def test_overflowing_and_non_finite_values_are_clamped_not_lost(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.record(row("a", 10**40, 5, cost_actual=float("inf"), cot_ratio=float("nan")))
    ledger.record(row("a", 10, 5))
    rows = ledger.rows()
    ledger.close()
    assert len(rows) == 2
    big = next(r for r in rows if r["prompt_tokens_original"] > 10)
    assert big["prompt_tokens_original"] == 2**62 and big["cost_actual"] is None


def test_a_ledger_from_before_reasoning_columns_gains_them_and_keeps_its_rows(tmp_path):
    import sqlalchemy as sa

    from tokenskip.proxy.infra.ledger import ADDED_COLUMNS, Ledger, LedgerRow, requests_table

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    old = sa.MetaData()
    sa.Table(
        requests_table.name,
        old,
        *[c.copy() for c in requests_table.columns if c.name not in ADDED_COLUMNS],
    )
    engine = sa.create_engine(url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO tokenskip_requests (request_id, ts, model, backend, status, stream, "
                "latency_ms, prompt_tokens_original, prompt_tokens_sent, completion_tokens, "
                "cot_method, cot_tokens_saved_estimated, batch_tokens_saved, tokens_estimated) "
                "VALUES ('old-1', 1.0, 'm', 'direct', 200, 0, 1.0, 10, 8, 5, 'none', 0, 0, 0)"
            )
        )
    engine.dispose()
    ledger = Ledger(url)
    try:
        ledger.record(
            LedgerRow(
                request_id="new-1",
                model="m",
                backend="direct",
                status=200,
                stream=False,
                latency_ms=1.0,
                prompt_tokens_original=10,
                prompt_tokens_sent=10,
                completion_tokens=40,
                reasoning_tokens=30,
                reasoning_tokens_saved_estimated=30,
                cot_budget=2048,
            )
        )
        rows = {r["request_id"]: r for r in ledger.rows()}
        assert set(rows) == {"old-1", "new-1"}
        assert rows["old-1"]["reasoning_tokens"] is None
        assert rows["new-1"]["reasoning_tokens"] == 30 and rows["new-1"]["cot_budget"] == 2048
        totals = ledger.totals()
        assert totals["totals"]["reasoning_tokens"] == 30
        assert totals["by_kind"]["reasoning_budget"]["tokens_saved"] == 30
    finally:
        ledger.close()
