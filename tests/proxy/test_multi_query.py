"""Query-OPT in the gateway: /v1/multi_query and transparent batching of chat requests,
through a real proxy on loopback to a fault-injecting OpenAI-protocol upstream."""

import concurrent.futures

import httpx
import openai
import pytest

from tests.proxy.fake_upstream import make_upstream_app
from tests.proxy.servers import serve
from tokenskip.multi_query import build_messages, make_queries, single_messages
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

CONTEXT = (
    "Meeting notes. Alice proposed moving the launch to March because the supplier is late. "
    "Bob agreed but asked for a budget review first. Carol will draft the announcement. "
) * 8
SYSTEM = "You answer questions about the meeting notes. " + CONTEXT


@pytest.fixture(scope="module")
def upstream():
    with serve(make_upstream_app()) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    def model(name, behaviour, batch=None, **tokenskip):
        block = {"tokenizer": "smollm2", **tokenskip}
        if batch is not None:
            block["batch"] = batch
        return {
            "model_name": name,
            "litellm_params": {
                "model": f"openai/{behaviour}",
                "api_base": upstream + "/v1",
                "api_key": "k",
            },
            "tokenskip": block,
        }

    batch = {"window_ms": 300, "max_queries": 4, "min_prefix_tokens": 8}
    config = {
        "model_list": [
            model("mq", "multi", batch),
            model("mq-garbage", "multi_garbage", batch),
            model("mq-partial", "multi_partial", batch),
            model("mq-echo", "multi_echo", batch),
            model("mq-off", "multi"),
            model("mq-small", "multi", {**batch, "max_context_tokens": 200}),
            model("mq-loop", "multi_loop", batch),
            model("mq-loop-read-all", "multi_loop", {**batch, "stop_loops": False}),
            model("mq-drop", "multi_drop", batch),
        ],
    }
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(ledger_url=f"sqlite:///{ledger}")
    app = create_app(settings, parse_config(config, settings))
    with serve(app) as url:
        yield url


def calls(upstream):
    return httpx.get(upstream + "/_calls").json()["by_model"]


@pytest.fixture(autouse=True)
def reset(upstream):
    httpx.post(upstream + "/_reset")


def multi_query(proxy, **body):
    return httpx.post(proxy + "/v1/multi_query", json=body, timeout=60)


# -- the explicit API -------------------------------------------------------------------


def test_one_call_answers_every_query_matched_by_id(proxy, upstream):
    r = multi_query(
        proxy,
        model="mq",
        context=CONTEXT,
        queries=[
            "Who proposed the move?",
            "What did Bob ask for?",
            {"id": 9, "query": "Who drafts?"},
        ],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(a["id"], a["answer"], a["source"]) for a in body["answers"]] == [
        (1, "echo: Who proposed the move?", "merged"),
        (2, "echo: What did Bob ask for?", "merged"),
        (9, "echo: Who drafts?", "merged"),
    ]
    assert body["usage"]["calls"] == 1 and calls(upstream) == {"multi": 1}
    s = body["savings"]
    assert s["calls_saved"] == 2 and s["separate_calls"] == 3
    assert s["prompt_tokens_saved"] == s["separate_prompt_tokens"] - s["sent_prompt_tokens"]
    assert s["sent_prompt_tokens"] * 2 < s["separate_prompt_tokens"]  # the context went once
    assert body["format"] == {"merged": True, "complete": True, "missing_ids": [], "problems": []}


def test_an_unparseable_answer_is_retried_query_by_query(proxy, upstream):
    queries = ["Who proposed the move?", "What did Bob ask for?"]
    body = multi_query(proxy, model="mq-garbage", context=CONTEXT, queries=queries).json()
    assert [a["source"] for a in body["answers"]] == ["retried", "retried"]
    for a, q in zip(body["answers"], queries):
        assert a["answer"].endswith(q)  # each answer is its own query's
    assert body["usage"]["calls"] == 3 and calls(upstream) == {"multi_garbage": 3}
    assert body["format"]["merged"] and not body["format"]["complete"]
    assert body["format"]["missing_ids"] == [1, 2] and body["format"]["problems"]


