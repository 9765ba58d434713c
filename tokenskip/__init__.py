"""tokenskip: make LLM reasoning cheaper without losing answers.

The compression core. ``compress`` keeps about γ of a text's tokens (target tokenizer) by
word-level importance; ``compress_context`` spends that budget on the documents a request
is about, coarse to fine; ``compress_cot`` does the same to the reasoning of a chain of thought
and leaves its final answer intact. Importing this package loads no model.
"""

from tokenskip.compress import (
    CompressionResult,
    ContextCompressionResult,
    CotCompressionResult,
    check_ratio,
    compress,
    compress_context,
    compress_cot,
)
from tokenskip.cot import CotParts, split_cot
from tokenskip.errors import InvalidInputError, ModelNotFoundError, TokenskipError
from tokenskip.force import MATH, NONE, ForceKeep
from tokenskip.models import DEFAULT_MODEL, LoadedModel, load_model, load_tokenizer
from tokenskip.scorers import HeuristicScorer, Scorer, SelfInfoScorer, TokenClassifierScorer
from tokenskip.tokens import TextTokenizer

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "MATH",
    "NONE",
    "CompressionResult",
    "ContextCompressionResult",
    "CotCompressionResult",
    "CotParts",
    "ForceKeep",
    "HeuristicScorer",
    "InvalidInputError",
    "LoadedModel",
    "ModelNotFoundError",
    "Scorer",
    "SelfInfoScorer",
    "TextTokenizer",
    "TokenClassifierScorer",
    "TokenskipError",
    "check_ratio",
    "compress",
    "compress_context",
    "compress_cot",
    "load_model",
    "load_tokenizer",
    "split_cot",
]


def __getattr__(name: str):
    """``tokenskip.wrap``: the SDK wrapper of the gateway's room (``tokenskip.proxy.api.sdk``),
    imported only when asked for, so importing the core loads no gateway."""
    if name == "wrap":
        from importlib import import_module

        return import_module("tokenskip.proxy.api.sdk").wrap
    raise AttributeError(f"module 'tokenskip' has no attribute {name!r}")
