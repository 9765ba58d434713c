"""The proxy end to end on the embedded model: real uvicorn on loopback, official openai client."""

import concurrent.futures
import json
import time

import httpx
import openai
import pytest
import torch

from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

KEY = "sk-test-key"
LONG = (
    "The old harbour town has narrow streets that wind past small shops and quiet cafes near "
    "the water. Visitors like the fresh sea air, the gentle evening light and the friendly "
    "people who live there. "
) * 8


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, smol):
    """A random LoRA adapter marked TokenSkip-tuned by its tokenskip.json."""
    from peft import LoraConfig, get_peft_model

    from tokenskip.models import load_model

    path = tmp_path_factory.mktemp("adapter")
    fresh = load_model("smollm2")
    torch.manual_seed(0)
    lora = get_peft_model(
        fresh.model,
        LoraConfig(
            r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    lora.save_pretrained(path)
    (path / "tokenskip.json").write_text(json.dumps({"delimiter": "<|im_end|>"}))
    return path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, adapter_dir):
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(api_keys=KEY, ledger_url=f"sqlite:///{ledger}", max_body_bytes=64 * 1024)
    config = parse_config(
        {
            "model_list": [
                {
                    "model_name": "smollm2",
                    "local": {"model": "smollm2"},
                    "tokenskip": {"prompt_ratio": 0.5, "prompt_min_tokens": 64},
                },
                {
                    "model_name": "smollm2-ts",
                    "local": {"model": "smollm2", "adapter": str(adapter_dir)},
                },
            ]
        },
        settings,
    )
    app = create_app(settings, config)
    with serve(app) as url:
        yield url, app.app


@pytest.fixture
def client(proxy):
    return openai.OpenAI(base_url=proxy[0] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(question, **kw):
    return {
        "model": "smollm2",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 16,
        **kw,
    }


def test_non_streamed_answer_with_usage_and_savings(client):
    raw = client.chat.completions.with_raw_response.create(**ask("What is 2+3?"))
    r = raw.parse()
    assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_original == u.prompt_tokens + u.prompt_tokens_saved
    assert u.tokens_estimated is False
    assert raw.headers["x-tokenskip-prompt-tokens-original"] == str(u.prompt_tokens_original)
    assert raw.headers["x-tokenskip-prompt-tokens-saved"] == str(u.prompt_tokens_saved)


def test_frequency_penalty_reaches_the_local_model(client):
    """Accepted and applied, not silently dropped: it changes a repetitive greedy answer."""
    question = "Count from one to twenty, separated by commas."
    plain = client.chat.completions.create(**ask(question, max_tokens=24))
    penalized = client.chat.completions.create(**ask(question, max_tokens=24, frequency_penalty=2))
    assert plain.choices[0].message.content != penalized.choices[0].message.content


def test_streamed_answer_equals_the_non_streamed_one(client):
    plain = client.chat.completions.create(**ask("Name three colors."))
    chunks = list(
        client.chat.completions.create(
            **ask("Name three colors."), stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [plain.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == plain.usage.completion_tokens
    assert usage.prompt_tokens_saved == 0 and usage.prompt_tokens_original == usage.prompt_tokens


def test_stream_without_usage_option_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(**ask("Hi"), stream=True))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)


def test_long_prompts_are_compressed_and_can_be_switched_off(client):
    # a pasted document is context: compressed; the request after it is not
    messages = [{"role": "user", "content": LONG + "\n\nSummarise in three words."}]
    on = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8)
    off = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        max_tokens=8,
        extra_body={"tokenskip": {"enabled": False}},
    )
    assert on.usage.prompt_tokens_saved > 0
    assert on.usage.prompt_tokens < off.usage.prompt_tokens
    assert off.usage.prompt_tokens_saved == 0
    assert on.usage.prompt_tokens_original == off.usage.prompt_tokens
    assert on.model_extra["tokenskip"]["messages_compressed"] == 1
    stronger = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        max_tokens=8,
        extra_body={"tokenskip": {"prompt_ratio": 0.3}},
    )
    assert stronger.usage.prompt_tokens_saved > on.usage.prompt_tokens_saved