def test_only_the_missing_ids_are_retried(proxy, upstream):
    queries = ["A?", "B?", "C?"]
    body = multi_query(proxy, model="mq-partial", context=CONTEXT, queries=queries).json()
    assert [a["source"] for a in body["answers"]] == ["merged", "merged", "retried"]
    assert body["answers"][2]["answer"].endswith("C?")
    assert body["usage"]["calls"] == 2


def test_a_reply_that_copies_the_example_shape_is_asked_again_alone(proxy, upstream):
    queries = ["A?", "B?", "C?", "D?"]
    body = multi_query(proxy, model="mq-echo", context=CONTEXT, queries=queries).json()
    assert [a["source"] for a in body["answers"]] == ["retried"] * 4
    assert all(a["answer"].endswith(q) for a, q in zip(body["answers"], queries))
    assert body["usage"]["calls"] == 5
    assert not body["format"]["complete"] and len(body["format"]["missing_ids"]) == 4
    assert any("repeats its id" in p for p in body["format"]["problems"])


def test_a_merge_that_would_not_fit_the_window_is_not_made(proxy, upstream):
    body = multi_query(proxy, model="mq-small", context=CONTEXT, queries=["A?", "B?"]).json()
    assert [a["source"] for a in body["answers"]] == ["single", "single"]
    assert not body["format"]["merged"] and body["usage"]["calls"] == 2
    assert body["savings"]["calls_saved"] == 0 and body["savings"]["prompt_tokens_saved"] == 0


@pytest.mark.parametrize(
    "body, status, fragment",
    [
        ({"model": "mq", "context": CONTEXT, "queries": []}, 422, "queries"),
        (
            {
                "model": "mq",
                "context": CONTEXT,
                "queries": [{"id": 1, "query": "a"}, {"id": 1, "query": "b"}],
            },
            400,
            "duplicate query ids",
        ),
        ({"model": "mq", "context": "  ", "queries": ["a"]}, 400, "context"),
        ({"model": "nope", "context": CONTEXT, "queries": ["a"]}, 404, "does not exist"),
        ({"model": "mq", "context": CONTEXT, "queries": ["a"], "junk": 1}, 422, "junk"),
    ],
)
def test_bad_multi_query_requests_get_openai_shaped_errors(proxy, upstream, body, status, fragment):
    r = multi_query(proxy, **body)
    assert r.status_code == status
    assert fragment in r.json()["error"]["message"]
    assert calls(upstream) == {}


def upstream_words(context, query):
    """What the fake upstream bills for one query asked alone: (prompt, completion) words."""
    messages = single_messages(context, query)
    prompt = sum(len(m["content"].split()) for m in messages)
    return prompt, len(("echo: " + messages[-1]["content"]).split())


def test_a_looping_merged_reply_is_stopped_early_and_the_rest_asked_alone(proxy, upstream):
    queries = ["A?", "B?", "C?"]
    r = multi_query(proxy, model="mq-loop", context=CONTEXT, queries=queries)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [a["source"] for a in body["answers"]] == ["merged", "retried", "retried"]
    for a, q in zip(body["answers"], queries):
        assert a["answer"].endswith(q)  # the first from the merged reply, the rest alone
    assert body["format"]["problems"][0].startswith("stopped after")
    assert body["usage"]["calls"] == 3 and calls(upstream) == {"multi_loop": 3}
    # the merged call's usage is the gateway's count: its whole prompt, and only the few
    # sentences of the loop it read (the full reply has ~22,000 words)
    retried = [upstream_words(CONTEXT, q) for q in queries[1:]]
    merged_prompt = body["usage"]["prompt_tokens"] - sum(p for p, _ in retried)
    merged_completion = body["usage"]["completion_tokens"] - sum(c for _, c in retried)
    merged_words = sum(
        len(m["content"].split()) for m in build_messages(CONTEXT, make_queries(queries))
    )
    assert merged_prompt >= merged_words
    assert 0 < merged_completion < 1_000
    assert httpx.get(upstream + "/_calls").json()["pieces_streamed"] < 20_000  # not all sent


