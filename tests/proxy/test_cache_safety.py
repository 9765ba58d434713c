"""Compression that keeps provider prompt caches hitting: over a 20-turn conversation the
messages each turn sends upstream start with exactly what the previous turn sent, content
marked cache_control (and everything before it) is never changed, and /v1/savings reports
the prefix bytes kept identical."""

import json

import httpx
import pytest

from tests.proxy.fake_upstream import make_upstream_app
from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

TURNS = 20
SYSTEM = (
    "You are a careful analyst for a logistics company. Answer from the documents the user "
    "pastes and the tool results; never invent numbers, and say when something is not stated."
)


def document(turn: int) -> str:
    """A pasted report: long enough to be compressed as context."""
    sentences = [
        f"Report {turn}, section {i}: the northern depot shipped {120 + 7 * i + turn} pallets "
        f"in week {i + 1}, which is about {3 + i % 4} percent more than the plan, mostly because "
        "the new sorting line was finally running at its full speed after the long repair."
        for i in range(12)
    ]
    return " ".join(sentences)


def tool_rows(turn: int) -> str:
    rows = [
        {"sku": f"SKU-{turn:02d}-{i:03d}", "depot": "north", "pallets": 10 + i, "late": i % 3 == 0}
        for i in range(40)
    ]
    return json.dumps(rows, indent=2)


def add_turn(conversation: list, turn: int) -> None:
    """The client's part of one turn: every third a tool call and its rows, then a pasted
    report and a question about it."""
    if turn % 3 == 0:
        call = {
            "id": f"call_{turn}",
            "type": "function",
            "function": {"name": "stock", "arguments": json.dumps({"turn": turn})},
        }
        conversation.append({"role": "assistant", "content": None, "tool_calls": [call]})
        conversation.append(
            {"role": "tool", "tool_call_id": f"call_{turn}", "content": tool_rows(turn)}
        )
    conversation.append(
        {
            "role": "user",
            "content": f"{document(turn)}\n\nHow many pallets did section {turn % 12} ship?",
        }
    )


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app()) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    config = {
        "model_list": [
            {
                "model_name": "ok",
                "litellm_params": {"model": "openai/ok", "api_base": upstream + "/v1"},
                # the default policy, with words dropped from documents (off by default)
                "tokenskip": {"tokenizer": "smollm2", "prompt_ratio": 0.7},
            }
        ]
    }
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(ledger_url=f"sqlite:///{ledger}")
    with serve(create_app(settings, parse_config(config, settings))) as url:
        yield url


def sent(upstream):
    return httpx.get(upstream + "/_calls").json()["last_body"]["messages"]


def test_every_turn_starts_with_the_previous_turns_upstream_messages(proxy, upstream):
    conversation = [{"role": "system", "content": SYSTEM}]
    previous: list | None = None
    changed_turns = 0
    for turn in range(1, TURNS + 1):
        add_turn(conversation, turn)
        r = httpx.post(
            proxy + "/v1/chat/completions", json={"model": "ok", "messages": conversation}
        )
        assert r.status_code == 200, r.text
        body = sent(upstream)
        if body != conversation:
            changed_turns += 1
        if previous is not None:
            assert body[: len(previous)] == previous, f"turn {turn} rewrote an earlier turn"
        previous = body
        conversation.append(r.json()["choices"][0]["message"])
    assert changed_turns == TURNS  # every turn was compressed: the check above is not vacuous
    savings = httpx.get(proxy + "/v1/savings").json()["by_kind"]["cache_safety"]
    assert savings["measured"] is True
    # every compressed request after the first repeats all of the previous one's bytes
    assert 0.5 < savings["prefix_bytes_identical"] / savings["prefix_bytes_total"] < 1


def test_content_marked_cache_control_and_everything_before_it_is_left_alone(proxy, upstream):
    doc = {
        "role": "user",
        "content": [{"type": "text", "text": document(1), "cache_control": {"type": "ephemeral"}}],
    }
    earlier = {"role": "user", "content": document(2)}
    later = {"role": "user", "content": document(3) + "\n\nSummarise."}
    messages = [{"role": "system", "content": SYSTEM}, earlier, doc, later]
    r = httpx.post(proxy + "/v1/chat/completions", json={"model": "ok", "messages": messages})
    assert r.status_code == 200
    body = sent(upstream)
    assert body[:3] == messages[:3]  # the breakpoint and all before it: byte for byte
    assert body[3] != later  # after the last breakpoint, context still compresses


def test_cache_safe_false_opts_out(proxy, upstream):
    doc = {
        "role": "user",
        "content": [
            {
                "type": "text",
                "text": document(4) + "\n\nSummarise the report.",
                "cache_control": {"type": "ephemeral"},
            }
        ],
    }
    r = httpx.post(
        proxy + "/v1/chat/completions",
        json={"model": "ok", "messages": [doc], "tokenskip": {"cache_safe": False}},
    )
    assert r.status_code == 200
    assert sent(upstream)[0] != doc