def test_cot_knob_method_depends_on_the_model(client):
    plain = client.chat.completions.with_raw_response.create(
        **ask("What is 6*7?"), extra_body={"tokenskip": {"cot_ratio": 0.5}}
    )
    assert plain.headers["x-tokenskip-cot-method"] == "instruction"
    assert plain.parse().model_extra["tokenskip"]["cot_method"] == "instruction"
    tuned = client.chat.completions.create(
        model="smollm2-ts",
        messages=[{"role": "user", "content": "What is 6*7?"}],
        max_tokens=8,
        extra_body={"tokenskip": {"cot_ratio": 0.5}},
    )
    assert tuned.model_extra["tokenskip"]["cot_method"] == "tokenskip"


def test_budget_forcing_on_the_local_model_cues_the_answer(client, smol):
    question = "Tom has 3 boxes with 12 apples each and gives away 7. How many are left? Explain."
    knob = {"cot_method": "budget-forcing", "cot_budget": 12, "force_answer_tokens": 8}
    r = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": question}],
        extra_body={"tokenskip": knob},
    )
    info = r.model_extra["tokenskip"]
    assert info["cot_method"] == "budget-forcing" and info["cot_forced"] is True
    assert info["cot_budget"] == 12
    assert "\n\nFinal answer:" in r.choices[0].message.content
    reasoning = r.choices[0].message.content.split("\n\nFinal answer:")[0]
    assert len(smol.tokenizer.encode(reasoning, add_special_tokens=False)) <= 12 + 1
    assert r.usage.completion_tokens <= 12 + 8 + 8
    streamed = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": question}],
        stream=True,
        extra_body={"tokenskip": knob},
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == r.choices[0].message.content  # greedy: the same forced answer


def test_concurrent_clients_are_batched_and_all_answered(client, proxy):
    engine = proxy[1].state.service.local.engines["smollm2"]
    questions = [f"What is {i}+{i}?" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda q: client.chat.completions.create(**ask(q, max_tokens=12)), questions)
        )
    assert all(a.choices[0].message.content for a in answers)
    assert len({a.id for a in answers}) == 8
    assert engine.max_batch_seen > 1


def last_id(app):
    rows = app.state.ledger.rows(1)
    return rows[0]["id"] if rows else 0


