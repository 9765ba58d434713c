"""Adaptive early exit: the layer loop, KV propagation, calibration, the engine and config."""

import pytest
import torch
from transformers.cache_utils import DynamicCache

from tests.runtime.test_engine import chat_ids
from tests.runtime.test_speculative import PROMPTS, generate
from tokenskip.proxy.infra.config import Settings, parse_config
from tokenskip.runtime.configs import EarlyExitConfig
from tokenskip.runtime.early_exit import (
    EarlyExit,
    EarlyExitStats,
    Logistic,
    calibrate_exits,
    exit_step,
    layer_features,
    simulate,
)
from tokenskip.runtime.engine import Engine
from tokenskip.runtime.runner import Runner
from tokenskip.runtime.speculative import skipping

NEVER = Logistic([0.0, 0.0], 0.0, 1.01)
ALWAYS = Logistic([0.0, 0.0, 0.0, 0.0], 0.0, 0.0)


def policy(layers, gate, classifier, n=30):
    return EarlyExit(list(layers), gate, classifier, n, 0.9)


def decode(smol, prompt, steps, exit_policy, stats=None):
    """Greedy decode with exit_step after a plain prefill; returns the tokens and cache."""
    model = smol.model
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1]
    mask = torch.ones((1, len(prompt)), dtype=torch.long)
    tokens = []
    for i in range(steps):
        t = int(logits.argmax())
        tokens.append(t)
        logits, mask = exit_step(model, t, cache, mask, len(prompt) + i, exit_policy, stats)
    return tokens, cache


def test_without_exits_the_layer_loop_is_the_full_model(smol):
    p = chat_ids(smol.tokenizer, PROMPTS[0])
    stats = EarlyExitStats()
    got, _ = decode(smol, p, 24, policy([12, 20], NEVER, ALWAYS), stats)
    with torch.inference_mode():
        hf = smol.model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False)
    assert got == hf[0, len(p) :].tolist()
    assert stats.exited == 0 and stats.layers_run == 24 * 30 and stats.head_checks == 0


def test_exiting_every_token_at_a_layer_is_the_truncated_model(smol):
    """Every token leaving after layer 19 never reads the deeper layers: after the first
    token (the full prefill's), the output is the model with layers 20.. removed."""
    p = chat_ids(smol.tokenizer, PROMPTS[2])
    stats = EarlyExitStats()
    got, cache = decode(smol, p, 16, policy([19], Logistic([0.0, 0.0], 0.0, 0.0), ALWAYS), stats)
    with torch.inference_mode(), skipping(smol.model, list(range(20, 30))):
        ids = torch.tensor([p + got[:1]])  # layers 0..19 of the prefill are the same
        out = smol.model.generate(ids, max_new_tokens=15, do_sample=False)
    assert got[1:] == out[0, len(p) + 1 :].tolist()
    assert stats.exited == 16 and stats.exits_by_layer == {19: 16}  # one exit per step
    # every layer's cache covers every position: the skipped layers got propagated entries
    assert {layer.keys.shape[-2] for layer in cache.layers} == {len(p) + 16}


def test_propagated_keys_and_values_are_the_layers_own(smol):
    """What an exit writes for a deeper layer equals that layer's attention run on the
    exited state."""
    decoder = smol.model.get_decoder()
    p = chat_ids(smol.tokenizer, PROMPTS[1])
    tokens, cache = decode(smol, p, 1, policy([9], Logistic([0.0, 0.0], 0.0, 0.0), ALWAYS))
    with torch.inference_mode():
        # layers 0..9 see only the full prefill: the exited state is the full model's layer-9
        # output for the first generated token
        ids = torch.tensor([p + tokens[:1]])
        h = smol.model(input_ids=ids, output_hidden_states=True).hidden_states[10][:, -1:]
        layer = decoder.layers[25]
        fresh = DynamicCache(config=smol.model.config)
        rope = decoder.rotary_emb(h, position_ids=torch.tensor([[len(p)]]))
        layer.self_attn(layer.input_layernorm(h), position_embeddings=rope, past_key_values=fresh)
    got = cache.layers[25]
    assert got.keys.shape[-2] == len(p) + 1
    assert torch.allclose(got.keys[..., len(p), :], fresh.layers[25].keys[..., 0, :], atol=1e-4)
    assert torch.allclose(got.values[..., len(p), :], fresh.layers[25].values[..., 0, :], atol=1e-4)


