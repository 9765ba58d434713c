"""Prompt compression for chat messages: context is compressed, instructions are not.

Each text (a message's string content, or each of its text parts) is judged by its own role
and content, never by where it stands in the conversation, so a message compresses the same
way on every turn and the conversation's prefix stays byte-identical for provider prompt
caches:

- ``tool`` / ``function`` messages are tool outputs: lossless transforms only by default
  (JSON minified or as a table, whitespace, repeated lines counted); ``tool_ratio`` also
  drops words.
- ``user`` messages are split into blocks at blank lines. Long blocks that are not a
  request (no question, no imperative opening), and runs of short ones long enough together
  (the paragraphs of one pasted document), are *context* - a pasted document, retrieved
  passages - and get the lossless transforms, and words dropped at ``prompt_ratio`` (0.5 by
  default) with the meaning guards on; text inside explicit document markup
  (``<document>``, ``<context>``, ...) is context whatever its size. Everything else is the
  user's request, an instruction. When the context holds two or more documents (document
  markup, or separate blocks) and a request that some serve better than others, they are
  ranked against it, coarse to fine (:mod:`tokenskip.relevance`), within
  ``document_ratio`` (0.3 by default) of the message: the relevant kept whole, the next
  shortened, the rest dropped with a marker naming them. A request that needs them all
  ("summarize", "compare") spreads ``prompt_ratio`` over them, and a message without a
  request is compressed without one and says so (``relevance: spread-no-request``).
- ``system`` / ``developer`` messages are instructions; only blocks inside explicit document
  markup are context. ``instruction_ratio`` compresses instructions too (off by default).
- ``assistant`` messages and fenced code are never changed, nor (unless the policy's
  ``cache_safe`` is off) content marked ``cache_control`` and every message up to the last
  such breakpoint.

Nothing is tokenized unless it is a candidate for compression: the upstream's usage gives
the prompt's size, and a part's saving is counted in the target tokenizer on that part
alone.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tokenskip.compress import compress
from tokenskip.force import ForceKeep
from tokenskip.guards import GUARDS, NO_GUARDS
from tokenskip.lossless import lossless
from tokenskip.relevance import (
    TAG,
    document_spans,
    markup_spans,
    replace_spans,
    select,
    selection_mode,
)
from tokenskip.scorers.base import Scorer
from tokenskip.tokens import TextTokenizer

_FENCED = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_DOCUMENT = re.compile(
    r"<(?P<tag>document|documents|doc|context|passage|passages|article|source|search_results?)"
    r"\b[^>]*>(?P<body>.*?)</(?P=tag)>",
    re.DOTALL | re.IGNORECASE,
)
_BLOCK = re.compile(r"\n[ \t]*\n")
_REQUEST_START = re.compile(
    r"(?i)^\W*(?:please|can you|could you|would you|will you|i want|i need|i'd like|help|"
    r"write|explain|summari[sz]e|answer|tell|list|give|make|create|translate|rewrite|fix|"
    r"find|show|describe|compare|what|why|how|who|when|where|which|is|are|do|does|should)\b"
)

PROMPT_FORCE = ForceKeep(numbers=True, operators=False, tokens=(), answer_line=True)
CHARS_PER_TOKEN = 4
"""English averages about 4 characters per token: a text or block shorter than
``min_tokens`` × 4 characters is left alone without being tokenized."""
MEMO_CHARS = 32_000_000
"""Characters of texts (and their results) the compression memo holds, oldest first out."""


@dataclass
class PartCompression:
    """One text that was changed: where it is, what it was judged to be, what it saved."""

    message: int
    """Index of the message in the request."""
    part: int | None
    """Index of the content part, or None for a string content."""
    kind: str
    """``context``, ``tool_output`` or ``instruction``."""
    method: str
    """``lossless`` (no word dropped) or ``lossy`` (words dropped, guards on or off)."""
    before: str = field(repr=False)
    """The text as the client sent it."""
    after: str = field(repr=False)
    """The text as it goes upstream."""
    transforms: tuple[str, ...] = ()
    """Lossless transforms that changed it (``json``, ``whitespace``, ``repeats``)."""
    forced_ratio: float = 0.0
    """Share of the text the meaning guards held (lossy only)."""
    tokens_before: int | None = None
    """Target-tokenizer tokens of ``before`` (None until :meth:`PromptCompression.count`)."""
    tokens_after: int | None = None
    """Target-tokenizer tokens of ``after``."""
    relevance: str | None = None
    """How the budget met the message's documents (:func:`tokenskip.relevance.plan`):
    ``ranked`` by the request in the same message, ``spread`` over all of them (the request
    needs them all), ``spread-no-request`` (no request found: compressed without a question);
    None where the text held fewer than two documents."""
    num_dropped: int = 0
    """Documents dropped as not relevant to the request (a marker in their place)."""

    @property
    def achieved_ratio(self) -> float:
        if not self.tokens_before or self.tokens_after is None:
            return 1.0
        return self.tokens_after / self.tokens_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "part": self.part,
            "kind": self.kind,
            "method": self.method,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "achieved_ratio": round(self.achieved_ratio, 4),
            "forced_ratio": round(self.forced_ratio, 4),
            "transforms": list(self.transforms),
            **(
                {"relevance": self.relevance, "documents_dropped": self.num_dropped}
                if self.relevance
                else {}
            ),
        }


@dataclass
class PromptCompression:
    """The messages to send and what changed in them."""

    messages: list[dict[str, Any]]
    parts: list[PartCompression] = field(default_factory=list)

    @property
    def saved_tokens(self) -> int:
        """Prompt tokens saved, in the target tokenizer (over the changed parts only)."""
        return sum(
            (p.tokens_before or 0) - (p.tokens_after or 0)
            for p in self.parts
            if p.tokens_after is not None
        )

    @property
    def counted(self) -> bool:
        return all(p.tokens_after is not None for p in self.parts)

    def count(self, tokenizer: TextTokenizer) -> None:
        """Count every changed part before and after. The gateway runs this beside the
        upstream call, so counting a large tool output adds nothing to the latency."""
        for p in self.parts:
            if p.tokens_after is None:
                p.tokens_before = tokenizer.count(p.before)
                p.tokens_after = tokenizer.count(p.after)

    @property
    def num_compressed(self) -> int:
        return len({p.message for p in self.parts})


@dataclass(frozen=True)
class PromptSettings:
    """The policy fields prompt compression reads (see ``CompressionPolicy``)."""

    context_ratio: float | None
    instruction_ratio: float | None
    tool_ratio: float | None
    min_tokens: int
    lossless: bool
    guards: bool
    cache_safe: bool = True
    document_ratio: float | None = None
    """The budget of a message holding several documents and a request they serve unevenly:
    the best documents kept whole, the rest dropped (``ranked`` selection); never looser
    than ``context_ratio``."""

    def ranked_budget(self) -> float | None:
        """The budget of ranked document selection: the lower of the two context ratios."""
        ratios = [r for r in (self.document_ratio, self.context_ratio) if r is not None]
        return min(ratios) if ratios else None


def protected_spans(text: str) -> list[tuple[int, int]]:
    """Spans kept verbatim inside a compressed text: code, URLs and e-mail addresses."""
    return [
        m.span()
        for pattern in (_FENCED, _INLINE_CODE, _URL, _EMAIL)
        for m in pattern.finditer(text)
    ]


def is_request(block: str) -> bool:
    """A block that asks for something: a question or an imperative opening."""
    stripped = block.strip()
    return stripped.endswith("?") or bool(_REQUEST_START.match(stripped))


def context_blocks(text: str, role: str, min_chars: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of ``text`` that are context, by the message's role."""
    spans = [m.span("body") for m in _DOCUMENT.finditer(text)]
    if role != "user":
        return spans
    markup = list(spans)  # a block holding markup is context through its markup alone
    code = [m.span() for m in _FENCED.finditer(text)]
    run: list[int] | None = None  # consecutive short blocks: the paragraphs of one paste

    def close_run() -> None:
        if run is not None and len(text[run[0] : run[1]].strip()) >= min_chars:
            spans.append((run[0], run[1]))

    start = 0
    for m in [*_BLOCK.finditer(text), None]:
        end = m.start() if m else len(text)
        block = text[start:end]
        inside_markup = any(a < end and start < b for a, b in markup)
        in_code = any(a < end and start < b for a, b in code)
        candidate = not inside_markup and not in_code and block.strip() and not is_request(block)
        if candidate and len(block.strip()) >= min_chars:
            close_run()
            run = None
            spans.append((start, end))  # a long block: a document of its own
        elif candidate:
            run = [start, end] if run is None else [run[0], end]
        else:
            close_run()
            run = None
        start = m.end() if m else len(text)
    close_run()
    return sorted(spans)


