"""Chunked prefill on the real embedded model: the same logits and greedy text as one
prefill, and a running stream that keeps moving while a long prompt is admitted."""

import threading
import time

import pytest
import torch

from tests.runtime.test_engine import chat_ids, run_all
from tokenskip.proxy.infra.config import Settings, parse_config
from tokenskip.runtime.engine import Engine, GenerationRequest
from tokenskip.runtime.runner import Runner

CHUNK = 16
LONG_QUESTION = (
    "Read this note and say what the harbour town is known for. The old harbour town has "
    "narrow streets that wind past small shops and quiet cafes near the water. Visitors like "
    "the fresh sea air, the gentle evening light and the friendly people who live there. "
) * 3


def test_chunks_give_the_logits_of_one_prefill(smol):
    runner = Runner(smol.model, smol.tokenizer)
    ids = chat_ids(smol.tokenizer, LONG_QUESTION)
    whole = runner.prefill([ids])
    part = None
    for start in range(0, len(ids), CHUNK):
        part = runner.prefill_part(ids[start : start + CHUNK], part)
    assert int(part.positions[0]) == len(ids) == int(whole.positions[0])
    torch.testing.assert_close(part.logits, whole.logits, atol=1e-4, rtol=1e-4)
    # and the next steps agree too: the cache is the same cache
    token = torch.tensor([int(whole.logits[0].argmax())])
    torch.testing.assert_close(
        runner.decode(token, part).logits, runner.decode(token, whole).logits, atol=1e-4, rtol=1e-4
    )


def _running_and_long(smol, engine, long_tokens=8):
    """A short request decoding, then a long prompt submitted once it has begun."""
    running = GenerationRequest(
        prompt_ids=chat_ids(smol.tokenizer, "Count from one to fifty in words."),
        max_new_tokens=120,
    )
    times: list[float] = []
    begun = threading.Event()

    def on_delta(_text):
        times.append(time.perf_counter())
        if len(times) >= 3:
            begun.set()

    running.on_delta = on_delta
    long = GenerationRequest(
        prompt_ids=chat_ids(smol.tokenizer, LONG_QUESTION), max_new_tokens=long_tokens
    )
    done = threading.Semaphore(0)
    running.on_done = long.on_done = lambda _: done.release()
    engine.submit(running)
    assert begun.wait(60)
    long.submitted_at = time.perf_counter()
    engine.submit(long)
    assert done.acquire(timeout=120) and done.acquire(timeout=120)
    during = sum(long.submitted_at < t < long.first_token_at for t in times)
    return running, long, during


@pytest.mark.parametrize("chunk", [CHUNK, None], ids=["chunked", "whole"])
def test_a_running_stream_keeps_moving_while_a_long_prompt_arrives(smol, chunk):
    engine = Engine(Runner(smol.model, smol.tokenizer), max_batch=4, prefill_chunk=chunk)
    try:
        running, long, during = _running_and_long(smol, engine)
        num_chunks = engine.num_chunks
    finally:
        engine.close()
    reference = Engine(Runner(smol.model, smol.tokenizer), max_batch=4)
    try:
        alone = [
            GenerationRequest(prompt_ids=r.prompt_ids, max_new_tokens=r.max_new_tokens)
            for r in (running, long)
        ]
        for r in alone:
            run_all(reference, [r])
    finally:
        reference.close()
    # greedy output unchanged by the way the prompt was admitted
    assert running.output_ids == alone[0].output_ids
    assert long.output_ids == alone[1].output_ids
    chunks_needed = -(-len(long.prompt_ids) // CHUNK)
    if chunk is None:
        assert num_chunks == 0
        assert during <= 1  # the running stream waited for the whole prefill
    else:
        assert num_chunks == chunks_needed
        assert during >= chunks_needed - 1  # a token of the stream between the chunks


def test_prefill_chunk_is_validated():
    with pytest.raises(ValueError, match="prefill_chunk must be positive"):
        Engine(None, prefill_chunk=0)
    for bad in (0, -3, "256", True):
        with pytest.raises(ValueError, match="local.prefill_chunk must be a positive number"):
            parse_config(
                {
                    "model_list": [
                        {"model_name": "m", "local": {"model": "smollm2", "prefill_chunk": bad}}
                    ]
                },
                Settings(),
            )
    entry = parse_config(
        {"model_list": [{"model_name": "m", "local": {"model": "smollm2", "prefill_chunk": 256}}]},
        Settings(),
    ).models["m"]
    assert entry.prefill_chunk == 256
