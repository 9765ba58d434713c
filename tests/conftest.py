"""Shared fixtures: the real embedded model (loaded once per session) and sample reasoning."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch

# Triton kernels run in Triton's interpreter on machines without CUDA; the variable is read
# when a kernel is defined, so it must be set before anything imports tokenskip.runtime.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tokenskip.models import load_model
from tokenskip.tokens import TextTokenizer

SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"

# Five GSM8K-style solutions (calculator annotations stripped) so tests never need the data set.
SOLUTIONS = [
    "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72",
    "Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.\n#### 10",
    "In the beginning, Betty has only 100 / 2 = $50.\nBetty's grandparents gave her 15 * 2 = $30.\n"
    "This means, Betty needs 100 - 50 - 30 - 15 = $5 more.\n#### 5",
    "Maila read 12 x 2 = 24 pages today.\nSo she was able to read a total of 12 + 24 = 36 pages since "
    "yesterday.\nThere are 120 - 36 = 84 pages left to be read.\nSince she wants to read half of the "
    "remaining pages tomorrow, then she should read 84/2 = 42 pages.\n#### 42",
    "He writes each friend 3*2=6 pages a week\nSo he writes 6*2=12 pages every week\nThat means he "
    "writes 12*52=624 pages a year\n#### 624",
]


def strip_calculator(text: str) -> str:
    return re.sub(r"<<[^>]*>>", "", text)


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (first run converts the GGUF into the cache)."""
    return load_model("smollm2")


@pytest.fixture(scope="session")
def tokenizer(smol) -> TextTokenizer:
    return TextTokenizer(smol.tokenizer, name="smollm2")


@pytest.fixture(scope="session")
def solutions() -> list[str]:
    """Up to 12 GSM8K train solutions: the shared data set when present, else the inline five."""
    path = SHARED_GSM8K / "train.jsonl"
    if path.is_file():
        with path.open() as f:
            return [strip_calculator(json.loads(line)["answer"]) for _, line in zip(range(12), f)]
    return list(SOLUTIONS)


@pytest.fixture
def network_attempts(monkeypatch) -> list[tuple]:
    """Refuse (and record) every DNS lookup and connection, so a test can assert none happened.

    The hub is in offline mode as under ``make test`` (HF_HUB_OFFLINE=1), whatever the caller's
    environment says, so the result does not depend on how pytest was started.
    """
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts
