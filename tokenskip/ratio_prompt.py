"""The TokenSkip ratio-prompt format, shared by training, serving and evaluation.

A TokenSkip-tuned model reads ``question + DELIM + γ + DELIM`` and answers with a chain of
thought compressed to about γ; at γ = 1.0 nothing is appended (Xia et al. 2025). DELIM is the
tokenizer's end-of-turn token by default (the paper used ``<|eot_id|>`` for LLaMA-3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenskip.compress import check_ratio
from tokenskip.errors import InvalidInputError

ADAPTER_META = "tokenskip.json"
"""Beside a TokenSkip adapter's (or merged model's) weights: its delimiter and provenance."""


def delimiter_in(directory: str | Path | None) -> str | None:
    """The TokenSkip delimiter a directory's ``tokenskip.json`` declares; None if it has none
    (a model or adapter not trained with the ratio prompt). The one reader of that file's
    delimiter (the local runtime, the gateway and ``tokenskip eval`` use it)."""
    if not directory:
        return None
    meta_file = Path(directory) / ADAPTER_META
    if not meta_file.is_file():
        return None
    return json.loads(meta_file.read_text()).get("delimiter")


def format_ratio(ratio: float) -> str:
    """γ as written in prompts: shortest decimal form, e.g. ``0.5``, ``0.75``."""
    return f"{check_ratio(ratio):g}"


def ratio_suffix(ratio: float, delimiter: str) -> str:
    """What is appended to the question for γ (empty at γ = 1.0)."""
    if not delimiter:
        raise InvalidInputError("the TokenSkip delimiter must be a non-empty string")
    if check_ratio(ratio) == 1.0:
        return ""
    return f"{delimiter}{format_ratio(ratio)}{delimiter}"


def with_ratio(question: str, ratio: float, delimiter: str) -> str:
    return question + ratio_suffix(ratio, delimiter)


def default_delimiter(hf_tokenizer: Any) -> str:
    """The end-of-turn token of a tokenizer (``eos_token``), checked to encode as one token."""
    delimiter = getattr(hf_tokenizer, "eos_token", None)
    if not delimiter:
        raise InvalidInputError(
            "this tokenizer has no end-of-turn (eos) token; pass an explicit delimiter"
        )
    check_delimiter(hf_tokenizer, delimiter)
    return delimiter


def check_delimiter(hf_tokenizer: Any, delimiter: str) -> None:
    """Refuse a delimiter the tokenizer cannot encode and decode back unchanged."""
    if not delimiter:
        raise InvalidInputError("the TokenSkip delimiter must be a non-empty string")
    try:
        ids = hf_tokenizer.encode(delimiter, add_special_tokens=False)
    except (TypeError, ValueError) as exc:  # e.g. a lone surrogate the tokenizer refuses
        raise InvalidInputError(f"delimiter {delimiter!r} cannot be encoded: {exc}") from None
    if not ids or hf_tokenizer.decode(ids) != delimiter:
        raise InvalidInputError(
            f"delimiter {delimiter!r} does not survive this tokenizer (encodes to {ids}); "
            "choose one of its special tokens"
        )
