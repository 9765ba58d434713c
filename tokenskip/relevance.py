"""Question-aware, coarse-to-fine context selection (LongLLMLingua's shape, with BM25).

When a text holds a request and context (documents, retrieved passages, pasted files), the
budget γ × tokens goes first to what the request is about: documents are ranked against the
request (BM25 over their words), the most relevant kept whole while the budget holds, the
next one shortened to what is left, and the rest dropped, each leaving a visible marker with
its id or title so neither the model nor the user is misled about what was there. Inside a
document that is shortened, the sentences that share words with the request are kept before
the others (``prefer`` spans for :func:`tokenskip.compress.compress`), and the meaning guards
hold as everywhere.

A request that needs all of its context ("summarize", "compare", "list every ...") spreads
the budget over the documents instead (each at γ): nothing is dropped. So is a text without
a recognisable request. A document that names something the request names verbatim (a
quoted string, a code or identifier, a multi-word name) is never dropped, nor is the best
one.

Everything depends on the text and the request alone (no model, no state), so a message
compresses the same way on every turn and stays cache-safe.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_TERM = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")
STOPWORDS = frozenset(
    """a an the and or nor but if then else of to in on at by for with from into onto about
    as is are was were be been being am do does did done has have had having will would
    shall should can could may might must this that these those it its it's they them their
    there here what which who whom whose when where why how all any each every some no not
    only own same so than too very just also i me my we our you your he him his she her
    one ones such per via up down out over under again further once more most other
    please tell answer question document documents text passage passages according say says
    said give given find explain describe reply respond yes format sentence word words
    briefly concise""".split()
)
"""Words that say nothing about what a request is about."""
K1 = 1.2
B = 0.75
MIN_RELEVANCE = 0.1
"""A document scoring under this share of the best one is not relevant: it gets no budget."""
MIN_DOCUMENT_RATIO = 0.2
"""A document that would keep less than this share of itself is dropped instead."""
MARKER_TOKENS = 16
"""About what a dropped document's marker costs (``[omitted, ...: index 3, "Title"]``)."""
NEEDS_ALL = re.compile(
    r"(?i)\b(?:summari[sz]e|summary|summaries|overview|compare|comparison|contrast|"
    r"differences?|similarit(?:y|ies)|synthesi[sz]e|combine|both|"
    r"(?:each|every|all) (?:of )?(?:the )?(?:documents?|passages?|texts?|sources?|articles?|"
    r"files?|reports?|reviews?)|list (?:all|every|each)|across (?:the|all|these))\b"
)
"""Requests that need every document: their budget is spread, nothing is dropped."""
_VERBATIM = re.compile(
    r"\"([^\"\n]{2,80})\"|“([^”\n]{2,80})”|`([^`\n]{2,80})`|"
    r"\b([A-Za-z][\w-]*\d[\w-]*|[A-Z]{2,}[\w-]*|\w+_\w+)\b"
)
"""What a request may name verbatim: quotes, codes and identifiers (a bare number or word
is no name: "40" is in many documents)."""
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)+")


def terms(text: str) -> list[str]:
    """Content words, lower-cased and crudely stemmed (plural -s, -es, -ing, -ed)."""
    out = []
    for word in _TERM.findall(text.lower()):
        if word in STOPWORDS or len(word) < 2:
            continue
        for suffix in ("ies", "ing", "es", "ed", "s"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)] + ("y" if suffix == "ies" else "")
                break
        out.append(word)
    return out


def bm25(query: Sequence[str], documents: Sequence[Sequence[str]]) -> np.ndarray:
    """``(num_documents,)`` BM25 scores of ``query`` terms over tokenised ``documents``
    (IDF from these documents alone)."""
    num = len(documents)
    scores = np.zeros(num)
    if not num or not query:
        return scores
    lengths = np.array([len(d) for d in documents], dtype=np.float64)
    mean = float(lengths.mean()) or 1.0
    counts = [Counter(d) for d in documents]
    for term in set(query):
        df = sum(1 for c in counts if term in c)
        if not df:
            continue
        idf = math.log(1.0 + (num - df + 0.5) / (df + 0.5))
        tf = np.array([c.get(term, 0) for c in counts], dtype=np.float64)
        scores += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * lengths / mean))
    return scores


def needs_all(request: str) -> bool:
    """The request asks about every document (summarize, compare, list every ...)."""
    return bool(NEEDS_ALL.search(request))


def named_verbatim(request: str) -> list[str]:
    """Strings the request names exactly: quotes, codes, identifiers, multi-word names."""
    found = [next(g for g in m.groups() if g) for m in _VERBATIM.finditer(request)]
    found += [m.group() for m in _NAME.finditer(request)]
    return [f for f in found if len(f) >= 2]