def test_with_stop_loops_off_the_whole_looping_reply_is_read(proxy, upstream):
    r = multi_query(proxy, model="mq-loop-read-all", context=CONTEXT, queries=["A?", "B?"])
    body = r.json()
    assert [a["source"] for a in body["answers"]] == ["merged", "retried"]
    assert not any(p.startswith("stopped") for p in body["format"]["problems"])
    assert body["usage"]["completion_tokens"] > 20_000  # every word of the loop, billed


def test_a_request_can_turn_the_loop_guard_off_or_on(proxy, upstream):
    off = multi_query(
        proxy, model="mq-loop", context=CONTEXT, queries=["A?", "B?"], stop_loops=False
    ).json()
    assert off["usage"]["completion_tokens"] > 20_000
    on = multi_query(
        proxy, model="mq-loop-read-all", context=CONTEXT, queries=["A?", "B?"], stop_loops=True
    ).json()
    assert on["format"]["problems"][0].startswith("stopped after")


def test_a_merged_stream_that_breaks_sends_every_query_alone(proxy, upstream):
    queries = ["A?", "B?"]
    r = multi_query(proxy, model="mq-drop", context=CONTEXT, queries=queries)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [a["source"] for a in body["answers"]] == ["single", "single"]
    for a, q in zip(body["answers"], queries):
        assert a["answer"].endswith(q)
    assert calls(upstream) == {"multi_drop": 3}


def test_sampling_options_reach_the_merged_call(proxy, upstream):
    r = multi_query(proxy, model="mq", context=CONTEXT, queries=["A?", "B?"], presence_penalty=0.25)
    assert r.status_code == 200, r.text
    body = httpx.get(upstream + "/_calls").json()["last_body"]
    assert body["presence_penalty"] == 0.25 and "frequency_penalty" not in body


def test_the_merged_call_is_in_the_ledger_as_query_batching(proxy):
    before = httpx.get(proxy + "/v1/savings").json()["by_kind"]["query_batching"]["tokens_saved"]
    multi_query(proxy, model="mq", context=CONTEXT, queries=["A?", "B?", "C?", "D?"])
    after = httpx.get(proxy + "/v1/savings").json()["by_kind"]["query_batching"]["tokens_saved"]
    assert after > before


# -- transparent batching in /v1/chat/completions ----------------------------------------


def ask_concurrently(proxy, model, questions, system=SYSTEM, stream=False, **extra):
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="x", max_retries=0, timeout=60)

    def one(q):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": q}]
        if stream:
            chunks = client.chat.completions.create(
                model=model, messages=messages, stream=True, **extra
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), None
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=messages, **extra
        )
        return raw.parse().choices[0].message.content, raw.headers.get("x-tokenskip-batched")

    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        return list(pool.map(one, questions))


QUESTIONS = [f"Question number {i}: who said what?" for i in range(4)]


def test_concurrent_requests_with_a_shared_prefix_become_one_call(proxy, upstream):
    before = httpx.get(proxy + "/v1/savings").json()["by_kind"]["query_batching"]["tokens_saved"]
    results = ask_concurrently(proxy, "mq", QUESTIONS)
    assert [text for text, _ in results] == [f"echo: {q}" for q in QUESTIONS]
    assert all(batched == "true" for _, batched in results)
    assert calls(upstream) == {"multi": 1}
    after = httpx.get(proxy + "/v1/savings").json()["by_kind"]["query_batching"]["tokens_saved"]
    assert after > before


