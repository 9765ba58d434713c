import re

import pytest
import yaml

from tokenskip.proxy.infra.config import Settings, load_config, parse_config
from tokenskip.runtime.configs import SpeculativeConfig

CONFIG = """
model_list:
  - model_name: gpt-mini
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/FAKE_KEY}
    tokenskip: {prompt_ratio: 0.6, cot_ratio: 0.8, tokenizer: smollm2}
  - model_name: tuned
    litellm_params: {model: hosted_vllm/tuned, api_base: "http://127.0.0.1:9/v1"}
    tokenskip: {delimiter: "<|eot_id|>"}
  - model_name: local
    local: {model: smollm2}
router_settings: {num_retries: 1, timeout: 5}
general_settings: {master_key: sk-master}
tokenskip_settings: {api_keys: [sk-a], defaults: {prompt_ratio: 0.9}, local_max_batch: 4}
"""


def test_litellm_style_config_parses(monkeypatch):
    monkeypatch.setenv("TOKENSKIP_API_KEYS", "sk-env")
    cfg = parse_config(yaml.safe_load(CONFIG), Settings())
    assert set(cfg.models) == {"gpt-mini", "tuned", "local"}
    assert cfg.models["gpt-mini"].policy.prompt_ratio == 0.6
    assert cfg.models["gpt-mini"].tokenizer == "smollm2"
    assert cfg.models["tuned"].policy.prompt_ratio == 0.9  # gateway default
    assert cfg.models["tuned"].delimiter == "<|eot_id|>"
    assert cfg.models["local"].is_local
    assert set(cfg.api_keys) == {"sk-env", "sk-a", "sk-master"}
    assert cfg.local_max_batch == 4
    router_list = cfg.litellm_model_list()
    assert [m["model_name"] for m in router_list] == ["gpt-mini"]  # "tuned" is served directly
    assert "tokenskip" not in router_list[0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(model_list=[]), "non-empty model_list"),
        (
            lambda d: d["model_list"].append({"model_name": "local", "local": {"model": "x"}}),
            "duplicate",
        ),
        (
            lambda d: d["model_list"].append(
                {"model_name": "both", "local": {"model": "x"}, "litellm_params": {"model": "y"}}
            ),
            "exactly one",
        ),
        (lambda d: d["model_list"][0]["tokenskip"].update(prompt_ratio=2), "prompt_ratio"),
        (lambda d: d["tokenskip_settings"].update(bogus=1), "unknown tokenskip_settings"),
        (lambda d: d["model_list"][0]["tokenskip"].update(batch={"max_queries": 1}), "max_queries"),
        (lambda d: d["model_list"][0]["tokenskip"].update(batch={"windw_ms": 5}), "unknown batch"),
        (
            lambda d: d["model_list"][0]["tokenskip"].update(batch={"stop_loops": "no"}),
            "stop_loops",
        ),
        (lambda d: d["model_list"][2]["local"].update(speculative={"skip": [0]}), "speculative"),
        (lambda d: d["model_list"][2]["local"].update(speculative="yes"), "speculative"),
        (
            lambda d: d["model_list"][2]["local"].update(speculative={"lookup": "yes"}),
            "speculative.lookup must be true or false",
        ),
    ],
)
def test_bad_configs_name_the_problem(mutate, message):
    data = yaml.safe_load(CONFIG)
    mutate(data)
    with pytest.raises(ValueError, match=message):
        parse_config(data, Settings())


def test_config_file_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read config"):
        load_config(Settings(config=tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(Settings(config=bad))


def test_no_config_serves_the_local_model():
    cfg = load_config(Settings(local_model="smollm2"))
    assert list(cfg.models) == ["smollm2"] and cfg.models["smollm2"].is_local


def test_backends_and_fallbacks_are_resolved():
    data = yaml.safe_load(CONFIG)
    data["router_settings"]["fallbacks"] = [{"gpt-mini": ["tuned", "local"]}]
    cfg = parse_config(data, Settings())
    assert cfg.models["gpt-mini"].backend == "litellm"  # no api_base: a real provider via litellm
    assert cfg.models["tuned"].backend == "direct"
    assert cfg.models["local"].backend == "local"
    assert cfg.fallbacks == {"gpt-mini": ("tuned", "local")}
    data["tokenskip_settings"]["direct_openai_compatible"] = False
    assert parse_config(data, Settings()).models["tuned"].backend == "litellm"
    data["router_settings"]["fallbacks"] = [{"gpt-mini": ["nope"]}]
    with pytest.raises(ValueError, match="'nope', which is not in model_list"):
        parse_config(data, Settings())


def test_batching_speculation_and_kernels_are_per_model_options():
    data = yaml.safe_load(CONFIG)
    data["model_list"][0]["tokenskip"]["batch"] = {"window_ms": 15, "max_queries": 4}
    data["model_list"][2]["local"].update(speculative={"skip": [5, 6], "k": 3}, kernels=True)
    cfg = parse_config(data, Settings())
    batch = cfg.models["gpt-mini"].batch
    assert (batch.window_ms, batch.max_queries) == (15, 4)
    assert cfg.models["tuned"].batch is None
    assert cfg.models["local"].speculative == SpeculativeConfig(skip=(5, 6), k=3)
    assert cfg.models["local"].kernels is True


def local_config(*entries):
    return {"model_list": [{"model_name": f"m{i}", "local": e} for i, e in enumerate(entries)]}


def test_a_local_models_precision_is_read_and_checked():
    cfg = parse_config(local_config({"model": "smollm2", "dtype": "bfloat16", "weights": "int8"}))
    assert (cfg.models["m0"].dtype, cfg.models["m0"].weights) == ("bfloat16", "int8")
    assert (parse_config(local_config({"model": "smollm2"})).models["m0"].dtype) == "float32"
    for local, fragment in (
        ({"model": "smollm2", "dtype": "fp16"}, "dtype 'fp16' is not one of auto, float32"),
        ({"model": "smollm2", "weights": "int3"}, "weights 'int3' is not one of none, int8"),
        ({"model": "smollm2", "weights": "int4"}, "cannot run here (torchao's int4"),
        ({"model": "smollm2", "weights": "int8", "adapter": "runs/x"}, "with a LoRA adapter"),
    ):
        with pytest.raises(ValueError, match=re.escape(fragment)):
            parse_config(local_config(local))


def test_models_sharing_a_base_must_share_its_precision():
    with pytest.raises(
        ValueError, match="share the base 'smollm2'.*float32/none and bfloat16/none"
    ):
        parse_config(local_config({"model": "smollm2"}, {"model": "smollm2", "dtype": "bfloat16"}))
