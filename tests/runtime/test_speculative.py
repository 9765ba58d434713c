"""Self-speculative decoding with layer skipping: lossless, and its calibration."""

import threading

import torch

from tests.runtime.test_engine import chat_ids
from tokenskip.runtime.engine import Engine, GenerationRequest
from tokenskip.runtime.runner import Runner
from tokenskip.runtime.speculative import (
    SpeculativeSettings,
    agreement,
    calibrate,
    lookup_draft,
    modeled_speedup,
    skipping,
)

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Write a short poem about the sea.",
    "What is the capital of France? Explain briefly.",
]


def generate(engine, prompt_ids, n, **options):
    done = threading.Event()
    r = GenerationRequest(prompt_ids=prompt_ids, max_new_tokens=n, **options)
    r.on_done = lambda _: done.set()
    engine.submit(r)
    assert done.wait(300)
    return r


def hf_greedy(smol, engine, prompt_ids, n):
    """HF generate's greedy continuation, end-of-sequence tokens dropped."""
    with torch.inference_mode():
        hf = smol.model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)
    return [t for t in hf[0, len(prompt_ids) :].tolist() if t not in engine.runner.eos_ids]


def test_speculative_greedy_output_is_the_full_models(smol):
    engine = Engine(
        Runner(smol.model, smol.tokenizer),
        speculative=SpeculativeSettings(skip=(12, 14, 16, 18), k=3),
    )
    try:
        for question in PROMPTS:
            p = chat_ids(smol.tokenizer, question)
            got = generate(engine, p, 40)
            with torch.inference_mode():
                hf = smol.model.generate(torch.tensor([p]), max_new_tokens=40, do_sample=False)
            want = [t for t in hf[0, len(p) :].tolist() if t not in engine.runner.eos_ids]
            assert got.output_ids == want[: len(got.output_ids)]
            assert len(got.output_ids) == len(want)
    finally:
        engine.close()
    s = engine.spec_stats
    assert s.rounds > 0 and 0 < s.accepted <= s.drafted
    assert s.tokens == s.accepted + s.rounds  # each round: the kept draft + the full model's token


def test_skipping_restores_the_model(smol):
    layers = smol.model.get_decoder().layers
    with skipping(smol.model, [3, 4]):
        assert len(smol.model.get_decoder().layers) == len(layers) - 2
    assert smol.model.get_decoder().layers is layers


def test_calibration_keeps_the_search_prefix_with_the_best_modeled_speedup(smol):
    samples = [smol.tokenizer.encode(q)[:48] for q in PROMPTS[:2]]
    cal = calibrate(smol.model, samples, target=0.7, max_fraction=0.1)
    n = cal.num_layers
    assert 0 not in cal.skip and n - 1 not in cal.skip
    assert len(cal.skip) <= int(0.1 * n)
    # The search stopped for a reason it recorded: the next layer fell under the target or
    # the skip budget was spent.
    assert cal.trace[-1]["agreement"] < 0.7 or len(cal.trace) == int(0.1 * n)
    accepted = [t for t in cal.trace if t["agreement"] >= 0.7]
    # the kept skip set is the prefix of the search with the best modeled speed-up, or
    # nothing when no prefix beats plain decoding
    best = max([1.0] + [t["modeled_speedup"] for t in accepted])
    assert cal.modeled_speedup == best
    if best > 1.0:
        length = 1 + [t["modeled_speedup"] for t in accepted].index(best)
        assert cal.skip == sorted(t["add"] for t in accepted[:length])
        assert round(agreement(smol.model, samples, cal.skip), 4) == cal.agreement >= 0.7
    else:
        assert cal.skip == [] and cal.agreement == 1.0
    for t in accepted:  # each entry's speed-up is the model's for its agreement and size
        size = 1 + cal.trace.index(t)
        assert (
            t["modeled_speedup"]
            == modeled_speedup(t["agreement"], size, n, head_layers=cal.head_layers)[0]
        )


