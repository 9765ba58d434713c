"""A model-free scorer: word classes by rule, for when no model may run (the fast path).

Low: fillers, function words, redundant punctuation. High: digits, math operators,
single-letter variables and identifiers, capitalised names in mid-sentence. Other content
words sit in between, longer words a little higher.
"""

from __future__ import annotations

import re
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
_WORD = re.compile(r"\w+(?:['’.,:\-]\w+)*|[^\w\s]")

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
    """Rule-based scores; needs a tokenizer to see the text behind the ids, nothing else."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer
        self._pieces: dict[int, str] = {}

    def _piece(self, token_id: int) -> str:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self.tokenizer.piece(token_id)
        return piece

    def score(self, token_ids: Sequence[int]) -> np.ndarray:
        pieces = [self._piece(int(t)) for t in token_ids]
        text = "".join(pieces)
        # (num_tokens,) start offset of each token in the rebuilt text
        starts = np.cumsum([0] + [len(p) for p in pieces[:-1]]) if pieces else np.zeros(0)
        char_score = np.full(len(text) + 1, SCORE_PUNCT, dtype=np.float64)
        previous, previous_end = "", 0
        for m in _WORD.finditer(text):
            word = m.group()
            sentence_start = (
                not previous or previous in ".?!:" or "\n" in text[previous_end : m.start()]
            )
            char_score[m.start() : m.end()] = word_score(
                word, sentence_start=sentence_start, previous=previous
            )
            previous, previous_end = word, m.end()
        scores = np.empty(len(pieces), dtype=np.float64)
        for i, (start, piece) in enumerate(zip(starts, pieces)):
            stripped = len(piece) - len(piece.lstrip())
            pos = min(int(start) + stripped, len(text))
            scores[i] = char_score[pos] if stripped < len(piece) else SCORE_PUNCT
        return scores
