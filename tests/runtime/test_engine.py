"""The local engine on the real embedded model: batching, identity, stops, cancel, adapters."""

import json
import threading

import pytest
import torch

from tokenskip.models import load_model
from tokenskip.runtime.engine import Engine, GenerationRequest
from tokenskip.runtime.runner import Runner

QUESTIONS = [
    "What is 2+3?",
    "Name a color.",
    "Say hello in French.",
    "What is the capital of Italy?",
]


def chat_ids(tokenizer, question):
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )


def run_all(engine, requests, timeout=120):
    done = threading.Semaphore(0)
    for r in requests:
        r.on_done = lambda _: done.release()
        engine.submit(r)
    for _ in requests:
        assert done.acquire(timeout=timeout), "engine did not finish in time"


@pytest.fixture(scope="module")
def engine(smol):
    e = Engine(Runner(smol.model, smol.tokenizer), max_batch=8)
    yield e
    e.close()


def test_batched_greedy_equals_single_and_hf_generate(engine, smol):
    prompts = [chat_ids(smol.tokenizer, q) for q in QUESTIONS]
    singles = []
    for p in prompts:
        r = GenerationRequest(prompt_ids=p, max_new_tokens=12)
        run_all(engine, [r])
        singles.append(r)
    batch = [GenerationRequest(prompt_ids=p, max_new_tokens=12) for p in prompts]
    before = engine.num_batches
    run_all(engine, batch)
    assert engine.num_batches == before + 1  # all four in one batch
    for p, single, batched in zip(prompts, singles, batch):
        assert batched.output_ids == single.output_ids
        with torch.inference_mode():
            hf = smol.model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)[
                0, len(p) :
            ].tolist()
        assert (
            single.output_ids
            == [t for t in hf if t not in engine.runner.eos_ids][: len(single.output_ids)]
        )
        assert single.text == smol.tokenizer.decode(single.output_ids, skip_special_tokens=True)


def test_streamed_deltas_add_up_to_the_text(engine, smol):
    deltas = []
    r = GenerationRequest(
        prompt_ids=chat_ids(smol.tokenizer, "Count from one to five."),
        max_new_tokens=20,
        on_delta=deltas.append,
    )
    run_all(engine, [r])
    assert len(deltas) > 1 and "".join(deltas) == r.text


def test_length_and_stop_strings(engine, smol):
    p = chat_ids(smol.tokenizer, "Write one sentence about the sea.")
    full = GenerationRequest(prompt_ids=p, max_new_tokens=30)
    capped = GenerationRequest(prompt_ids=p, max_new_tokens=3)
    run_all(engine, [full, capped])
    assert capped.finish_reason == "length" and len(capped.output_ids) == 3
    words = full.text.split()
    assert len(words) >= 4, full.text
    stop = " " + words[3]
    stopped = GenerationRequest(prompt_ids=p, max_new_tokens=30, stop=[stop])
    run_all(engine, [stopped])
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]


def test_a_streamed_answer_never_sends_part_of_its_stop_string(engine, smol):
    """ "1, 2, 3, 4, ..." stopped at ", 4": the ", " before the 4 is held back, not sent."""
    deltas = []
    r = GenerationRequest(
        prompt_ids=chat_ids(smol.tokenizer, "Count from 1 to 10, separated by commas."),
        max_new_tokens=30,
        stop=[", 4"],
        on_delta=deltas.append,
    )
    run_all(engine, [r])
    assert (r.finish_reason, r.stop_sequence) == ("stop", ", 4")
    assert r.text == "1, 2, 3" and "".join(deltas) == r.text