def test_modeled_speedup():
    # every draft accepted, half the layers skipped: the longest draft pays best
    assert modeled_speedup(1.0, 15, 30, max_k=8) == (round(9 / 5, 4), 8)
    # drafts never accepted: every round costs more than the one token it yields
    assert modeled_speedup(0.0, 15, 30)[0] < 1.0
    # skipping one layer of 30 cannot pay for the verify pass, even at 95% agreement
    assert modeled_speedup(0.95, 1, 30)[0] < 1.0
    assert modeled_speedup(0.9, 15, 30)[0] > modeled_speedup(0.8, 15, 30)[0] > 1.0
    # the LM head runs for every draft token: a costly head lowers the gain
    assert modeled_speedup(0.9, 15, 30, head_layers=8)[0] < modeled_speedup(0.9, 15, 30)[0]


def test_an_empty_skip_set_turns_speculation_off(smol):
    engine = Engine(
        Runner(smol.model, smol.tokenizer),
        speculative=SpeculativeSettings(skip=(), lookup=False),
    )
    try:
        p = chat_ids(smol.tokenizer, PROMPTS[2])
        assert generate(engine, p, 12).output_ids == hf_greedy(smol, engine, p, 12)
    finally:
        engine.close()
    assert engine.speculative is None and engine.spec_stats.rounds == 0


def test_lookup_drafts_what_followed_the_latest_earlier_occurrence():
    assert lookup_draft([1, 2, 3, 9, 9, 1, 2, 3], 4) == [9, 9, 1, 2]
    assert lookup_draft([1, 2, 3, 4, 5, 2, 3], 3) == [4, 5, 2]  # 3-gram misses, 2-gram hits
    assert lookup_draft([1, 2, 7, 1, 2, 8, 1, 2], 1) == [8]  # the latest occurrence wins
    assert lookup_draft([5, 6, 7], 3) == [] and lookup_draft([], 2) == []
    assert lookup_draft([1, 2, 1, 2], 0) == []


def test_lookup_drafts_keep_the_output_the_full_models(smol):
    """Lookup only (no skip set): drafts come from the prompt and output, every token is
    still the full model's."""
    engine = Engine(
        Runner(smol.model, smol.tokenizer),
        speculative=SpeculativeSettings(skip=(), lookup=True),
    )
    question = (
        "Copy this sentence exactly, twice: The farmer sells twelve eggs at the market "
        "every morning for two dollars each."
    )
    try:
        for q in (question, PROMPTS[0]):
            p = chat_ids(smol.tokenizer, q)
            assert generate(engine, p, 48).output_ids == hf_greedy(smol, engine, p, 48)
    finally:
        engine.close()
    s = engine.spec_stats
    assert s.lookup_rounds == s.rounds > 0 and s.lookup_accepted > 0
    assert s.tokens == s.accepted + s.rounds + s.plain_steps


def test_config_settings_carry_lookup_and_a_given_skip_set(smol):
    from tokenskip.runtime.speculative import speculative_settings

    s = speculative_settings("smol", smol, {"skip": [3, 4], "k": 2, "lookup": False})
    assert s == SpeculativeSettings(skip=(3, 4), k=2, max_k=8, lookup=False)
    assert speculative_settings("smol", smol, {"skip": [3]}).lookup is True  # on by default


def test_penalized_requests_bypass_speculation(smol):
    """Drafts are checked against the unpenalized argmax, so a penalized request decodes plainly
    (same tokens as the plain engine) and no speculative round runs."""
    p = chat_ids(smol.tokenizer, PROMPTS[1])
    outputs = []
    for spec in (None, SpeculativeSettings(skip=(), lookup=True)):
        engine = Engine(Runner(smol.model, smol.tokenizer), speculative=spec)
        try:
            outputs.append(generate(engine, p, 32, frequency_penalty=1.0).output_ids)
        finally:
            engine.close()
        assert engine.spec_stats.rounds == 0
    assert outputs[0] == outputs[1]