def _text_parts(message: dict[str, Any], cache_safe: bool = True) -> list[tuple[int | None, str]]:
    """(part index, text) of a message's text content: the string, or each text part
    (content marked ``cache_control`` left out unless ``cache_safe`` is off)."""
    content = message.get("content")
    if isinstance(content, str):
        return [] if cache_safe and message.get("cache_control") else [(None, content)]
    if isinstance(content, list):
        return [
            (i, p["text"])
            for i, p in enumerate(content)
            if isinstance(p, dict)
            and p.get("type") == "text"
            and isinstance(p.get("text"), str)
            and not (cache_safe and p.get("cache_control"))
        ]
    return []


def message_texts(message: dict[str, Any]) -> list[str]:
    """Every text of a message (string content or text parts), for counting."""
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
    return []


def _has_cache_control(message: dict[str, Any]) -> bool:
    if message.get("cache_control"):
        return True
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("cache_control") for p in content
    )


class _Compressor:
    """Compresses one text of one kind with the gateway's tokenizer and scorer."""

    def __init__(self, settings: PromptSettings, tokenizer: TextTokenizer, scorer: Scorer | None):
        self.s, self.tokenizer, self.scorer = settings, tokenizer, scorer

    def lossy(
        self,
        text: str,
        ratio: float,
        data: tuple[tuple[int, int], ...] = (),
        prefer: list[tuple[int, int]] | None = None,
    ) -> tuple[str, float]:
        """``text`` at ``ratio`` (code, URLs, markup tags and compacted JSON verbatim; the
        ``prefer`` spans kept first), and the forced share."""
        if self.scorer is None:
            return text, 0.0
        result = compress(
            text,
            ratio,
            tokenizer=self.tokenizer,
            scorer=self.scorer,
            force=PROMPT_FORCE,
            guards=GUARDS if self.s.guards else NO_GUARDS,
            protect=protected_spans(text) + markup_spans(text) + list(data),
            prefer=prefer or (),
            lossless=False,
        )
        return result.text, result.forced_ratio


