"""Precision and weight format of a local model (tokenskip.runtime.precision)."""

import pytest
import torch

from tokenskip.runtime import precision
from tokenskip.testing import make_causal_lm


def test_auto_picks_bfloat16_only_where_it_is_native():
    assert precision.resolve("auto", "cpu", {"avx2", "avx512f"}) == "float32"
    assert precision.resolve("auto", "cpu", {"avx2", "avx512_bf16"}) == "bfloat16"
    assert precision.resolve("auto", "cpu", {"amx_bf16"}) == "bfloat16"
    assert precision.resolve("auto", "cuda:0", set()) == "bfloat16"
    assert precision.resolve("float32", "cpu", {"avx512_bf16"}) == "float32"


@pytest.mark.parametrize(
    ("dtype", "weights"), [("fp16", "none"), ("auto", "int2"), ("float32", "int4")]
)
def test_an_unknown_or_unavailable_mode_is_refused_by_name(dtype, weights):
    with pytest.raises(ValueError, match="dtype|weights"):
        precision.check(dtype, weights)


def test_bfloat16_on_a_cpu_without_it_is_allowed_and_said(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    model = make_causal_lm(64)
    assert precision.apply(model, "bfloat16", "none", name="tiny") == "bfloat16"
    assert next(model.parameters()).dtype == torch.bfloat16
    assert "without native bf16" in caplog.text


def test_int8_weights_replace_the_linear_weights_and_keep_the_logits_close():
    model = make_causal_lm(64, seed=3)
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        reference = model(ids).logits.float()
    assert precision.apply(model, "float32", "int8", name="tiny") == "float32"
    weight = model.model.layers[0].mlp.down_proj.weight
    assert weight.qdata.dtype == torch.int8  # torchao's Int8Tensor holds int8 data
    with torch.no_grad():
        quantized = model(ids).logits.float()
    assert torch.allclose(quantized, reference, atol=0.05, rtol=0.05)
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