def test_calibration_meets_its_target_on_its_data(smol):
    samples = [chat_ids(smol.tokenizer, q) for q in PROMPTS]
    pol = calibrate_exits(smol.model, samples, layers=[16, 20, 24, 28], target=0.9)
    cal = pol.calibration
    assert cal["agreement"] >= 0.9  # non-exits agree by construction, exits at ≥ 0.9 precision
    assert cal["layers_per_token"] <= 30
    assert set(cal["candidate_agreement_by_layer"]) == {"16", "20", "24", "28"}
    # every layer kept pays for its head checks; the dropped ones are named
    assert sorted(pol.layers + cal["dropped_layers"]) == [16, 20, 24, 28]
    # a stricter target exits less often
    strict = calibrate_exits(smol.model, samples, layers=[16, 20, 24, 28], target=1.0)
    assert strict.calibration["exit_rate"] <= cal["exit_rate"]
    if pol.layers:
        data = layer_features(smol.model, samples, pol.layers)
        assert simulate(pol, data).items() <= cal.items()


def test_policy_round_trips(tmp_path):
    pol = policy([8, 12], Logistic([1.0, -2.0], 0.5, 0.3), Logistic([1.0, 2.0, 3.0, 4.0], 0.1, 0.7))
    pol.calibration = {"agreement": 0.97}
    pol.save(tmp_path / "p.json")
    assert EarlyExit.load(tmp_path / "p.json") == pol


def test_engine_serves_with_early_exit_and_counts_layers(smol):
    samples = [chat_ids(smol.tokenizer, q) for q in PROMPTS]
    pol = calibrate_exits(smol.model, samples, layers=[20, 24, 28], target=0.8)
    engine = Engine(Runner(smol.model, smol.tokenizer), early_exit=pol)
    try:
        r = generate(engine, chat_ids(smol.tokenizer, PROMPTS[0]), 24)
    finally:
        engine.close()
    s = engine.exit_stats
    assert r.finish_reason in ("stop", "length") and r.output_ids
    assert s.tokens == len(r.output_ids) - 1 + (r.finish_reason == "stop")
    assert s.layers_run <= 30 * s.tokens
    assert sum(s.exits_by_layer.values()) == s.exited


def test_engine_refuses_both_speculation_and_early_exit(smol):
    from tokenskip.runtime.speculative import SpeculativeSettings

    with pytest.raises(ValueError, match="exclude"):
        Engine(
            Runner(smol.model, smol.tokenizer),
            speculative=SpeculativeSettings(skip=(3,)),
            early_exit=policy([8], NEVER, ALWAYS),
        )


@pytest.mark.parametrize(
    "local, message",
    [
        ({"early_exit": {"target": 1.5}}, "target must be in"),
        ({"early_exit": {"layers": "8"}}, "layers must be a list"),
        ({"early_exit": {"skip": [3]}}, "mapping of target, layers"),
        ({"early_exit": True, "speculative": True}, "exclude each other"),
    ],
)
def test_config_rejects_bad_early_exit_blocks(local, message):
    block = {"model_name": "m", "local": {"model": "smollm2", **local}}
    with pytest.raises(ValueError, match=message):
        parse_config({"model_list": [block]}, Settings())


def test_config_accepts_an_early_exit_block():
    block = {"model_name": "m", "local": {"model": "smollm2", "early_exit": {"target": 0.9}}}
    cfg = parse_config({"model_list": [block]}, Settings())
    assert cfg.models["m"].early_exit == EarlyExitConfig(target=0.9)
