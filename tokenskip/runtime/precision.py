"""Precision and weight format of a local model: ``dtype`` and ``weights``.

- ``dtype``: ``float32`` (the default, as before), ``bfloat16``, or ``auto``, which picks
  bfloat16 where the hardware computes it natively (a CUDA device, or a CPU with
  AVX512-BF16 or AMX) and float32 elsewhere: on a CPU without native bf16 arithmetic, bf16
  halves the memory and speeds decoding up but makes prefill several times slower, so it is
  allowed when asked for, with one log line saying so. ``auto`` is not the default yet:
  the same config would then answer differently on two machines, and bf16's cost in
  answer quality is not measured yet (``reports/local_quant.md`` says what is).
- ``weights``: ``none`` (the dtype's own weights) or ``int8``: weight-only int8 of every
  linear layer by torchao (``Int8WeightOnlyConfig``), a well-kept kernel library rather
  than a home-made one. int4 is not offered: torchao 0.18's int4 CPU path needs a kernel
  package (``mslk``) that is not installed here, and a mode without a kernel is refused,
  never silently expanded.

:func:`check` validates both names (a one-line error naming the setting and what is
available); :func:`apply` loads them onto a model.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16")
WEIGHTS = ("none", "int8")
UNAVAILABLE_WEIGHTS = {
    "int4": "torchao's int4 CPU kernels need the mslk package, which is not installed",
}
"""Weight formats named by users that have no kernel here, and why."""


def check(dtype: str, weights: str) -> None:
    """A ValueError naming the setting and what is available, for an unknown or
    unavailable ``dtype`` or ``weights``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if weights in UNAVAILABLE_WEIGHTS:
        raise ValueError(
            f"weights {weights!r} cannot run here ({UNAVAILABLE_WEIGHTS[weights]}); "
            f"available: {', '.join(WEIGHTS)}"
        )
    if weights not in WEIGHTS:
        raise ValueError(f"weights {weights!r} is not one of {', '.join(WEIGHTS)}")


def native_bf16(device: str = "cpu", flags: set[str] | None = None) -> bool:
    """Whether ``device`` computes bfloat16 natively (``flags``: the CPU's, for tests;
    read from /proc/cpuinfo by default)."""
    if device.startswith("cuda"):
        return True
    if flags is None:
        flags = cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve(dtype: str, device: str = "cpu", flags: set[str] | None = None) -> str:
    """The dtype ``auto`` stands for on ``device``: bfloat16 where it is native, else
    float32; any other name as it is."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bf16(device, flags) else "float32"


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def apply(model: Any, dtype: str, weights: str, *, name: str, device: str = "cpu") -> str:
    """``model`` cast to ``dtype`` (resolved from ``auto``) with ``weights`` applied, in
    place; returns the resolved dtype's name."""
    check(dtype, weights)
    chosen = resolve(dtype, device)
    if chosen == "bfloat16" and not native_bf16(device):
        log.warning(
            "%s: bfloat16 on a CPU without native bf16 arithmetic: less memory and faster "
            "decoding, but prefill several times slower than float32 (dtype auto picks float32 "
            "here)",
            name,
        )
    model.to(torch_dtype(chosen))
    if weights == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())
    return chosen
