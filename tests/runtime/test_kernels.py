"""Triton kernels against their pure-torch references, over odd shapes and each dtype.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in tests/conftest.py
before anything imports triton); on a GPU machine the same tests compile them for real.
"""

import pytest
import torch

from tokenskip.runtime import kernels as k

pytestmark = pytest.mark.skipif(
    k.triton is None or not (k.INTERPRET or torch.cuda.is_available()),
    reason="needs triton with CUDA or TRITON_INTERPRET=1",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
SHAPES = [(1, 7), (3, 5, 37), (2, 130), (4, 576), (1, 1, 1000)]


def close(a, b, dtype):
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a.float(), b.float(), rtol=TOL[dtype], atol=TOL[dtype])


def rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm(shape, dtype):
    x, w = rand(shape, dtype, 0), rand(shape[-1:], dtype, 1)
    close(k.rms_norm_triton(x, w, 1e-5), k.rms_norm_ref(x, w, 1e-5), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_add_rms_norm(shape, dtype):
    x, r, w = rand(shape, dtype, 0), rand(shape, dtype, 2), rand(shape[-1:], dtype, 1)
    r_before = r.clone()
    got, got_sum = k.add_rms_norm_triton(x, r, w, 1e-6)
    want, want_sum = k.add_rms_norm_ref(x, r, w, 1e-6)
    close(got_sum, want_sum, dtype)
    close(got, want, dtype)
    assert torch.equal(r, r_before)  # inputs are not modified


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(3, 1537)])
def test_swiglu(shape, dtype):
    g, u = rand(shape, dtype, 3), rand(shape, dtype, 4)
    close(k.swiglu_triton(g, u), k.swiglu_ref(g, u), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (2, 3, 5, 64), (1, 9, 7, 34)])
def test_rope(shape, dtype):
    x = rand(shape, dtype, 5)
    batch, _, seq, dim = shape
    angles = rand((batch, 1, seq, dim), torch.float32, 6)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    close(k.rope_triton(x, cos, sin), k.rope_ref(x, cos, sin), dtype)


def test_rope_refuses_an_odd_dimension():
    x = rand((1, 1, 2, 7), torch.float32, 0)
    with pytest.raises(ValueError, match="even"):
        k.rope_triton(x, x, x)


def test_reference_matches_the_model_rmsnorm(smol):
    """The reference is the model's own RMSNorm, so the Triton path is held to it."""
    layer = smol.model.model.layers[0].input_layernorm
    x = rand((2, 3, layer.weight.shape[0]), torch.float32, 7).cpu()
    with torch.inference_mode():
        torch.testing.assert_close(
            k.rms_norm_ref(x, layer.weight, layer.variance_epsilon), layer(x)
        )


def test_dispatch_uses_the_reference_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.setattr(k, "INTERPRET", False)
    x = torch.randn(2, 8)
    assert k.triton_usable(x) == x.is_cuda
    torch.testing.assert_close(k.swiglu(x, x), k.swiglu_ref(x, x))


@pytest.mark.parametrize("interpret", [False, True])
def test_an_installed_model_matches_the_original(interpret, monkeypatch):
    """Rerouted through the dispatchers, the model computes the same logits: exactly on the
    reference path (CPU serving), within fp32 tolerance through the Triton kernels."""
    from tokenskip.models import load_model

    monkeypatch.setattr(k, "INTERPRET", interpret)
    fresh = load_model("smollm2")
    ids = torch.tensor([fresh.tokenizer.encode("Two plus three is")])
    with torch.inference_mode():
        want = fresh.model(ids).logits
        assert k.install(fresh.model) == 2 * 30 + 1 + 30  # 2 norms per layer, final norm, MLPs
        got = fresh.model(ids).logits
    if interpret:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    else:
        assert torch.equal(got, want)