def wait_for_row(app, after_id, timeout=30):
    """The first ledger row written after ``after_id`` (rows are written off the request path)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = [r for r in app.state.ledger.rows(5) if r["id"] > after_id]
        if rows:
            return min(rows, key=lambda r: r["id"])
        time.sleep(0.1)
    raise AssertionError("no ledger row appeared")


def assert_engine_free(url, engine):
    """Nothing queued, and a new request is served at once."""
    assert not engine._pending
    quick = httpx.post(
        url + "/v1/chat/completions",
        json=ask("Hi", max_tokens=4),
        headers={"authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert quick.status_code == 200


def test_client_disconnect_cancels_generation(proxy):
    url, app = proxy
    engine = app.state.service.local.engines["smollm2"]
    before = last_id(app)
    body = ask("Write a very long story about a dragon.", max_tokens=400, stream=True)
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEY}"},
        ) as resp,
    ):
        lines = resp.iter_lines()
        for _ in range(4):
            next(lines)
    row = wait_for_row(app, before)
    assert row["status"] == 499 and row["stream"] is True
    assert row["completion_tokens"] == 0 or row["completion_tokens"] < 400
    assert_engine_free(url, engine)


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}])
def test_missing_or_wrong_key_is_401_in_openai_shape(proxy, headers):
    r = httpx.post(proxy[0] + "/v1/chat/completions", json=ask("Hi"), headers=headers)
    assert r.status_code == 401
    assert (
        r.json()["error"]["code"] == "invalid_api_key"
        and r.json()["error"]["type"] == "invalid_request_error"
    )


def test_official_client_sees_authentication_error(proxy):
    bad = openai.OpenAI(base_url=proxy[0] + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(**ask("Hi"))


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"model": "smollm2"}).encode(), 422, None),
        (
            json.dumps(
                {
                    "model": "smollm2",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": -1,
                }
            ).encode(),
            422,
            None,
        ),
        (json.dumps(ask("x", model="nope")).encode(), 404, "model_not_found"),
        (json.dumps(ask("x", tokenskip={"prompt_ratio": 0})).encode(), 422, None),
        (json.dumps(ask("x", frequency_penalty=2.5)).encode(), 422, None),
        (json.dumps(ask("x", max_tokens=100000)).encode(), 400, "context_length_exceeded"),
        (b"x" * (65 * 1024), 413, "request_too_large"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(proxy, content, status, code):
    r = httpx.post(
        proxy[0] + "/v1/chat/completions",
        content=content,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    assert error["code"] == code


def test_models_health_metrics_and_savings(proxy, client):
    url, _ = proxy
    assert {m.id for m in client.models.list().data} == {"smollm2", "smollm2-ts"}
    assert httpx.get(url + "/healthz").json()["status"] == "ok"
    client.chat.completions.create(**ask("Hello there"))
    metrics = httpx.get(url + "/metrics").text
    assert 'tokenskip_requests_total{model="smollm2",status="200"}' in metrics
    assert "tokenskip_request_latency_seconds_bucket" in metrics
    assert 'tokenskip_tokens_total{direction="completion",model="smollm2"}' in metrics
    savings = httpx.get(url + "/v1/savings", headers={"authorization": f"Bearer {KEY}"}).json()
    assert savings["totals"]["requests"] >= 1
    assert {"prompt_compression", "cot_compression", "query_batching"} <= set(savings["by_kind"])
    future = httpx.get(
        url + "/v1/savings",
        params={"since": time.time() + 3600},
        headers={"authorization": f"Bearer {KEY}"},
    ).json()
    assert future["totals"]["requests"] == 0
    bad = httpx.get(
        url + "/v1/savings",
        params={"since": "yesterday"},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert bad.status_code == 400


def test_non_streamed_request_is_cancelled_when_the_client_leaves(proxy):
    url, app = proxy
    engine = app.state.service.local.engines["smollm2"]
    before = last_id(app)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            url + "/v1/chat/completions",
            json=ask("Write a very long story about a dragon.", max_tokens=400),
            headers={"authorization": f"Bearer {KEY}"},
            timeout=1.5,
        )
    row = wait_for_row(app, before)
    assert row["status"] == 499 and row["stream"] is False
    # 400 tokens take well over 15 s on this CPU; a cancelled request ends near the 1.5 s timeout
    assert row["latency_ms"] < 8000
    assert_engine_free(url, engine)


def test_the_local_model_answers_the_messages_api(proxy):
    import anthropic

    client = anthropic.Anthropic(base_url=proxy[0], api_key=KEY, max_retries=0, timeout=120)
    m = client.messages.create(
        model="smollm2", max_tokens=8, messages=[{"role": "user", "content": "Say hi."}]
    )
    assert m.content[0].type == "text" and m.content[0].text
    assert m.usage.output_tokens <= 8 and m.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(
        model="smollm2", max_tokens=8, messages=[{"role": "user", "content": "Say hi."}]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == m.content[0].text  # greedy: the same answer streamed


def test_the_local_model_answers_the_responses_api(client):
    r = client.responses.create(model="smollm2", input="Say hi.", max_output_tokens=8)
    assert r.status in ("completed", "incomplete") and r.output_text
    events = list(
        client.responses.create(model="smollm2", input="Say hi.", max_output_tokens=8, stream=True)
    )
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == r.output_text  # greedy: the same answer streamed