def compress_messages(
    messages: list[dict[str, Any]],
    settings: PromptSettings,
    *,
    tokenizer: TextTokenizer,
    scorer: Scorer | None,
    count: bool = True,
    memo: CompressionMemo | None = None,
) -> PromptCompression:
    """The messages with their context compressed; untouched messages are the same objects.

    ``count=False`` leaves the token counts to a later :meth:`PromptCompression.count`.
    ``memo``: where each text's compression is remembered across calls (the gateway's
    registry holds one); None compresses every text afresh.
    A change that does not shorten the text is dropped (judged by characters: a shorter
    text of the same words never takes more tokens)."""
    frozen_until = -1
    if settings.cache_safe:
        frozen_until = max((i for i, m in enumerate(messages) if _has_cache_control(m)), default=-1)
    out = list(messages)
    parts: list[PartCompression] = []
    worker = _Compressor(settings, tokenizer, scorer)
    for index, message in enumerate(messages):
        role = message.get("role")
        if index <= frozen_until or role not in ("system", "developer", "user", "tool", "function"):
            continue
        changed: dict[int | None, str] = {}
        for key, text in _text_parts(message, settings.cache_safe):
            result = (
                memo.get(worker, role, text)
                if memo is not None
                else _compress_text(worker, settings, role, text)
            )
            if result is None:
                continue
            new_text, kind, method, transforms, forced, *selection = result
            if len(new_text) >= len(text):
                continue
            changed[key] = new_text
            part = PartCompression(index, key, kind, method, text, new_text, transforms, forced)
            if selection:
                part.relevance, part.num_dropped = selection
            parts.append(part)
        if changed:
            message = dict(message)
            if None in changed:
                message["content"] = changed[None]
            else:
                content = list(message["content"])
                for key, new_text in changed.items():
                    content[key] = {**content[key], "text": new_text}
                message["content"] = content
            out[index] = message
    done = PromptCompression(out, parts)
    if count:
        done.count(tokenizer)
    return done


class CompressionMemo:
    """Each text's compression, remembered: a conversation resends its earlier turns (an
    agent loop its tool outputs, a chat its pasted documents) on every turn, and a text
    compresses the same way every time (it depends on the text, its role, the settings,
    the tokenizer and the scorer alone), so each is compressed once. Bounded by
    ``max_chars``, least recently used first out; thread-safe."""

    def __init__(self, max_chars: int = MEMO_CHARS):
        self.max_chars = max_chars
        self.chars = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...] | None, int]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, worker: _Compressor, role: str, text: str) -> tuple[Any, ...] | None:
        """The compression of ``text`` (see :func:`_compress_text`), from the memo when it
        was made before."""
        key = (worker.s, worker.tokenizer, worker.scorer, role, text)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return found[0]
            self.misses += 1
        result = _compress_text(worker, worker.s, role, text)
        size = len(text) + (len(result[0]) if result else 0)
        if size > self.max_chars:
            return result
        with self._lock:
            if key not in self._items:
                self._items[key] = (result, size)
                self.chars += size
            while self.chars > self.max_chars:
                _, (_, dropped) = self._items.popitem(last=False)
                self.chars -= dropped
        return result


