"""Budget forcing in the engine (s1): at the budget the answer cue is fed into the same
sequence and KV cache, and the model finishes the answer; an answer under budget is untouched."""

import threading

import pytest

from tests.runtime.test_engine import chat_ids
from tokenskip.reasoning import BudgetForcing
from tokenskip.runtime.engine import Engine, GenerationRequest
from tokenskip.runtime.runner import Runner

QUESTION = (
    "Tom has 3 boxes with 12 apples each. He gives away 7 apples. How many apples are "
    "left? Explain every step."
)
BUDGET = 16


def run(engine, *requests):
    done = threading.Semaphore(0)
    for r in requests:
        r.on_done = lambda _: done.release()
        engine.submit(r)
    for _ in requests:
        assert done.acquire(timeout=120)
    return requests


@pytest.fixture(scope="module")
def engine(smol):
    e = Engine(Runner(smol.model, smol.tokenizer), max_batch=4)
    yield e
    e.close()


def forced(tokenizer, prompt, budget, forcing=None, **kw):
    forcing = forcing or BudgetForcing(budget, answer_tokens=12)
    cue = tokenizer.encode(forcing.cue, add_special_tokens=False)
    return GenerationRequest(
        prompt_ids=prompt,
        max_new_tokens=budget + len(cue) + forcing.answer_tokens,
        force_at=budget,
        force_ids=list(cue),
        force_answer_tokens=forcing.answer_tokens,
        answered=forcing.answered,
        **kw,
    ), cue


def test_the_forced_answer_continues_the_same_sequence(engine, smol):
    tok = smol.tokenizer
    prompt = chat_ids(tok, QUESTION)
    (plain,) = run(engine, GenerationRequest(prompt_ids=prompt, max_new_tokens=BUDGET + 8))
    assert len(plain.output_ids) > BUDGET and not BudgetForcing.answered(
        tok.decode(plain.output_ids[:BUDGET])
    )
    request, cue = forced(tok, prompt, BUDGET)
    run(engine, request)
    out = request.output_ids
    assert request.forced_at == BUDGET
    assert out[:BUDGET] == plain.output_ids[:BUDGET]  # the reasoning is the model's own
    assert out[BUDGET : BUDGET + len(cue)] == cue  # then the cue, as tokens of the sequence
    answer = out[BUDGET + len(cue) :]
    assert 0 < len(answer) <= 12
    assert request.text.startswith(tok.decode(plain.output_ids[:BUDGET], skip_special_tokens=True))
    assert "Final answer:" in request.text
    # continuing in the KV cache gives what a fresh prefill of the same tokens gives
    (fresh,) = run(
        engine,
        GenerationRequest(prompt_ids=prompt + out[: BUDGET + len(cue)], max_new_tokens=len(answer)),
    )
    assert fresh.output_ids[: len(answer)] == answer


def test_forcing_in_a_batch_leaves_the_other_rows_alone(engine, smol):
    tok = smol.tokenizer
    other_prompt = chat_ids(tok, "Name three colors.")
    (alone,) = run(engine, GenerationRequest(prompt_ids=other_prompt, max_new_tokens=30))
    request, _ = forced(tok, chat_ids(tok, QUESTION), BUDGET)
    other = GenerationRequest(prompt_ids=other_prompt, max_new_tokens=30)
    run(engine, request, other)
    assert other.output_ids == alone.output_ids and other.forced_at is None
    assert request.forced_at == BUDGET


def test_greedy_output_is_unchanged_when_the_answer_finishes_under_budget(engine, smol):
    tok = smol.tokenizer
    prompt = chat_ids(tok, "What is 2+3? Answer with just the number.")
    (plain,) = run(engine, GenerationRequest(prompt_ids=prompt, max_new_tokens=200))
    assert plain.finish_reason == "stop" and len(plain.output_ids) < 100
    request, _ = forced(tok, prompt, 100)
    run(engine, request)
    assert request.output_ids == plain.output_ids and request.text == plain.text
    assert request.forced_at is None and request.finish_reason == "stop"


def test_an_answer_already_begun_at_the_budget_is_finished_not_cued(engine, smol):
    tok = smol.tokenizer
    request, _ = forced(tok, chat_ids(tok, QUESTION), BUDGET)
    request.answered = lambda text: True  # as if "the answer is" were the last words
    run(engine, request)
    assert request.forced_at is None and "Final answer:" not in request.text
    assert BUDGET < len(request.output_ids) <= BUDGET + 12 or request.finish_reason == "stop"


def test_a_stop_string_inside_the_cue_does_not_cut_the_answer(engine, smol):
    tok = smol.tokenizer
    request, cue = forced(tok, chat_ids(tok, QUESTION), BUDGET, stop=["\n\n"])
    (plain,) = run(
        engine, GenerationRequest(prompt_ids=chat_ids(tok, QUESTION), max_new_tokens=BUDGET)
    )
    if "\n\n" in plain.text:
        pytest.skip("the reasoning itself holds the stop string before the budget")
    run(engine, request)
    assert request.forced_at == BUDGET and "Final answer:" in request.text
    assert request.output_ids[BUDGET : BUDGET + len(cue)] == cue


def test_the_clients_cap_holds_under_forcing(engine, smol):
    tok = smol.tokenizer
    request, _ = forced(tok, chat_ids(tok, QUESTION), BUDGET)
    request.max_new_tokens = BUDGET + 3  # less than the cue and the answer need
    run(engine, request)
    assert len(request.output_ids) <= BUDGET + 3 and request.finish_reason == "length"
