"""Tokenizer edge: text in, token ids with character offsets out.

Everything inside the core works on ids and offsets; this module is the one place that talks
to Hugging Face tokenizers. Only fast (Rust) tokenizers carry offsets, so only they are
accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenskip.errors import InvalidInputError


@dataclass(frozen=True)
class Encoding:
    """Token ids of a text and the ``[start, end)`` character span each one covers."""

    ids: list[int]
    offsets: list[tuple[int, int]]


class TextTokenizer:
    """A fast Hugging Face tokenizer seen only through ids and offsets.

    Special tokens are never added: counts are of the text itself, which is what a keep
    ratio is measured on.
    """

    def __init__(self, hf_tokenizer: Any, name: str = ""):
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise InvalidInputError(
                f"tokenizer {type(hf_tokenizer).__name__} is not a fast tokenizer; tokenskip "
                "needs character offsets (load it with use_fast=True)"
            )
        self.hf = hf_tokenizer
        self.name = name or getattr(hf_tokenizer, "name_or_path", "") or type(hf_tokenizer).__name__
        self._backend = backend

    def encode(self, text: str) -> Encoding:
        enc = self._backend.encode(text, add_special_tokens=False)
        return Encoding(ids=list(enc.ids), offsets=[tuple(o) for o in enc.offsets])

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._backend.encode(text, add_special_tokens=False).ids)

    def piece(self, token_id: int) -> str:
        """The text one token decodes to on its own (leading space included)."""
        return self._backend.decode([token_id], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r})"


def as_text_tokenizer(tokenizer: Any) -> TextTokenizer:
    """Accept either a :class:`TextTokenizer` or a fast Hugging Face tokenizer."""
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    return TextTokenizer(tokenizer)