def test_batched_answers_stream_too(proxy, upstream):
    results = ask_concurrently(proxy, "mq", QUESTIONS[:3], stream=True)
    assert [text for text, _ in results] == [f"echo: {q}" for q in QUESTIONS[:3]]
    assert calls(upstream) == {"multi": 1}


def test_a_bad_merged_answer_sends_each_request_on_its_own(proxy, upstream):
    results = ask_concurrently(proxy, "mq-garbage", QUESTIONS)
    assert [text for text, _ in results] == [f"echo: {q}" for q in QUESTIONS]
    assert all(batched is None for _, batched in results)
    assert calls(upstream) == {"multi_garbage": 1 + len(QUESTIONS)}


def test_requests_that_differ_before_the_last_message_are_not_merged(proxy, upstream):
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="x", max_retries=0, timeout=60)

    def one(i):
        return (
            client.chat.completions.create(
                model="mq",
                messages=[
                    {"role": "system", "content": f"{SYSTEM} Variant {i}."},
                    {"role": "user", "content": f"Q{i}?"},
                ],
            )
            .choices[0]
            .message.content
        )

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert list(pool.map(one, range(2))) == ["echo: Q0?", "echo: Q1?"]
    assert calls(upstream) == {"multi": 2}


def test_opting_out_and_unbatched_models_go_alone(proxy, upstream):
    results = ask_concurrently(
        proxy, "mq", QUESTIONS[:2], extra_body={"tokenskip": {"batch": False}}
    )
    assert [text for text, _ in results] == [f"echo: {q}" for q in QUESTIONS[:2]]
    results = ask_concurrently(proxy, "mq-off", QUESTIONS[:2])
    assert [text for text, _ in results] == [f"echo: {q}" for q in QUESTIONS[:2]]
    assert calls(upstream) == {"multi": 4}


def test_a_looping_batch_still_answers_every_caller(proxy, upstream):
    results = ask_concurrently(proxy, "mq-loop", QUESTIONS[:3])
    assert [text for text, _ in results] == [f"echo: {q}" for q in QUESTIONS[:3]]
    # whichever arrived first got query 1, the one answer the merged reply finished
    assert sorted(str(batched) for _, batched in results) == ["None", "None", "true"]
    assert calls(upstream) == {"multi_loop": 3}


def test_penalized_requests_go_alone_with_their_penalties(proxy, upstream):
    """In a merged reply a penalty would count the other callers' answers too."""
    results = ask_concurrently(proxy, "mq", QUESTIONS[:2], frequency_penalty=0.5)
    assert [text for text, _ in results] == [f"echo: {q}" for q in QUESTIONS[:2]]
    assert all(batched is None for _, batched in results)
    assert calls(upstream) == {"multi": 2}
    assert httpx.get(upstream + "/_calls").json()["last_body"]["frequency_penalty"] == 0.5


def test_a_lone_request_is_served_normally_after_the_window(proxy, upstream):
    [(text, batched)] = ask_concurrently(proxy, "mq", QUESTIONS[:1])
    assert text == f"echo: {QUESTIONS[0]}" and batched is None
    assert calls(upstream) == {"multi": 1}


def test_string_and_integer_ids_are_echoed_as_given(proxy, upstream):
    queries = [{"id": "q-alpha", "query": "A?"}, {"id": 7, "query": "B?"}, "C?"]
    body = multi_query(proxy, model="mq", context=CONTEXT, queries=queries).json()
    assert [a["id"] for a in body["answers"]] == ["q-alpha", 7, 3]
    assert [a["answer"] for a in body["answers"]] == ["echo: A?", "echo: B?", "echo: C?"]


def test_a_merge_costlier_than_singles_says_why(proxy, upstream):
    body = multi_query(proxy, model="mq", context="Hi.", queries=["A?", "B?"]).json()
    s = body["savings"]
    assert s["prompt_tokens_saved"] < 0
    assert "more prompt tokens than one call per query" in s["note"]
