"""A model-free scorer: word classes by rule, for when no model may run (the fast path).

Low: fillers, function words, redundant punctuation. High: digits, math operators,
single-letter variables and identifiers, capitalised names in mid-sentence. Other content
words sit in between, longer words a little higher.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from tokenskip.tokens import TextTokenizer

FILLERS = frozenset(
    """so well basically actually just really very quite then now okay ok let's lets let us
    first next finally also simply therefore thus hence indeed clearly obviously note that
    this means which means means""".split()
)
FUNCTION_WORDS = frozenset(
    """a an the of to in on at by for from with into onto about as and or but if than that
    this these those it its is are was were be been being has have had do does did will would
    can could should shall may might must there here he she they we you i me him her them us
    his hers their our your my who whom whose which what when where how all each every some
    any no not both either neither such same other another own more most much many""".split()
)
OPERATORS = frozenset("+-*/=×÷%^<>≤≥±√$€£")

SCORE_DIGIT = 1.0
SCORE_OPERATOR = 0.95
SCORE_VARIABLE = 0.9
SCORE_NAME = 0.8
SCORE_CONTENT = 0.6
SCORE_SENTENCE_END = 0.35
SCORE_FUNCTION = 0.2
SCORE_PUNCT = 0.15
SCORE_FILLER = 0.1
SCORE_REPEATED_PUNCT = 0.05


def word_score(word: str, *, sentence_start: bool, previous: str) -> float:
    """Importance of one word (or symbol) given where it stands."""
    lower = word.lower()
    if any(ch.isdigit() for ch in word):
        return SCORE_DIGIT
    if word in OPERATORS:
        return SCORE_OPERATOR
    if not word[0].isalnum() and word[0] != "_":
        if word == previous:
            return SCORE_REPEATED_PUNCT
        return SCORE_SENTENCE_END if word in ".?!" else SCORE_PUNCT
    if lower in FILLERS:
        return SCORE_FILLER
    if lower in FUNCTION_WORDS:
        return SCORE_FUNCTION
    if (len(word) == 1 and word.isalpha()) or "_" in word:
        return SCORE_VARIABLE
    if word[0].isupper() and not sentence_start:
        return SCORE_NAME
    return SCORE_CONTENT + min(len(word), 12) * 0.01


class HeuristicScorer:
    """Rule-based scores; needs a tokenizer to see the text behind the ids, nothing else.

    Scoring is vectorized over token ids: what a token is (its text, class, whether it
    starts a word or ends a sentence) is worked out once per vocabulary entry and kept in
    tables; a call only groups tokens into words and applies the two context rules (a
    capitalised word at a sentence start is no name; a repeated symbol scores lowest).
    """

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self._known = np.zeros(0, dtype=bool)
        self._tables: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _grow(self, size: int) -> None:
        old = len(self._known)
        if size <= old:
            return
        size = max(size, 2 * old, 1024)
        self._known = np.concatenate([self._known, np.zeros(size - old, dtype=bool)])
        for name, table in self._tables.items():
            self._tables[name] = np.concatenate([table, np.zeros(size - old, dtype=table.dtype)])

    def _learn(self, token_ids: np.ndarray) -> None:
        """Fill the per-id tables for ids not seen before."""
        if not self._tables:
            for name, dtype in _TABLES.items():
                self._tables[name] = np.zeros(0, dtype=dtype)
        self._grow(int(token_ids.max()) + 1)
        new = np.unique(token_ids[~self._known[token_ids]])
        t = self._tables
        for token_id in new.tolist():
            piece = self.tokenizer.piece(token_id)
            core = piece.strip()
            t["lead_break"][token_id] = piece != piece.lstrip()
            t["newline"][token_id] = "\n" in piece[: len(piece) - len(piece.lstrip())]
            t["blank"][token_id] = not core
            t["word_char"][token_id] = bool(core) and (core[0].isalnum() or core[0] == "_")
            t["word_end"][token_id] = bool(core) and (core[-1].isalnum() or core[-1] == "_")
            t["digit"][token_id] = any(c.isdigit() for c in core)
            t["length"][token_id] = len(core)
            t["capital"][token_id] = bool(core) and core[0].isupper()
            t["ends_sentence"][token_id] = bool(core) and core[-1] in ".?!:"
            t["underscore"][token_id] = "_" in core
            if core:
                t["alone"][token_id] = word_score(core, sentence_start=False, previous="")
                t["first"][token_id] = word_score(core, sentence_start=True, previous="")
            else:
                t["alone"][token_id] = t["first"][token_id] = SCORE_PUNCT
            t["operator"][token_id] = core in OPERATORS
        self._known[new] = True

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.size == 0:
            return np.empty(0, dtype=np.float64)
        if ids.max() >= len(self._known) or not self._known[ids].all():
            with self._lock:  # the proxy scores from several worker threads
                self._learn(ids)
        tables = self._tables
        t = {name: tables[name][ids] for name in _TABLES}  # (num_tokens,) each
        # A token starts a word unless it glues onto the previous token's word characters.
        glued = np.zeros(len(ids), dtype=bool)
        glued[1:] = t["word_char"][1:] & t["word_end"][:-1] & ~t["lead_break"][1:]
        new_word = ~glued
        word = np.cumsum(new_word) - 1  # (num_tokens,) word index of each token
        first = np.flatnonzero(new_word)  # (num_words,) first token of each word
        size = np.diff(np.append(first, len(ids)))
        has_digit = np.bincount(word, weights=t["digit"], minlength=len(first)) > 0
        length = np.bincount(word, weights=t["length"], minlength=len(first))
        underscore = np.bincount(word, weights=t["underscore"], minlength=len(first)) > 0
        first_ids = ids[first]
        # sentence start: at the beginning, after a line break, or after . ? ! :
        starts_sentence = t["newline"][first].copy()
        starts_sentence[0] = True
        before = first[1:] - 1  # the last token of the previous word
        starts_sentence[1:] |= t["ends_sentence"][before] & ~t["word_char"][before]
        single = np.where(starts_sentence, t["first"][first], t["alone"][first])
        capital = t["capital"][first] & t["word_char"][first]
        multi = SCORE_CONTENT + np.minimum(length, 12) * 0.01
        multi = np.where(capital & ~starts_sentence, SCORE_NAME, multi)
        multi = np.where(underscore, SCORE_VARIABLE, multi)
        scores = np.where(size == 1, single, multi)
        scores = np.where(has_digit, SCORE_DIGIT, scores)
        symbol = ~t["word_char"][first] & ~t["blank"][first] & ~t["operator"][first]
        repeated = np.zeros(len(first), dtype=bool)
        repeated[1:] = symbol[1:] & (first_ids[1:] == first_ids[:-1])
        scores = np.where(repeated, SCORE_REPEATED_PUNCT, scores)
        out = scores[word]
        return np.where(t["blank"], SCORE_PUNCT, out)


_TABLES = {
    "lead_break": bool,
    "newline": bool,
    "blank": bool,
    "word_char": bool,
    "word_end": bool,
    "digit": bool,
    "length": np.int64,
    "capital": bool,
    "ends_sentence": bool,
    "underscore": bool,
    "alone": np.float64,
    "first": np.float64,
    "operator": bool,
}