def markup_spans(text: str) -> list[tuple[int, int]]:
    """Spans a shortened document keeps verbatim: its markup tags and a leading ``<title>``
    or ``<source>`` element."""
    spans = [m.span() for m in TAG.finditer(text)]
    m = _TITLE.match(text)
    return spans + ([m.span()] if m else [])


def relevant_sentences(text: str, request: str) -> list[tuple[int, int]]:
    """``[start, end)`` of the sentences of ``text`` that share a content word with the
    request: kept first when a document is shortened."""
    wanted = set(terms(request))
    if not wanted:
        return []
    return [m.span() for m in _SENTENCE.finditer(text) if wanted & set(terms(m.group()))]


@dataclass(frozen=True)
class DocumentPlan:
    """What happens to one document."""

    index: int
    tokens: int
    """Its tokens in the target tokenizer."""
    score: float
    """BM25 against the request (0.0 without one)."""
    ratio: float | None
    """Keep ratio it is compressed at (1.0: whole); None: dropped, a marker in its place."""
    pinned: bool = False
    """It names what the request names verbatim, so it is never dropped."""


def selection_mode(request: str | None, num_documents: int) -> str:
    """How :func:`plan` spends a budget over ``num_documents`` documents: ``ranked`` (a
    request that some documents serve better than others), ``spread`` (the request needs
    every document, or there is only one) or ``spread-no-request``."""
    if not request or not terms(request):
        return "spread-no-request"
    if needs_all(request) or num_documents < 2:
        return "spread"
    return "ranked"


def plan(
    documents: Sequence[str],
    request: str | None,
    ratio: float,
    counts: Sequence[int],
    overhead: int = 0,
) -> tuple[list[DocumentPlan], str]:
    """How each document spends the budget, and the mode. The budget is γ of the whole
    text (documents and ``overhead``, the tokens around them that stay verbatim: markup, the
    request) less that overhead and the markers of dropped documents, given in relevance
    order: the best documents whole, the next shortened, the rest dropped. The mode:
    ``ranked`` (the budget follows relevance), ``spread`` (every document at γ: the request
    needs them all, or there is no request) or ``spread-no-request``."""
    total = sum(counts)
    even = ratio * (total + overhead) - overhead  # every document at the same share of it
    spread = min(1.0, max(MIN_DOCUMENT_RATIO, even / total)) if total else ratio
    mode = selection_mode(request, len(documents))
    if mode == "spread-no-request":
        return [DocumentPlan(i, c, 0.0, spread) for i, c in enumerate(counts)], mode
    assert request is not None
    scores = bm25(terms(request), [terms(d) for d in documents])
    if mode == "spread":
        return [
            DocumentPlan(i, c, float(s), spread) for i, (c, s) in enumerate(zip(counts, scores))
        ], "spread"
    names = [re.compile(rf"(?<!\w){re.escape(n)}(?!\w)", re.I) for n in named_verbatim(request)]
    pinned = [any(n.search(d) for n in names) for d in documents]
    top = float(scores.max())
    order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
    ratios: dict[int, float | None] = {}
    budget = even
    for attempt in range(2):  # the second pass pays for the markers of the first's drops
        if attempt:
            dropped = sum(r is None for r in ratios.values())
            budget = even - MARKER_TOKENS * dropped
        left = budget
        for rank, i in enumerate(order):
            relevant = pinned[i] or (top > 0 and scores[i] >= MIN_RELEVANCE * top)
            share = min(1.0, left / counts[i]) if counts[i] else 1.0
            kept = pinned[i] or (rank == 0 and relevant)  # the best one is never dropped
            if not relevant or (share < MIN_DOCUMENT_RATIO and not kept):
                ratios[i] = None
                continue
            ratios[i] = max(share, MIN_DOCUMENT_RATIO)
            left -= ratios[i] * counts[i]
    out = [
        DocumentPlan(i, c, float(s), ratios[i], pinned[i])
        for i, (c, s) in enumerate(zip(counts, scores))
    ]
    return out, "ranked"


def marker(document: str, label: str | None = None) -> str:
    """What stands in a dropped document's place: its label (id or title) or first words."""
    if label is None:
        first = document.strip().split("\n", 1)[0]
        words = first.split()
        label = " ".join(words[:8]) + (" …" if len(words) > 8 else "")
    return f"[omitted, not relevant to the request: {label}]"


@dataclass(frozen=True)
class SelectionResult:
    """The documents as they go out, and what happened to each."""

    texts: list[str]
    plans: list[DocumentPlan]
    mode: str
    """``ranked``, ``spread`` or ``spread-no-request`` (see :func:`plan`)."""

    @property
    def num_dropped(self) -> int:
        return sum(p.ratio is None for p in self.plans)