def test_sampling_is_reproducible_with_a_seed(engine, smol):
    p = chat_ids(smol.tokenizer, "Tell me a word.")
    a = GenerationRequest(prompt_ids=p, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    b = GenerationRequest(prompt_ids=p, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    run_all(engine, [a])
    run_all(engine, [b])
    assert a.output_ids == b.output_ids


def test_context_overflow_is_refused_before_queueing(engine):
    with pytest.raises(ValueError, match="exceeds the model's context"):
        engine.submit(
            GenerationRequest(prompt_ids=[1] * 100, max_new_tokens=engine.runner.max_positions)
        )


def test_cancelled_request_leaves_its_batch(engine, smol):
    p = chat_ids(smol.tokenizer, "Write a long story about a dragon.")
    cancel_me = GenerationRequest(prompt_ids=p, max_new_tokens=200)
    cancel_me.on_delta = lambda _: cancel_me.cancelled.set()
    keep = GenerationRequest(prompt_ids=p, max_new_tokens=10)
    run_all(engine, [cancel_me, keep])
    assert cancel_me.finish_reason == "cancelled" and len(cancel_me.output_ids) <= 2
    assert keep.finish_reason == "length" and len(keep.output_ids) == 10


def test_requests_join_and_leave_a_running_batch_without_changing_outputs(engine, smol):
    """Continuous batching: a request arriving mid-generation joins the running batch, a short
    row leaves it early, and every greedy output equals the request served alone."""
    long_p, short_p, late_p = (
        chat_ids(smol.tokenizer, q)
        for q in ("Write a long story about a dragon.", "What is 2+3?", "Name three fruits.")
    )
    alone = {}
    for name, p, n in (("long", long_p, 40), ("short", short_p, 4), ("late", late_p, 12)):
        r = GenerationRequest(prompt_ids=p, max_new_tokens=n)
        run_all(engine, [r])
        alone[name] = r.output_ids

    late = GenerationRequest(prompt_ids=late_p, max_new_tokens=12)
    submitted = threading.Event()

    def on_delta(_: str) -> None:  # from the worker: the long row is mid-generation
        if len(long.output_ids) == 10 and not submitted.is_set():
            submitted.set()
            engine.submit(late)

    long = GenerationRequest(prompt_ids=long_p, max_new_tokens=40, on_delta=on_delta)
    short = GenerationRequest(prompt_ids=short_p, max_new_tokens=4)
    done = threading.Semaphore(0)
    for r in (long, short, late):
        r.on_done = lambda _: done.release()
    before = engine.num_batches
    engine.submit(long)
    engine.submit(short)
    for _ in range(3):
        assert done.acquire(timeout=120)
    assert submitted.is_set()
    assert long.output_ids == alone["long"] and len(long.output_ids) == 40
    assert short.output_ids == alone["short"]
    assert late.output_ids == alone["late"]
    assert short.finished_at < late.first_token_at < long.finished_at  # joined mid-run
    assert engine.num_batches - before in (2, 3)  # long+short (maybe apart), then late


def test_close_answers_everything_in_flight_and_queued(smol):
    engine = Engine(Runner(smol.model, smol.tokenizer), max_batch=1)
    p = chat_ids(smol.tokenizer, "Write a long story about a dragon.")
    started = threading.Event()
    running = GenerationRequest(prompt_ids=p, max_new_tokens=500, on_delta=lambda _: started.set())
    queued = GenerationRequest(prompt_ids=p, max_new_tokens=5)  # max_batch=1: it waits
    engine.submit(running)
    engine.submit(queued)
    assert started.wait(60)
    engine.close()
    assert running.finish_reason == "cancelled" and 0 < len(running.output_ids) < 500
    assert queued.finish_reason == "cancelled" and queued.output_ids == []


def test_lora_adapters_by_name(tmp_path):
    from peft import LoraConfig, get_peft_model

    fresh = load_model("smollm2")  # a private copy: peft injects layers into the model in place
    torch.manual_seed(0)
    lora = get_peft_model(
        fresh.model,
        LoraConfig(
            r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    lora.save_pretrained(tmp_path / "ad")
    (tmp_path / "ad" / "tokenskip.json").write_text(json.dumps({"delimiter": "<|im_end|>"}))
    base_model = lora.unload()  # back to the plain model
    # "eval" is also a module method name: served names must not reach peft as adapter names.
    runner = Runner(
        base_model,
        fresh.tokenizer,
        adapters={"ts": str(tmp_path / "ad"), "eval": str(tmp_path / "ad")},
    )
    assert runner.adapters["ts"].delimiter == "<|im_end|>"
    engine = Engine(runner)
    try:
        p = chat_ids(fresh.tokenizer, "What is 2+3?")
        base, tuned = (
            GenerationRequest(prompt_ids=p, max_new_tokens=8),
            GenerationRequest(prompt_ids=p, max_new_tokens=8, adapter="ts"),
        )
        same = GenerationRequest(prompt_ids=p, max_new_tokens=8, adapter="eval")
        run_all(engine, [base, tuned])
        run_all(engine, [same])
        assert same.output_ids == tuned.output_ids
        with torch.inference_mode(), runner.model.disable_adapter():
            hf = runner.model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False)[
                0, len(p) :
            ].tolist()
        assert base.output_ids == [t for t in hf if t not in runner.eos_ids][: len(base.output_ids)]
        assert tuned.output_ids != base.output_ids
        with pytest.raises(ValueError, match="unknown adapter"):
            engine.submit(GenerationRequest(prompt_ids=p, max_new_tokens=2, adapter="nope"))
    finally:
        engine.close()
    with pytest.raises(ValueError, match="adapter_config.json"):
        Runner(fresh.model, fresh.tokenizer, adapters={"x": str(tmp_path)})


def test_penalties_follow_openais_formula_over_generated_tokens_only():
    from tokenskip.runtime.engine import penalize

    logits = torch.zeros(6)
    out = penalize(logits, [2, 2, 5], frequency=0.5, presence=1.0)
    assert out.tolist() == [0.0, 0.0, -2.0, 0.0, 0.0, -1.5]
    assert penalize(logits, [], 0.5, 1.0) is logits  # nothing generated yet: unchanged
    assert penalize(logits, [3], -1.0, 0.0)[3] == 1.0  # negative values encourage repeats


def test_a_presence_penalty_changes_greedy_decoding(engine, smol):
    prompt = chat_ids(smol.tokenizer, "Count from one to twenty, separated by commas.")
    plain = GenerationRequest(prompt_ids=prompt, max_new_tokens=24)
    strong = GenerationRequest(prompt_ids=prompt, max_new_tokens=24, presence_penalty=100.0)
    run_all(engine, [plain, strong])  # one batch: the penalty is per row
    assert len(set(plain.output_ids)) < len(plain.output_ids)  # greedy repeats itself here
    assert len(set(strong.output_ids)) == len(strong.output_ids)  # no token twice
    again = GenerationRequest(prompt_ids=prompt, max_new_tokens=24)
    run_all(engine, [again])
    assert again.output_ids == plain.output_ids  # the penalty did not leak into other rows