def _compress_text(
    worker: _Compressor, s: PromptSettings, role: str, text: str
) -> tuple[Any, ...] | None:
    """(new text, kind, method, transforms, forced share[, relevance mode, documents
    dropped]), or None to leave it alone."""
    min_chars = s.min_tokens * CHARS_PER_TOKEN
    if role in ("tool", "function"):
        if not s.lossless and s.tool_ratio is None:
            return None
        if len(text) < min_chars:
            return None
        done = lossless(text) if s.lossless else None
        new, transforms = (done.text, done.transforms) if done else (text, ())
        method, forced = "lossless", 0.0
        if s.tool_ratio is not None and s.tool_ratio < 1.0 and not (done and done.is_data):
            lossy, forced = worker.lossy(new, s.tool_ratio, done.data_spans if done else ())
            if lossy != new:
                new, method = lossy, "lossy"
        return (new, "tool_output", method, transforms, forced) if new != text else None
    if role in ("system", "developer") and s.instruction_ratio is not None:
        if len(text) < min_chars:
            return None
        new, forced = worker.lossy(text, s.instruction_ratio)
        return (new, "instruction", "lossy", (), forced) if new != text else None
    if s.ranked_budget() is None and not s.lossless:
        return None
    if len(text) < min_chars and not _DOCUMENT.search(text):
        return None
    blocks = context_blocks(text, role, min_chars)
    if not blocks:
        return None
    documents = _documents(text, blocks) if worker.scorer is not None else []
    if len(documents) >= 2:
        request = request_text(text, blocks) or None
        ranked = selection_mode(request, len(documents)) == "ranked"
        budget = s.ranked_budget() if ranked else s.context_ratio
        if budget is not None and budget < 1.0:
            return _select_documents(worker, s, budget, text, documents, request)
    pieces, last, transforms, forced_parts, method = [], 0, set(), [], "lossless"
    for start, end in blocks:
        block = text[start:end]
        new, data, is_data = block, (), False
        if s.lossless:
            done = lossless(block)
            new, data, is_data = done.text, done.data_spans, done.is_data
            transforms.update(done.transforms)
        if s.context_ratio is not None and s.context_ratio < 1.0 and not is_data:
            lossy, forced = worker.lossy(new, s.context_ratio, data)
            if lossy != new:
                new, method = lossy, "lossy"
                forced_parts.append(forced)
        pieces.append(text[last:start])
        pieces.append(new)
        last = end
    pieces.append(text[last:])
    new_text = "".join(pieces)
    if new_text == text:
        return None
    order = tuple(t for t in ("json", "whitespace", "repeats") if t in transforms)
    forced = sum(forced_parts) / len(forced_parts) if forced_parts else 0.0
    return new_text, "context", method, order, forced


def _documents(text: str, blocks: list[tuple[int, int]]) -> list[tuple[int, int, str | None]]:
    """The documents of a text's context blocks: the document markup inside a block
    (``<documents><document>...``), else the block itself."""
    out: list[tuple[int, int, str | None]] = []
    for start, end in blocks:
        inner = [(start + a, start + b, label) for a, b, label in document_spans(text[start:end])]
        marked = any(label is not None or b - a < end - start for a, b, label in inner)
        out.extend(inner if marked and len(inner) > 1 else [(start, end, None)])
    return out


def request_text(text: str, blocks: list[tuple[int, int]]) -> str:
    """What of a message is not context: its request (the question the context serves)."""
    request = TAG.sub(" ", replace_spans(text, blocks, [""] * len(blocks)))
    return " ".join(request.split())


def _select_documents(
    worker: _Compressor,
    s: PromptSettings,
    ratio: float,
    text: str,
    documents: list[tuple[int, int, str | None]],
    request: str | None,
) -> tuple[str, str, str, tuple[str, ...], float, str, int] | None:
    """Coarse to fine over a message's documents against ``request``, the rest of the same
    message (:func:`tokenskip.relevance.select`): it depends on the message alone, so it
    stays cache-safe."""
    transforms: set[str] = set()
    forced_parts: list[float] = []

    def shorten(doc: str, ratio: float, prefer: list[tuple[int, int]]) -> str:
        data: tuple[tuple[int, int], ...] = ()
        if s.lossless:
            done = lossless(doc)
            if done.transforms:
                transforms.update(done.transforms)
                doc, data = done.text, done.data_spans
            if done.is_data:
                return doc
        new, forced = worker.lossy(doc, ratio, data, prefer)
        forced_parts.append(forced)
        return new

    selection = select(
        [text[a:b] for a, b, _ in documents],
        request,
        ratio,
        count=worker.tokenizer.count,
        shorten=shorten,
        labels=[label for *_, label in documents],
        total=worker.tokenizer.count(text),
    )
    new_text = replace_spans(text, [(a, b) for a, b, _ in documents], selection.texts)
    if new_text == text:
        return None
    order = tuple(t for t in ("json", "whitespace", "repeats") if t in transforms)
    forced = sum(forced_parts) / len(forced_parts) if forced_parts else 0.0
    method = "lossy" if forced_parts or selection.num_dropped else "lossless"
    return new_text, "context", method, order, forced, selection.mode, selection.num_dropped