def select(
    documents: Sequence[str],
    request: str | None,
    ratio: float,
    *,
    count: Callable[[str], int],
    shorten: Callable[[str, float, list[tuple[int, int]]], str],
    labels: Sequence[str | None] | None = None,
    total: int | None = None,
) -> SelectionResult:
    """Coarse to fine: rank ``documents`` against ``request``, keep the relevant ones whole
    while the budget holds, shorten the next (``shorten(text, ratio, prefer)``, the
    sentences sharing words with the request preferred), drop the rest with a marker.
    ``total``: tokens of the whole text the documents stand in; γ covers the rest of it
    too (markup, the request), so the documents get what is left."""
    counts = [count(d) for d in documents]
    overhead = max(0, total - sum(counts)) if total is not None else 0
    plans, mode = plan(documents, request, ratio, counts, overhead)
    out = []
    for doc, p in zip(documents, plans):
        label = labels[p.index] if labels else None
        if p.ratio is None:
            out.append(marker(doc, label))
        elif p.ratio >= 1.0:
            out.append(doc)
        else:
            prefer = relevant_sentences(doc, request) if request and mode == "ranked" else []
            out.append(shorten(doc, p.ratio, prefer))
    return SelectionResult(out, plans, mode)


DOCUMENT_MARKUP = re.compile(
    r"<(?P<tag>document|doc|passage|article|source|search_result|result)\b(?P<attrs>[^>]*)>"
    r"(?P<body>.*?)</(?P=tag)>",
    re.DOTALL | re.IGNORECASE,
)
_ATTR = re.compile(
    r"""(?P<key>[\w-]+)\s*=\s*(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s>]+))"""
)
_TITLE = re.compile(r"^\s*<(?P<tag>title|source)>(?P<value>[^<\n]{1,200})</(?P=tag)>", re.I)
_PARAGRAPH = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")
TAG = re.compile(r"</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>")
"""A markup tag: ``<document index="3">``, ``</passage>``."""


def document_label(attrs: str, body: str) -> str | None:
    """A dropped document's name: its id/index/title attributes or a leading ``<title>``
    or ``<source>`` element."""
    found = {m["key"].lower(): m["dq"] or m["sq"] or m["bare"] or "" for m in _ATTR.finditer(attrs)}
    parts = [f"{k} {found[k]}" for k in ("id", "index") if found.get(k)]
    title = found.get("title") or found.get("source") or found.get("name")
    m = _TITLE.match(body)
    if not title and m:
        title = m["value"].strip()
    if title:
        parts.append(f'"{title}"')
    return ", ".join(parts) or None


def document_spans(text: str) -> list[tuple[int, int, str | None]]:
    """``[start, end)`` and label of each document of ``text``: the bodies of document markup
    (``<document>``, ``<passage>``, ...) when there are any, else its blank-line paragraphs."""
    found = [
        (m.start("body"), m.end("body"), document_label(m["attrs"], m["body"]))
        for m in DOCUMENT_MARKUP.finditer(text)
    ]
    if found:
        return found
    out, start = [], 0
    for m in [*_PARAGRAPH.finditer(text), None]:
        end = m.start() if m else len(text)
        if text[start:end].strip():
            out.append((start, end, None))
        start = m.end() if m else len(text)
    return out


def select_exemplars(
    exemplars: Sequence[str], request: str, ratio: float, counts: Sequence[int]
) -> list[int]:
    """Few-shot exemplars kept whole for ``request`` (LLMLingua's budget controller, by
    relevance): ranked by BM25 against the request, taken while γ × their tokens allows
    (one more when it lands nearer the budget than stopping short), at least one. Returns
    their indices in the original order; an exemplar's answer line is never touched."""
    if not exemplars:
        return []
    budget = ratio * sum(counts)
    scores = bm25(terms(request), [terms(e) for e in exemplars])
    order = sorted(range(len(exemplars)), key=lambda i: (-scores[i], i))
    kept, used = [], 0.0
    for i in order:
        if used + counts[i] <= budget or not kept:
            kept.append(i)
            used += counts[i]
        elif abs(used + counts[i] - budget) < abs(budget - used):
            kept.append(i)
            break
        else:
            break
    return sorted(kept)


def replace_spans(text: str, spans: Sequence[tuple[int, int]], new: Sequence[str]) -> str:
    """``text`` with each ``[start, end)`` of ``spans`` (in order, apart) replaced by the
    matching string of ``new``."""
    pieces, last = [], 0
    for (start, end), piece in zip(spans, new):
        pieces += [text[last:start], piece]
        last = end
    return "".join(pieces) + text[last:]
