"""Self-speculative decoding with layer skipping: lossless, and its calibration."""

import threading

import torch

from proxy.local.engine import Engine, GenerationRequest
from proxy.local.runner import Runner
from proxy.local.speculative import SpeculativeSettings, agreement, calibrate, skipping
from tests.proxy.test_engine import chat_ids

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Write a short poem about the sea.",
    "What is the capital of France? Explain briefly.",
]


def generate(engine, prompt_ids, n):
    done = threading.Event()
    r = GenerationRequest(prompt_ids=prompt_ids, max_new_tokens=n)
    r.on_done = lambda _: done.set()
    engine.submit(r)
    assert done.wait(300)
    return r


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


def test_calibration_keeps_agreement_above_target(smol):
    samples = [smol.tokenizer.encode(q)[:48] for q in PROMPTS[:2]]
    cal = calibrate(smol.model, samples, target=0.7, max_fraction=0.1)
    n = cal.num_layers
    assert cal.skip and 0 not in cal.skip and n - 1 not in cal.skip
    assert len(cal.skip) <= int(0.1 * n)
    assert round(agreement(smol.model, samples, cal.skip), 4) == cal.agreement >= 0.7
    # The search stopped for a reason it recorded: the next layer fell under the target or
    # the skip budget was spent.
    assert cal.trace[-1]["agreement"] < 0.7 or len(cal.skip) == int(0.1 * n)
