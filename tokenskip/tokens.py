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

Counting a long text goes further for the pre-token regexes whose line breaks are known
(GPT-2's, and the Qwen2 / Llama 3 one): the text is cut at newlines where no pre-token can
span the cut, and each line's count is memoized. The count is still exact; a text whose
lines were seen before (the same tool output on the next turn of an agent loop, or pretty
JSON, whose lines repeat) costs a split and a dictionary look-up per line.
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
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = QWEN2_PATTERN.replace(r"\p{N}|", r"\p{N}{1,3}|", 1)
NEWLINE_CUTS = {
    GPT2_PATTERN: "before_newline",
    QWEN2_PATTERN: "after_newline",
    LLAMA3_PATTERN: "after_newline",
}
"""Where a pre-token regex can be cut at a newline and count the same on both sides.

``before_newline``: no GPT-2 pre-token holds a non-space character and the newline after
it (the newline starts a whitespace pre-token), so a cut before a newline that follows a
non-space character is safe. ``after_newline``: the Qwen2 / Llama 3 regex ends a pre-token
at a newline (punctuation and spaces take the newlines after them, letters and digits stop
before it) unless only spaces lead to a further newline, so a cut after a newline followed
by a line that holds a non-space character is safe. The tests check both against the
tokenizer."""
MAX_CACHED_PIECES = 200_000
MAX_CACHED_LINES = 100_000
MAX_CACHED_LINE_CHARS = 8_000_000
"""The line memo is emptied when it would hold more lines or characters than these."""
MIN_CUT_CHARS = 2_000
"""Shorter texts are counted whole: cutting them saves nothing."""


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
        self._cut = NEWLINE_CUTS.get(pattern)
        self._lines: dict[str, int] = {}
        """Line → tokens of the line with the newline on its cut side (``"\\n" + line`` or
        ``line + "\\n"``), only lines next to which that cut is safe; and chunks of several
        lines between safe cuts → their tokens."""
        self._line_chars = 0

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
        if self._cut is None or len(text) < MIN_CUT_CHARS or "\n" not in text:
            return self._count_pieces(text)
        lines = text.split("\n")
        first, middle, last = lines[0], lines[1:-1], lines[-1]
        # A middle line is counted with its newline on the cut side ("\n" + line, or
        # line + "\n"), memoized only if that cut is safe; the two ends are checked here.
        if self._cut == "before_newline":
            is_safe, ends = _ends_in_non_space, (first, "\n" + last)
            is_end_safe = is_safe(first)
        else:
            is_safe, ends = _holds_non_space, (first + "\n", last)
            is_end_safe = not last or is_safe(last)
        if not is_end_safe:
            return self._count_lines(lines)
        known = self._lines
        edges = self._count_pieces(ends[0]) + self._count_pieces(ends[1])
        try:  # the common case, at C speed: every line seen before
            return sum(map(known.__getitem__, middle)) + edges
        except KeyError:
            pass
        new = [line for line in dict.fromkeys(middle) if line not in known]
        if not all(map(is_safe, new)):
            return self._count_lines(lines)
        before = self._cut == "before_newline"
        for line in new:  # first sight: each new line counted once
            self._remember(line, self._count_pieces("\n" + line if before else line + "\n"))
        try:
            return sum(map(known.__getitem__, middle)) + edges
        except KeyError:  # cleared by another thread meanwhile
            return self._count_lines(lines)

    def _count_lines(self, lines: list[str]) -> int:
        """Tokens of ``"\\n".join(lines)``, counted chunk by chunk between the safe cuts."""
        before = self._cut == "before_newline"
        total, start = 0, 0
        for k in range(1, len(lines)):
            if _ends_in_non_space(lines[k - 1]) if before else _holds_non_space(lines[k]):
                total += self._count_chunk(lines, start, k)
                start = k
        return total + self._count_chunk(lines, start, len(lines))

    def _count_chunk(self, lines: list[str], start: int, end: int) -> int:
        """Tokens of ``lines[start:end]`` with the newline that joins them to their
        neighbours on the safe side, memoized: a single line under its own text where the
        cut next to it is safe, several lines under their joined text (which holds a
        newline, so no line can be mistaken for it)."""
        before = self._cut == "before_newline"
        lead = "\n" if before and start > 0 else ""
        tail = "\n" if not before and end < len(lines) else ""
        if end - start == 1:
            line = lines[start]
            if not (lead or tail):
                return self._count_pieces(line)
            key, chunk = line, lead + line + tail
            is_safe = _ends_in_non_space(line) if before else _holds_non_space(line)
        else:
            key = chunk = lead + "\n".join(lines[start:end]) + tail
            is_safe = True
        hit = self._lines.get(key)
        if hit is None:
            hit = self._count_pieces(chunk)
            if is_safe:
                self._remember(key, hit)
        return hit

    def _remember(self, line: str, num_tokens: int) -> None:
        if (
            len(self._lines) >= MAX_CACHED_LINES
            or self._line_chars + len(line) > MAX_CACHED_LINE_CHARS
        ):
            self._lines.clear()
            self._line_chars = 0
        self._lines[line] = num_tokens
        self._line_chars += len(line)

    def _count_pieces(self, text: str) -> int:
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


_SPACE = regex.compile(r"\s")
_LINE_START = regex.compile(r"[^\S\r\n]*\S")


def _ends_in_non_space(line: str) -> bool:
    """No GPT-2 pre-token spans the newline after ``line``."""
    return bool(line) and not _SPACE.match(line[-1])


def _holds_non_space(line: str) -> bool:
    """No Qwen2 / Llama 3 pre-token spans the newline before ``line`` (a non-space
    character comes before any line break)."""
    return _LINE_START.match(line) is not None


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
        """Exact tokens of ``text``; long texts are counted line by line, lines memoized."""
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
