"""Every way an exchange can end writes its one ledger row, and only one."""

import asyncio
import time

import pytest

from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.infra.backends.base import BackendError
from tokenskip.proxy.infra.config import Settings, parse_config
from tokenskip.proxy.infra.ledger import Ledger
from tokenskip.proxy.infra.metrics import Metrics
from tokenskip.proxy.serving.prepare import Plan
from tokenskip.proxy.serving.service import ChatService


@pytest.fixture
def service(tmp_path):
    config = parse_config(
        {
            "model_list": [
                {
                    "model_name": "up",
                    "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"},
                }
            ]
        },
        Settings(),
    )
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    service = ChatService(config, ledger, Metrics())
    yield service
    ledger.close()


def plan(service, request_id="r1"):
    entry = service.models.entry("up")
    messages = [{"role": "user", "content": "hello there"}]
    return Plan(entry, messages, {}, None, None, None, "none", False, time.perf_counter(),
                request_id=request_id)  # fmt: skip


def rows(service):
    service.ledger.flush()
    return service.ledger.rows()


def test_an_answered_exchange_writes_one_row_with_its_usage(service):
    async def run():
        with service.exchange(plan(service), stream=False) as x:
            usage = await x.answered(7, 3, "hi")
        x.close()  # a second close writes nothing
        return usage

    usage = asyncio.run(run())
    assert usage["prompt_tokens"] == 7 and usage["completion_tokens"] == 3
    [row] = rows(service)
    assert (row["status"], row["prompt_tokens_sent"], row["completion_tokens"]) == (200, 7, 3)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ProxyError(404, "no such thing", code="x"), 404),
        (BackendError(503, "upstream down", "upstream_error", "overloaded"), 503),
        (asyncio.CancelledError(), 499),
        (RuntimeError("a bug"), 500),
    ],
)
def test_an_exchange_ended_by_an_error_writes_its_status(service, error, status):
    with pytest.raises(type(error)), service.exchange(plan(service), stream=False):
        raise error
    [row] = rows(service)
    assert row["status"] == status and row["error"]
    if isinstance(error, ProxyError):
        assert error.accounted  # the error handler writes no second row


def test_a_failure_recorded_before_the_client_left_stands(service):
    with pytest.raises(GeneratorExit), service.exchange(plan(service), stream=True) as x:
        x.failed(502, "the upstream stream broke off")
        raise GeneratorExit
    [row] = rows(service)
    assert (row["status"], row["error"]) == (502, "the upstream stream broke off")


def test_a_handed_over_exchange_is_accounted_by_the_stream_that_takes_it(service):
    async def run():
        x = service.exchange(plan(service), stream=True)
        with x:
            x.hand_over()
        assert rows(service) == []  # the route returned; the stream has not ended yet
        with x:
            await x.answered(5, 2, "ok")
        return x

    asyncio.run(run())
    [row] = rows(service)
    assert row["status"] == 200 and row["stream"]


def test_a_voided_exchange_writes_nothing_and_one_without_an_outcome_is_a_500(service):
    with service.exchange(plan(service, "void"), stream=False) as x:
        x.void()
    assert rows(service) == []
    with service.exchange(plan(service, "lost"), stream=False):
        pass
    [row] = rows(service)
    assert (row["request_id"], row["status"]) == ("lost", 500)
