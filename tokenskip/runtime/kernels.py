"""Triton kernels for the decode hot path, each beside its pure-torch reference.

- :func:`rms_norm`: RMSNorm, ``x * rsqrt(mean(x²) + eps) * w``, computed in fp32.
- :func:`add_rms_norm`: the residual add fused with the next RMSNorm (returns both the sum,
  which is the new residual stream, and its norm): one read of each input instead of three.
- :func:`swiglu`: ``silu(gate) * up``, the Llama MLP's activation.
- :func:`rope`: rotary position embedding in Hugging Face's ``rotate_half`` layout.

Every public function dispatches: the Triton kernel for CUDA tensors when Triton is present,
the reference otherwise (CPU serving, and machines without Triton). ``TRITON_INTERPRET=1``
runs the kernels on CPU through Triton's interpreter, which is how the parity tests run in
CI; call the ``*_triton`` functions directly there.
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: the references below serve wherever it is missing.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def triton_usable(t: torch.Tensor) -> bool:
    """Whether the Triton path serves ``t``: CUDA and Triton, or the interpreter on CPU."""
    return triton is not None and (t.is_cuda or INTERPRET)


# ---------------------------------------------------------------------------- references


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama/HF RMSNorm: normalize in fp32, scale by the weight, return in x's dtype."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)


def add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    total = x + residual
    return rms_norm_ref(total, weight, eps), total


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(gate) * up


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (..., seq, dim); cos/sin broadcastable to it (HF's ``apply_rotary_pos_emb``)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# ---------------------------------------------------------------------------- kernels

if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        X, W, Y, R, x_stride, r_stride, n, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        x = tl.load(X + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:  # x + residual, written back as the new residual stream
            r = tl.load(R + row * r_stride + cols, mask=mask, other=0.0).to(tl.float32)
            x = x + r
            tl.store(R + row * r_stride + cols, x.to(R.dtype.element_ty), mask=mask)
            x = x.to(R.dtype.element_ty).to(tl.float32)  # round like the reference's sum
        var = tl.sum(x * x, axis=0) / n
        normed = (x / tl.sqrt(var + eps)).to(Y.dtype.element_ty)
        w = tl.load(W + cols, mask=mask, other=0.0)
        tl.store(
            Y + row * x_stride + cols,
            (normed.to(tl.float32) * w.to(tl.float32)).to(Y.dtype.element_ty),
            mask=mask,
        )

    @triton.jit
    def _swiglu_kernel(G, U, Y, numel, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(Y.dtype.element_ty).to(tl.float32)
        tl.store(Y + offs, (silu * u).to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_kernel(X, C, S, Y, x_stride, c_stride, half, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < half
        x1 = tl.load(X + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(X + row * x_stride + half + cols, mask=mask, other=0.0).to(tl.float32)
        c1 = tl.load(C + row * c_stride + cols, mask=mask, other=0.0).to(tl.float32)
        c2 = tl.load(C + row * c_stride + half + cols, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.load(S + row * c_stride + cols, mask=mask, other=0.0).to(tl.float32)
        s2 = tl.load(S + row * c_stride + half + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * x_stride + cols, (x1 * c1 - x2 * s1).to(Y.dtype.element_ty), mask=mask)
        tl.store(
            Y + row * x_stride + half + cols, (x2 * c2 + x1 * s2).to(Y.dtype.element_ty), mask=mask
        )


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).contiguous()


def _rms_rows(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the RMSNorm kernel over the rows of ``x``; with ``residual``, on x + residual
    (returned as the second value, the new residual stream)."""
    rows = _rows(x)
    total = None if residual is None else _rows(residual).clone()  # receives x + residual
    out = torch.empty_like(rows)
    n = rows.shape[-1]
    res = rows if total is None else total  # an unused pointer when there is no residual
    _rms_norm_kernel[(rows.shape[0],)](
        rows,
        weight.contiguous(),
        out,
        res,
        rows.stride(0),
        res.stride(0),
        n,
        eps,
        HAS_RES=total is not None,
        BLOCK=triton.next_power_of_2(n),
    )
    return out.view(x.shape), None if total is None else total.view(x.shape)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_rows(x, weight, eps, None)[0]


def add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    normed, total = _rms_rows(x, weight, eps, residual)
    assert total is not None
    return normed, total


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    g, u = gate.contiguous(), up.contiguous()
    out = torch.empty_like(g)
    numel = g.numel()
    block = 1024
    _swiglu_kernel[(triton.cdiv(numel, block),)](g, u, out, numel, BLOCK=block)
    return out


def rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"rotary dimension must be even, got {dim}")
    rows = _rows(x)
    c = _rows(cos.expand_as(x).to(x.dtype))
    s = _rows(sin.expand_as(x).to(x.dtype))
    out = torch.empty_like(rows)
    half = dim // 2
    _rope_kernel[(rows.shape[0],)](
        rows, c, s, out, rows.stride(0), c.stride(0), half, BLOCK=triton.next_power_of_2(half)
    )
    return out.view(x.shape)


# ---------------------------------------------------------------------------- dispatch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm_triton(x, weight, eps) if triton_usable(x) else rms_norm_ref(x, weight, eps)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if triton_usable(x):
        return add_rms_norm_triton(x, residual, weight, eps)
    return add_rms_norm_ref(x, residual, weight, eps)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return swiglu_triton(gate, up) if triton_usable(gate) else swiglu_ref(gate, up)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return rope_triton(x, cos, sin) if triton_usable(x) else rope_ref(x, cos, sin)


# ---------------------------------------------------------------------------- the model


def install(model: torch.nn.Module) -> int:
    """Route a Llama-family model's RMSNorms and SwiGLU MLPs through the dispatchers above.

    On CUDA that is the Triton path; elsewhere the references, which compute exactly what the
    model's own modules do. Returns how many modules were rerouted (0 for an unknown family).
    """
    import types

    patched = 0
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):

            def norm_forward(self: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
                return rms_norm(hidden, self.weight, self.variance_epsilon)

            module.forward = types.MethodType(norm_forward, module)
            patched += 1
        elif (
            name.endswith("MLP")
            and all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj"))
            and getattr(getattr(module, "config", None), "hidden_act", None) == "silu"
        ):

            def mlp_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
                return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))

            module.forward = types.MethodType(mlp_forward, module)
            patched += 1
    return patched
