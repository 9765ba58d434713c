"""Tokenizer edge: text in, token ids with character offsets out.

Everything inside the core works on ids and offsets; this module is the one place that talks
to Hugging Face tokenizers. Only fast (Rust) tokenizers carry offsets, so only they are
accepted.

Byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3, Qwen2) split text with a regex into
pre-tokens and encode each pre-token on its own. For those, :class:`TextTokenizer` splits
with the same regex in Python and memoizes each pre-token's ids, which gives the tokenizer's
exact ids and offsets several times faster than a full encode on repetitive text (prompts,
JSON, logs). Texts it cannot prove equal (added tokens such as ``<|im_end|>`` inside, a
normalizer that would change them) go through the tokenizer itself.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import regex

from tokenskip.errors import InvalidInputError

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MAX_CACHED_PIECES = 200_000


@dataclass(frozen=True)
class Encoding:
    """Token ids of a text and the ``[start, end)`` character span each one covers."""

    ids: list[int]
    starts: np.ndarray = field(repr=False)
    """``(num_tokens,)`` int64 first character of each token."""
    ends: np.ndarray = field(repr=False)
    """``(num_tokens,)`` int64 one past the last character of each token."""

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return list(zip(self.starts.tolist(), self.ends.tolist()))

    @classmethod
    def from_offsets(cls, ids: list[int], offsets: Any) -> Encoding:
        spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        return cls(list(ids), spans[:, 0].copy(), spans[:, 1].copy())


class _PieceCodec:
    """Pre-token regex + memoized per-piece encodings: exact for byte-level BPE."""

    def __init__(self, backend: Any, pattern: str, check_nfc: bool, added: list[str]):
        self._backend = backend
        self._split = regex.compile(pattern)
        self._check_nfc = check_nfc
        self._added = regex.compile("|".join(regex.escape(a) for a in added)) if added else None
        self._pieces: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        self._lengths: dict[str, int] = {}

    def usable(self, text: str) -> bool:
        if self._added is not None and self._added.search(text):
            return False
        return not self._check_nfc or unicodedata.is_normalized("NFC", text)

    def _piece(self, piece: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        hit = self._pieces.get(piece)
        if hit is None:
            enc = self._backend.encode(piece, add_special_tokens=False)
            hit = (
                tuple(enc.ids),
                tuple(o[0] for o in enc.offsets),
                tuple(o[1] for o in enc.offsets),
            )
            if len(self._pieces) >= MAX_CACHED_PIECES:
                self._pieces.clear()
                self._lengths.clear()
            self._pieces[piece] = hit
            self._lengths[piece] = len(hit[0])
        return hit

    def count(self, text: str) -> int:
        pieces = self._split.findall(text)
        lengths = self._lengths
        try:
            return sum(map(lengths.__getitem__, pieces))  # the common case, at C speed
        except KeyError:
            for piece in pieces:
                if piece not in lengths:
                    self._piece(piece)
            return sum(len(self._piece(p)[0]) for p in pieces)

    def encode(self, text: str) -> Encoding:
        matches = list(self._split.finditer(text))
        hits = [self._piece(m.group()) for m in matches]
        lengths = np.fromiter((len(h[0]) for h in hits), dtype=np.int64, count=len(hits))
        num_tokens = int(lengths.sum())
        ids = list(itertools.chain.from_iterable(h[0] for h in hits))
        base = np.repeat(
            np.fromiter((m.start() for m in matches), dtype=np.int64, count=len(matches)), lengths
        )
        starts = base + np.fromiter(
            itertools.chain.from_iterable(h[1] for h in hits), dtype=np.int64, count=num_tokens
        )
        ends = base + np.fromiter(
            itertools.chain.from_iterable(h[2] for h in hits), dtype=np.int64, count=num_tokens
        )
        return Encoding(ids, starts, ends)


def _piece_codec(backend: Any) -> _PieceCodec | None:
    """A fast exact path for a byte-level BPE tokenizer, or None if its pipeline differs."""
    try:
        spec = json.loads(backend.to_str())
    except Exception:  # noqa: BLE001 - any tokenizer we cannot read just takes the slow path
        return None
    model, pre, norm = (
        spec.get("model") or {},
        spec.get("pre_tokenizer") or {},
        spec.get("normalizer"),
    )
    # The post-processor is not checked: special tokens are never added, and offset trimming
    # works token by token, so a piece encodes the same alone as inside the whole text.
    if model.get("type") != "BPE" or model.get("dropout"):
        return None
    check_nfc = False
    if norm is not None:
        if norm.get("type") != "NFC":
            return None
        check_nfc = True
    pattern = None
    if (
        pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space")
    ):
        pattern = GPT2_PATTERN
    elif pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if (
            len(steps) == 2
            and steps[0].get("type") == "Split"
            and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert")
            and "Regex" in (steps[0].get("pattern") or {})
            and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space")
        ):
            pattern = steps[0]["pattern"]["Regex"]
    if pattern is None:
        return None
    added = [t["content"] for t in spec.get("added_tokens") or [] if t.get("content")]
    try:
        return _PieceCodec(backend, pattern, check_nfc, added)
    except regex.error:
        return None


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
        self._codec = _piece_codec(backend)

    @property
    def has_fast_path(self) -> bool:
        """True when ids come from the memoized pre-token path (byte-level BPE)."""
        return self._codec is not None

    def encode(self, text: str) -> Encoding:
        if self._codec is not None and self._codec.usable(text):
            return self._codec.encode(text)
        enc = self._backend.encode(text, add_special_tokens=False)
        return Encoding.from_offsets(enc.ids, enc.offsets)

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self._codec is not None and self._codec.usable(text):
            return self._codec.count(text)
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


def chat_prompt_tokens(tokenizer: TextTokenizer, messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of chat ``messages`` as the model sees them: its chat template with the
    generation prompt where the tokenizer has one, else each message's text plus 4 tokens of
    framing (the usual ``<|role|> ... <|end|>`` cost). The one chat-prompt counter of the
    project (gateway batching, evaluation, trainers)."""

    def text(m: dict[str, Any]) -> str:
        content = m.get("content")
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else ""

    hf = getattr(tokenizer, "hf", None)
    if hf is not None and getattr(hf, "chat_template", None):
        chat = [{"role": m["role"], "content": text(m)} for m in messages]
        ids = hf.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return len(ids)
    return sum(tokenizer.count(text(m)) + 4 for m in messages)
