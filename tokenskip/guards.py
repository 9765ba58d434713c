"""Meaning guards: the phrases a compressor must never cut, found by named rules.

Dropping "not" from "do not share the code", the operand of "at most 4 grams" or the clause
of "unless the item is damaged" changes what a text says, however exact the keep ratio.
Each rule below finds such phrases as ``[start, end)`` character spans; the compressor keeps
every unit inside a guard span whatever its score, and reports their share as
``forced_ratio`` (a γ below it achieves the forced share instead).

The rules work on words and clause boundaries, with no model, in two tiers:

- **the span** a rule returns (:meth:`Guards.spans`) is the phrase that carries the meaning:
  the cue, the words before it in its clause that it governs (its subject: "Smoking of any
  substance is prohibited", "Pets are not allowed"), and the rest of its clause after it,
  up to a word that opens another clause (:data:`REACH`, :data:`BREAK_WORDS`), over a
  list the cue opens ("salary, rating, leave or address"). These are kept whatever γ
  asks; their share is ``forced_ratio``.
- **the scope** (:meth:`Guards.scopes`) is the cue's whole chunk with the list items and a
  parenthesis around it: never forced, but ranked above every other word, nearest the cue
  first, so it is kept while γ allows.

How far a span reaches was measured, not assumed (``reports/meaning/REACH.md``): with two
words on either side of a cue ("not sign anything") 0.62 of the meaning set is forced and a
third of its hand-annotated constraint phrases are cut at γ = 0.5 ("Do not ask for their
PIN" kept, "or full credit card number" gone); reaching through the cue's clause forces
0.78 and keeps 96.5% of them. On constraint-dense text (policies, contracts, where the
annotated phrases alone are 0.39 of the tokens) meaning costs savings; prose without
constraints keeps almost nothing forced, and question-aware selection
(:mod:`tokenskip.relevance`) drops whole irrelevant documents, guards and all. Names,
identifiers and quotes guard just themselves.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from tokenskip.gcpause import paused_collection

_WORD = re.compile(r"\w+(?:['’.,:\-/]\w+)*")
_BOUNDARY = re.compile(r"[,;:.!?()\[\]{}\n—–]|\s-\s")
_STRONG = re.compile(r"[;.!?()\[\]{}\n—–]|\s-\s")
"""Boundaries a guard does not reach over; a comma or a colon ("skipped: stage failed")
only separates the items and labels of one statement."""
MAX_BEFORE = 10
"""Words a cue's scope reaches before it inside one long chunk."""
MAX_AFTER = 18
"""Words a cue's scope reaches after it inside one long chunk."""
MAX_LIST_ITEM = 5
"""A comma-separated chunk this short next to a guarded chunk is an item of the same list
(or a label: "default 3", "skipped: ...") and is guarded with it."""
MAX_LAST_ITEM = 9
"""The last item of a list ("..., or other damp areas") may be this long."""
MAX_LIST_CHUNKS = 4
"""At most this many list chunks are joined on either side of a cue's chunk."""
MAX_PARENTHESIS = 80
"""A parenthesis right after a guarded phrase, up to this many characters, joins it."""

AUXILIARIES = frozenset(
    """do does did don't doesn't didn't is are was were be been am has have had will would
    shall should can could may might must need needs ought to""".split()
)
NEGATIONS = frozenset(
    """not no never without nor cannot none nobody nothing neither nowhere noone no-one
    avoid avoids refuse refuses decline declines prohibit prohibits prohibited forbid
    forbids forbidden ban bans banned exclude excludes excluded excluding closed
    ineligible invalid void unavailable disallowed against reject rejects rejected deny
    denies denied bar bars barred block blocks blocked disable disables disabled skip skips
    skipped revoke revokes revoked suspend suspends suspended cancel cancels cancelled
    canceled fail fails failed unable""".split()
)
LIMIT_CUES = frozenset(
    """only until till before after within between exceed exceeds exceeding exceeded maximum
    minimum max min prior through throughout except once twice limit limits limited cap
    caps capped deadline due expire expires expired expiry earliest latest least most free
    maximal minimal sooner later default defaults precedence override overrides instead
    """.split()
)
CLAUSE_TIME_CUES = frozenset("after before once".split())
"""Limit cues that open a plain time clause when a subject pronoun follows them."""
SUBJECT_PRONOUNS = frozenset("i we you they he she it".split())
NUMERIC_LIMIT_CUES = frozenset("under over above below by from to per beyond around".split())
LIMIT_PAIRS = frozenset(
    (a, b)
    for a, b in (
        ("at", "most"),
        ("at", "least"),
        ("up", "to"),
        ("more", "than"),
        ("less", "than"),
        ("fewer", "than"),
        ("greater", "than"),
        ("higher", "than"),
        ("lower", "than"),
        ("longer", "than"),
        ("shorter", "than"),
        ("later", "than"),
        ("earlier", "than"),
        ("older", "than"),
        ("younger", "than"),
        ("prior", "to"),
        ("no", "later"),
        ("no", "earlier"),
        ("as", "many"),
        ("as", "much"),
        ("rather", "than"),
        ("instead", "of"),
    )
)
POSTFIX_LIMITS = frozenset(
    (a, b)
    for a, b in (
        ("or", "more"),
        ("or", "less"),
        ("or", "fewer"),
        ("or", "longer"),
        ("or", "later"),
        ("or", "earlier"),
        ("or", "older"),
        ("or", "above"),
        ("or", "below"),
        ("and", "above"),
        ("and", "below"),
        ("and", "up"),
        ("or", "higher"),
        ("or", "lower"),
        ("or", "over"),
        ("or", "under"),
        ("or", "younger"),
        ("or", "sooner"),
    )
)
CONDITION_CUES = frozenset(
    """if unless except excluding otherwise provided whether when whenever regardless
    depending including includes inclusive whatever whichever""".split()
)
CONDITION_PAIRS = frozenset(
    (a, b)
    for a, b in (
        ("as", "long"),
        ("so", "long"),
        ("in", "case"),
        ("in", "the"),  # "in the event (that)": checked with a third word below
        ("other", "than"),
        ("subject", "to"),
        ("only", "when"),
        ("only", "where"),
        ("except", "when"),
        ("except", "where"),
        ("even", "if"),
        ("as", "soon"),
    )
)
OBLIGATIONS = frozenset(
    """must should shall may might can could cannot required requires require prohibited
    forbidden mandatory allowed permitted obliged obligated entitled responsible needs need
    ought""".split()
)
OBLIGATION_PAIRS = frozenset(
    (a, b)
    for a, b in (
        ("have", "to"),
        ("has", "to"),
        ("had", "to"),
        ("need", "to"),
        ("needs", "to"),
        ("is", "required"),
        ("are", "required"),
    )
)
NUMBER_WORDS = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
    ninety hundred thousand million billion dozen half twice once thrice double triple single
    first second third fourth fifth""".split()
)
UNIT_LINKS = frozenset("per a an each every of".split())
MONTHS = frozenset(
    """january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec""".split()
)
WEEKDAYS = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday mondays tuesdays wednesdays
    thursdays fridays saturdays sundays weekday weekdays weekend weekends noon midnight
    tomorrow yesterday today tonight daily weekly monthly yearly annually quarterly
    overnight holiday holidays""".split()
)
SHORT_MONTHS = frozenset("mar jan dec jun jul oct sep sept apr aug nov feb".split())
COMMON_STARTERS = frozenset(
    """a an the this that these those it its if when where while after before as at by for
    from in into of on to with we you they he she i our your their his her my please note
    all any each every some no not never do does did is are was were be can could should
    would will shall may might must there here what which who how why also then so but and
    or nor yet however although though because since unless until once only both either
    neither other another such many most more much few several""".split()
)
SENTENCE_VERBS = frozenset(
    """add allow always answer apply ask avoid be begin bring call cancel check choose click
    close collect complete confirm consider contact continue copy create delete describe
    do don't enable ensure enter escalate explain find follow forward get give go help
    include inform keep let list log look make mark move never note notify offer open pay
    place please prepare provide put read record refer refuse remember remove reply report
    request respond return review run save say see select send set share show sign start
    state stop store submit take tell test treat try turn update use verify wait warn
    write yes wear wash rinse clean dispose unplug switch connect disconnect install replace
    attach remove charge apply mix shake dilute label lock unlock back restart reset
    direct route transfer assign approve reject document flag quote cite""".split()
)
COMMON_WORDS = frozenset(
    """about above according additionally afterwards again ago almost already although
    among anyone anything approximately around because below besides beyond customers
    customer during each earlier either else even eventually every everyone everything
    except finally first following furthermore generally given however important
    including instead last later likely meanwhile moreover most mostly much new next
    nothing often once one otherwise overall perhaps previously rather recently regarding
    second several similarly since sometimes soon still such that therefore these those
    though thus today together typically unfortunately unless unlike until usually users
    user we when whenever where whether while within without yet well so okay ok basically
    actually really honestly anyway now indeed sure yes""".split()
)
TITLES = frozenset("mr mrs ms dr prof st mt sir dame".split())
ENTITY_LINKS = frozenset("of the and & de la von van der du".split())
ABBREVIATIONS = TITLES | frozenset("e.g i.e etc vs approx incl inc ltd co jr sr no fig".split())
_QUOTED = re.compile(r"\"[^\"\n]{1,400}\"|“[^”\n]{1,400}”|(?<!\w)'[^'\n]{1,200}'(?!\w)|`[^`\n]+`")
_PATH = re.compile(r"(?<![\w/])(?:[A-Z]+\s+)?/[\w\-.{}:<>]+(?:/[\w\-.{}:<>]*)*")
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+|[\w.+-]*@[\w-]+(?:\.[\w-]+)+\b")
_JSON_PAIR = re.compile(r'"[^"\n]{1,200}"\s*:\s*(?:"(?:[^"\\\n]|\\.){0,400}"|[-+\w.]+)')
_CAMEL = re.compile(r"[a-z][A-Z]")
_LETTER = re.compile(r"[^\W\d_]")
_LOWER_WORD = re.compile(r"\b[a-z][\w'’.\-]*")
_TIME = re.compile(r"(?i)\b\d{1,2}(?::\d{2})?\s*(?:a\.?m\.?|p\.?m\.?)(?!\w)")
_ANSWER_LINE = re.compile(r"(?m)^[ \t]*####.*$|\\boxed\s*\{[^\n]*|(?i:\bthe\s+answer\s+is\b[^\n]*)")


@dataclass(frozen=True)
class _Words:
    """The words of a text, where each one stands, and the chunks between boundaries."""

    spans: list[tuple[int, int]]
    lower: list[str]
    raw: list[str]
    clause_start: list[bool]
    """True where the text between the previous word and this one holds a boundary."""
    strong_start: list[bool]
    """True where that boundary is more than a comma (``; : . ! ?``, a bracket, a dash...)."""
    sentence_start: list[bool]
    """True where that text ends a sentence (``. ! ?`` or a line break) or at the start."""
    index: dict[str, list[int]]
    """Positions of each (lower-case) word: rules visit their cue words only."""
    chunk: list[int]
    """Chunk number of each word."""
    chunk_first: list[int]
    """First word of each chunk."""
    chunk_last: list[int]
    """Last word of each chunk."""

    def at(self, words: frozenset[str] | set[str]) -> list[int]:
        """Sorted positions of any of ``words``."""
        found = [i for word in words & self.index.keys() for i in self.index[word]]
        found.sort()
        return found


def _codes(chars: str) -> np.ndarray:
    return np.array([ord(c) for c in chars], dtype=np.uint32)


_BOUNDARY_CODES = _codes(",;:.!?()[]{}\n—–")
_STRONG_CODES = _codes(";.!?()[]{}\n—–")
_SENTENCE_CODES = _codes(".!?\n")
_SPACED_DASH = re.compile(r"\s-\s")


def _boundary_flags(
    codes: np.ndarray, extra: list[int], starts: np.ndarray, ends: np.ndarray, marks: np.ndarray
) -> np.ndarray:
    """``(num_words,)`` bool: a mark lies between the previous word and this one."""
    hit = np.isin(codes, marks)
    if extra:
        hit[extra] = True
    before = np.concatenate([[0], np.cumsum(hit)])  # marks before each character position
    prev_end = np.concatenate([[0], ends[:-1]])
    flags = before[starts] > before[prev_end]
    if len(flags):
        flags[0] = True
    return flags


def _words(text: str) -> _Words:
    matches = list(_WORD.finditer(text))
    spans = [m.span() for m in matches]
    raw = [m.group() for m in matches]
    lower = text.lower()
    lower_words = [lower[s:e] for s, e in spans]
    starts = np.fromiter((s for s, _ in spans), dtype=np.int64, count=len(spans))
    ends = np.fromiter((e for _, e in spans), dtype=np.int64, count=len(spans))
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    dashes = [m.start() + 1 for m in _SPACED_DASH.finditer(text)]
    clause = _boundary_flags(codes, dashes, starts, ends, _BOUNDARY_CODES)
    strong = _boundary_flags(codes, dashes, starts, ends, _STRONG_CODES)
    sentence = _boundary_flags(codes, [], starts, ends, _SENTENCE_CODES)
    index: dict[str, list[int]] = defaultdict(list)
    for i, word in enumerate(lower_words):
        index[word].append(i)
    index = dict(index)
    # "Dr. Okafor", "e.g. a refund", "3.5 p.m. on": an abbreviation's dot ends nothing
    for word in ABBREVIATIONS & index.keys():
        for k in index[word]:
            if k + 1 < len(spans) and text[ends[k] : starts[k + 1]].rstrip(" ") == ".":
                clause[k + 1] = strong[k + 1] = sentence[k + 1] = False
    chunk = np.cumsum(clause) - 1
    first = np.flatnonzero(clause)
    last = np.append(first[1:] - 1, len(spans) - 1) if len(first) else first
    return _Words(
        spans,
        lower_words,
        raw,
        clause.tolist(),
        strong.tolist(),
        sentence.tolist(),
        index,
        chunk.tolist(),
        first.tolist(),
        last.tolist(),
    )


_LIMIT_CANDIDATES = (
    {a for a, _ in LIMIT_PAIRS} | LIMIT_CUES | NUMERIC_LIMIT_CUES | {b for _, b in POSTFIX_LIMITS}
)
_CONDITION_CANDIDATES = CONDITION_CUES | {a for a, _ in CONDITION_PAIRS}
_OBLIGATION_CANDIDATES = OBLIGATIONS | {a for a, _ in OBLIGATION_PAIRS}
_DATE_CANDIDATES = MONTHS | WEEKDAYS
_HAS_DIGIT = re.compile(r"\d")


def _is_number(word: str) -> bool:
    return bool(_HAS_DIGIT.search(word)) or word in NUMBER_WORDS


def _span(w: _Words, first: int, last: int) -> tuple[int, int]:
    return w.spans[first][0], w.spans[last][1]


def _is_list_item(w: _Words, c: int) -> bool:
    first, last = w.chunk_first[c], w.chunk_last[c]
    size = last - first + 1
    if size <= MAX_LIST_ITEM:
        return True
    joined = any(w.lower[k] in ("and", "or", "nor") for k in range(first, last + 1))
    return joined and size <= MAX_LAST_ITEM


def _with_parenthesis(text: str, end: int) -> int:
    """``end`` moved past a short parenthesis right after it, which qualifies the phrase
    that ends there: "UN R129 (i-Size)", "(current: 1)"."""
    rest = text[end : end + MAX_PARENTHESIS + 2]
    if rest.startswith((" (", "(")):
        close = rest.find(")")
        if close > 0 and "\n" not in rest[:close]:
            return end + close + 1
    return end


def _chunk_span(text: str, w: _Words, i: int) -> tuple[int, int]:
    """What a cue at word ``i`` guards: its chunk, the list items or labels joined to it by
    commas or colons on either side, and a parenthesis right after it."""
    c0 = w.chunk[i]
    n = len(w.chunk_first)
    c = c0
    while (
        c + 1 < n
        and c + 1 - c0 <= MAX_LIST_CHUNKS
        and not w.strong_start[w.chunk_first[c + 1]]
        and _is_list_item(w, c + 1)
    ):
        c += 1
    last = w.chunk_last[c]
    c = c0
    while (
        c > 0
        and c0 - c < MAX_LIST_CHUNKS
        and not w.strong_start[w.chunk_first[c]]
        and _is_list_item(w, c - 1)
    ):
        c -= 1
    first = w.chunk_first[c]
    if first == w.chunk_first[c0]:
        first = max(first, i - MAX_BEFORE)
    if last == w.chunk_last[c0]:
        last = min(last, i + MAX_AFTER)
    start, end = _span(w, first, last)
    end = _with_parenthesis(text, end)
    # a cue inside a parenthesis qualifies what stands around it
    before = text[max(0, start - 2) : start]
    if "(" in before and first > 0:
        start = w.spans[w.chunk_first[w.chunk[first - 1]]][0]
        if last + 1 < len(w.spans):
            end = max(end, w.spans[w.chunk_last[w.chunk[last + 1]]][1])
    return start, end


@dataclass(frozen=True)
class Reach:
    """How far a cue's guard reaches: the words that carry its meaning, not its clause."""

    behind: int
    """Words before the cue, inside its clause ("merge blocked", "Children under 3")."""
    ahead: int
    """Words after the cue, inside its clause ("not sign anything", "unless the manager
    approves"); a span never ends on a function word ("ask for their" goes on to "PIN")."""


CLAUSE = 20
"""A reach of 20 words: in practice the rest of the cue's clause (a clause boundary or a
word that opens another clause stops it first)."""
REACH: dict[str, Reach] = {
    "negation": Reach(behind=6, ahead=CLAUSE),
    "limit": Reach(behind=3, ahead=CLAUSE),
    "condition": Reach(behind=3, ahead=CLAUSE),
    "obligation": Reach(behind=6, ahead=CLAUSE),
    "number_clause": Reach(behind=3, ahead=1),
    "date": Reach(behind=2, ahead=1),
}
"""The reach of each cue rule, chosen on ``bench/data/meaning`` (a negation or an
obligation reaches back to its subject, a limit or condition to the noun it bounds; all run
to the end of their clause) and checked on ``meaning_heldout``: ``reports/meaning/REACH.md``."""
WEAK_CUES: dict[str, Reach] = {
    word: Reach(behind=0, ahead=2) for word in "can could might need needs".split()
}
"""Cues that state an ability or a need more often than a rule ("what we need to do",
"we can start"): they keep a short reach, the words right after them."""
LEAD_WORDS = AUXILIARIES | frozenset(
    """also always still ever just strictly absolutely generally usually only never not no
    under any""".split()
)
"""Words right before a cue that belong to it: "should not", "must always", "is only"."""
CONJUNCTIONS = frozenset("and or but so then".split())
"""Words that join a clause to the one before: a guard's reach back starts after them."""
BREAK_WORDS = frozenset("but because although though while whereas which who whose so then".split())
"""Words that open another clause: a guard's reach stops before them."""
FUNCTION_WORDS = frozenset(
    """a an the this that these those of to for with in on at by from into onto their your
    his her its our my and or nor as any each every some per than""".split()
)
"""Words a phrase does not end on: the reach goes on to the next content word."""
MAX_FUNCTION_RUN = 3
MAX_HEAD_RUN = 2
"""Content words a phrase may run on past its reach, to finish the head it names."""


def _list_end(w: _Words, c0: int) -> int:
    """The last chunk of a list that chunk ``c0`` opens ("salary, rating, leave or address"):
    short comma-separated items, the last joined by and/or; ``c0`` when there is none."""
    n = len(w.chunk_first)
    c = c0
    while c + 1 < n and c + 1 - c0 <= MAX_LIST_CHUNKS:
        first = w.chunk_first[c + 1]
        if w.strong_start[first] or not _is_list_item(w, c + 1):
            break
        c += 1
        last = w.chunk_last[c]
        if any(w.lower[k] in ("and", "or", "nor") for k in range(first, last + 1)):
            return c
    return c0


def _phrase_span(text: str, w: _Words, i: int, reach: Reach) -> tuple[int, int]:
    """The minimal phrase of a cue at word ``i``: its lead words and ``reach`` words on
    either side inside its clause, a list it opens, a parenthesis right after it."""
    n = len(w.lower)
    first = i
    while first > 0 and not w.clause_start[first] and i - first < 3:
        if w.lower[first - 1] not in LEAD_WORDS:
            break
        first -= 1
    for _ in range(reach.behind):
        if first > 0 and not w.clause_start[first]:
            first -= 1
    while first < i and w.lower[first] in CONJUNCTIONS:
        first += 1  # "and guests must sign in": the subject starts after the conjunction
    last = i
    while (
        last + 1 < n
        and not w.clause_start[last + 1]
        and last - i < reach.ahead
        and w.lower[last + 1] not in BREAK_WORDS
    ):
        last += 1
    run = 0
    while (
        w.lower[last] in FUNCTION_WORDS
        and run < MAX_FUNCTION_RUN
        and last + 1 < n
        and not w.clause_start[last + 1]
    ):
        last, run = last + 1, run + 1
    run = 0
    while (  # the rest of the head: "can't return opened software", "credit card number"
        run < MAX_HEAD_RUN
        and last + 1 < n
        and not w.clause_start[last + 1]
        and w.lower[last + 1] not in FUNCTION_WORDS
        and w.lower[last + 1] not in BREAK_WORDS
        and w.lower[last + 1] not in AUXILIARIES
    ):
        last, run = last + 1, run + 1
    if last + 1 < n and w.clause_start[last + 1] and not w.strong_start[last + 1]:
        c = _list_end(w, w.chunk[last])
        if c != w.chunk[last]:
            last = w.chunk_last[c]
    start, end = _span(w, first, last)
    return start, _with_parenthesis(text, end)


def _scope_spans(text: str, w: _Words, names: Sequence[str]) -> list[tuple[int, int]]:
    """The scope of every cue of the named rules; a cue in a short chunk has the scope of
    its chunk (the same for every cue in it), computed once."""
    positions = sorted({i for name in names if name in CUES for i in CUES[name](w)})
    short: dict[int, tuple[int, int]] = {}
    out = []
    for i in positions:
        c = w.chunk[i]
        if w.chunk_last[c] - w.chunk_first[c] <= min(MAX_BEFORE, MAX_AFTER):
            if c not in short:
                short[c] = _chunk_span(text, w, i)
            out.append(short[c])
        else:
            out.append(_chunk_span(text, w, i))
    return out


def _cue_spans(text: str, w: _Words, positions: list[int], rule: str) -> list[tuple[int, int]]:
    reach = REACH[rule]
    return [_phrase_span(text, w, i, WEAK_CUES.get(w.lower[i], reach)) for i in positions]


def negation_cues(w: _Words) -> list[int]:
    """Negations: not, never, without, refuse, ..., any -n't and non- word."""
    cues = NEGATIONS | {k for k in w.index if k.endswith(("n't", "n’t")) or k.startswith("non-")}
    return w.at(cues)


def negation_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """A negation and what it negates: "should not sign anything"."""
    return _cue_spans(text, w, negation_cues(w), "negation")


def limit_cues(w: _Words) -> list[int]:
    """Limits and comparisons: at most, only, until, before/after, under + a number, ..."""
    n = len(w.lower)
    found = []
    for i in w.at(_LIMIT_CANDIDATES):
        word = w.lower[i]
        nxt = w.lower[i + 1] if i + 1 < n and not w.clause_start[i + 1] else ""
        prev = w.lower[i - 1] if i > 0 and not w.clause_start[i] else ""
        if (prev, word) in POSTFIX_LIMITS:
            if i > 1 and (w.lower[i - 2], prev, word) == ("more", "or", "less"):
                continue  # "more or less": an idiom, no limit
            found.append(i - 1)  # "38.0 °C or higher": the operand stands before "or"
        elif word in CLAUSE_TIME_CUES and nxt in SUBJECT_PRONOUNS:
            continue  # "after we have thought about it": a sequence, no limit
        elif (
            (word, nxt) in LIMIT_PAIRS
            or word in LIMIT_CUES
            or (
                word in NUMERIC_LIMIT_CUES
                and any(
                    _is_number(w.lower[j]) or w.lower[j] in _DATE_CANDIDATES
                    for j in range(i + 1, min(n, i + 4))
                    if not w.strong_start[j]
                )
            )
        ):
            found.append(i)
    return sorted(set(found))


def limit_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """Limits and comparisons with their operand: "at most 4 grams", "before 7 am"."""
    return _cue_spans(text, w, limit_cues(w), "limit")


def condition_cues(w: _Words) -> list[int]:
    """Conditions and exceptions: if, unless, except, provided, as long as, ..."""
    n = len(w.lower)
    found = []
    for i in w.at(_CONDITION_CANDIDATES):
        word = w.lower[i]
        nxt = w.lower[i + 1] if i + 1 < n else ""
        if (word, nxt) == ("in", "the") and (w.lower[i + 2] if i + 2 < n else "") != "event":
            continue
        if word in CONDITION_CUES or (word, nxt) in CONDITION_PAIRS:
            found.append(i)
    return found


def condition_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """Conditions and exceptions with their head: "unless the item is damaged"."""
    return _cue_spans(text, w, condition_cues(w), "condition")


def obligation_cues(w: _Words) -> list[int]:
    """Obligations and permissions (must, may, required, ...) and imperatives that open a
    sentence."""
    n = len(w.lower)
    found = []
    for i in w.at(_OBLIGATION_CANDIDATES):
        word = w.lower[i]
        nxt = w.lower[i + 1] if i + 1 < n else ""
        if word not in OBLIGATIONS and (word, nxt) not in OBLIGATION_PAIRS:
            continue
        if word == "may" and w.raw[i] == "May" and not w.sentence_start[i]:
            continue  # the month
        found.append(i)
    # an imperative that opens a sentence is an instruction
    found.extend(i for i in w.at(SENTENCE_VERBS) if w.sentence_start[i] and w.raw[i][:1].isupper())
    return sorted(found)


def obligation_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """Obligations, permissions and instructions with their verb: "must notify the
    landlord", "Direct the patient to call 911"."""
    return _cue_spans(text, w, obligation_cues(w), "obligation")


def _number_positions(w: _Words) -> list[int]:
    cues = {
        k
        for k in w.index
        if _HAS_DIGIT.search(k) or (k.partition("-")[0] in NUMBER_WORDS and "-" in k)
    } | (NUMBER_WORDS - {"one", "first"})
    positions = w.at(cues)
    n = len(w.lower)
    positions += [  # "one portable computer", not "one of them"
        i
        for i in w.at({"one", "first"})
        if i + 1 < n and not w.clause_start[i + 1] and w.lower[i + 1] not in COMMON_STARTERS
    ]
    return sorted(positions)


def number_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """Numbers with their sign and unit: "$1,200 per month", "38.0 °C", "3 business days"."""
    out = []
    n = len(w.lower)
    for i in _number_positions(w):
        start, end = w.spans[i]
        while start > 0 and text[start - 1] in "$€£¥+-−~≈#@":
            start -= 1
        last, j, content = i, i + 1, 0
        while j < n and j <= i + 5 and not w.clause_start[j]:
            word = w.lower[j]
            if _is_number(word) or word in UNIT_LINKS or word in ("to", "and", "or"):
                last = j  # "per month", "5 to 7", "one or two"
            elif word not in COMMON_STARTERS and word not in AUXILIARIES and len(word) <= 16:
                last, content = j, content + 1  # the unit, or what is counted
                if content == 2:
                    break
            else:
                break
            j += 1
        while last > i and w.lower[last] in UNIT_LINKS | {"to", "and", "or"}:
            last -= 1
        end = w.spans[last][1]
        while end < len(text) and text[end] in "%°′″":
            end += 1
        if end + 3 <= len(text) and text[end] == " " and text[end + 1] in "°%":
            end += 2 + (text[end + 2 : end + 3].isalpha())  # "38.0 °C"
        out.append((start, end))
    return out


def number_clause_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """The clause a number stands in, what it counts and where it applies: "Overdraft fees
    of $35", "held for 24 hours". For prompts; chains of thought keep numbers alone."""
    return _cue_spans(text, w, _number_positions(w), "number_clause")


def date_cues(w: _Words) -> list[int]:
    """Months (capitalised, or before a day number) and weekdays."""
    n = len(w.lower)
    found = []
    for i in w.at(_DATE_CANDIDATES):
        word = w.lower[i]
        if word in MONTHS and not w.raw[i][0].isupper():
            continue
        if word in SHORT_MONTHS and not (i + 1 < n and _is_number(w.lower[i + 1])):
            continue
        if word == "may" and not (
            (i + 1 < n and _is_number(w.lower[i + 1])) or (i > 0 and _is_number(w.lower[i - 1]))
        ):
            continue
        found.append(i)
    return found


def date_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """Dates and times with what happens then: "closed on Mondays", "until March 3, 2026"."""
    return _cue_spans(text, w, date_cues(w), "date") + [m.span() for m in _TIME.finditer(text)]


def quote_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """Quoted strings and inline code: "FINAL-SALE", `max_retries`; a JSON key with its
    value (``"refund_issued": false``)."""
    return [m.span() for m in _QUOTED.finditer(text)] + [
        m.span() for m in _JSON_PAIR.finditer(text)
    ]


def identifier_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """Identifiers: snake_case, camelCase, ALLCAPS, codes with digits, paths, URLs, e-mails."""
    out = []
    if "@" in text or "://" in text or "www." in text:  # the regexes scan every position
        out.extend(m.span() for m in _URL.finditer(text))
    if "/" in text:
        out.extend(m.span() for m in _PATH.finditer(text))
    # only words that are not plain or capitalised words can be identifiers
    candidates = [
        i
        for i, raw in enumerate(w.raw)
        if not raw.isalpha() or (len(raw) > 1 and (raw.isupper() or not raw[1:].islower()))
    ]
    for i in candidates:
        raw = w.raw[i]
        letters = len(_LETTER.findall(raw))
        if (
            "_" in raw
            or (letters >= 2 and raw.isupper())
            or (letters and _HAS_DIGIT.search(raw))
            or _CAMEL.search(raw)
            or ("." in raw and letters >= 2)
        ):
            out.append(w.spans[i])
    return out


def entity_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """Names: runs of capitalised words ("Northfield Logistics", "Dr. Amelia Okafor")."""
    out = []
    n = len(w.raw)
    lowercase_words = set(_LOWER_WORD.findall(text))
    capitals = [i for i, raw in enumerate(w.raw) if raw[0].isupper()]
    done = -1
    for i in capitals:
        if i <= done or i < 0:
            continue
        j = i
        while True:
            if j + 1 < n and w.raw[j + 1][0].isupper() and not w.clause_start[j + 1]:
                j += 1
                continue
            # "Republic of Varen", "UK, Ireland and the Netherlands"
            k = j + 1
            while k < n and w.lower[k] in ENTITY_LINKS and k - j <= 2:
                k += 1
            if k > j + 1 and k < n and w.raw[k][0].isupper() and not w.strong_start[k]:
                j = k
                continue
            if (
                j + 1 < n
                and w.raw[j + 1][0].isupper()
                and w.clause_start[j + 1]
                and not w.strong_start[j + 1]
                and j > i
            ):
                j += 1
                continue
            break
        lower = w.lower[i]
        run = j - i + 1
        is_name = (
            (not w.sentence_start[i] and lower not in ("i",))
            or run >= 2
            or (lower not in COMMON_STARTERS and lower not in OBLIGATIONS and lower in TITLES)
        )
        if w.sentence_start[i] and run == 1:
            # a sentence's first word is a name when it is no common word and the text
            # never writes it in lower case ("Natalia sold", not "Send the form")
            is_name = (
                lower not in COMMON_STARTERS
                and lower not in SENTENCE_VERBS
                and lower not in COMMON_WORDS
                and lower not in OBLIGATIONS
                and lower not in AUXILIARIES
                and lower not in NEGATIONS
                and lower not in lowercase_words
            )
        if w.sentence_start[i] and run >= 2 and lower in COMMON_STARTERS:
            continue  # "The Northfield team": the run starts at the next word
        if lower in TITLES and j + 1 < n:
            j = max(j, i + 1)
        if is_name:
            out.append(_span(w, i, j))
        done = j
    return out


def answer_format_spans(text: str, w: _Words) -> list[tuple[int, int]]:
    """Answer formats of few-shot exemplars, every one of them: ``#### 72``, ``\\boxed{}``."""
    return [m.span() for m in _ANSWER_LINE.finditer(text)]


_ONLY_PUNCTUATION = re.compile(r"[\s,.;:'\"’”“()\-–—/]{0,4}")


def merge_spans(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping spans merged, and neighbours joined over a gap of punctuation
    alone ("February 1" + ", " + "2026"): the comma between two guarded phrases is theirs."""
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and (start <= out[-1][1] or _ONLY_PUNCTUATION.fullmatch(text, out[-1][1], start)):
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


Rule = Callable[[str, _Words], list[tuple[int, int]]]
RULES: dict[str, Rule] = {
    "negation": negation_spans,
    "limit": limit_spans,
    "condition": condition_spans,
    "obligation": obligation_spans,
    "number": number_spans,
    "number_clause": number_clause_spans,
    "date": date_spans,
    "quote": quote_spans,
    "identifier": identifier_spans,
    "entity": entity_spans,
    "answer_format": answer_format_spans,
}
"""Every guard rule by name, in the order they are documented."""
CUES: dict[str, Callable[[_Words], list[int]]] = {
    "negation": negation_cues,
    "limit": limit_cues,
    "condition": condition_cues,
    "obligation": obligation_cues,
    "number": _number_positions,
    "date": date_cues,
}
"""The rules whose cue has a scope beyond its minimal span: the rest of its clause."""


@dataclass(frozen=True)
class Guards:
    """Which meaning guards run. All on by default; ``NO_GUARDS`` turns them off."""

    negation: bool = True
    """A negation and what it negates, to the end of its clause."""
    limit: bool = True
    """Limits and comparisons (at most/least, only, more/less than, before/after/until,
    under/over/above/below/by + a number or date) with their operand."""
    condition: bool = True
    """Conditions and exceptions (if, unless, except, otherwise, provided, as long as) with
    their clause."""
    obligation: bool = True
    """Obligations and permissions (must, should, shall, may, can, required) with their verb
    and object."""
    number: bool = True
    """Numbers (digits or words) with their signs and units."""
    number_clause: bool = True
    """A number with the words just before it ("Overdraft fees of $35", "within 24
    hours"). Off in chains of thought (:data:`COT_GUARDS`), where every clause holds a
    number."""
    date: bool = True
    """Dates, weekdays and clock times."""
    quote: bool = True
    """Quoted strings and inline code."""
    identifier: bool = True
    """snake_case, camelCase, ALLCAPS, codes with digits, paths, URLs and e-mail addresses."""
    entity: bool = True
    """Names: runs of capitalised words that are not just a sentence's first word."""
    answer_format: bool = True
    """Every answer line of the form ``#### x``, ``\\boxed{x}`` or "The answer is x"."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"Guards.{f.name} must be true or false")

    @property
    def names(self) -> tuple[str, ...]:
        """The rules that are on."""
        return tuple(name for name in RULES if getattr(self, name))

    @classmethod
    def only(cls, names: Sequence[str]) -> Guards:
        """Guards with exactly the named rules on; an unknown name is a ValueError."""
        unknown = sorted(set(names) - set(RULES))
        if unknown:
            raise ValueError(f"unknown guard rules {unknown}; known: {', '.join(RULES)}")
        return cls(**{name: name in names for name in RULES})

    def spans(self, text: str) -> list[tuple[int, int]]:
        """``[start, end)`` spans of ``text`` that these rules keep verbatim."""
        names = self.names
        if not names or not text:
            return []
        with paused_collection():
            words = _words(text)
            found = [span for name in names for span in RULES[name](text, words)]
        return merge_spans(text, found)

    def spans_and_scopes(self, text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """:meth:`spans` and :meth:`scopes` from one reading of the text's words."""
        names = self.names
        if not names or not text:
            return [], []
        with paused_collection():
            words = _words(text)
            found = [span for name in names for span in RULES[name](text, words)]
            scoped = _scope_spans(text, words, names)
        return merge_spans(text, found), merge_spans(text, scoped)

    def scopes(self, text: str) -> list[tuple[int, int]]:
        """The clause each cue of these rules stands in (with a list it opens and a
        parenthesis after it): not kept whatever γ asks, like :meth:`spans`, but kept before
        any other word while γ allows, nearest the cue first (see
        :func:`tokenskip.compress.guard_priority`)."""
        names = [name for name in self.names if name in CUES]
        if not names or not text:
            return []
        with paused_collection():
            return merge_spans(text, _scope_spans(text, _words(text), names))

    def labeled_spans(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """Each guard span with the name of the rule that found it."""
        names = self.names
        if not names or not text:
            return []
        with paused_collection():
            words = _words(text)
            return [(name, span) for name in names for span in RULES[name](text, words)]


GUARDS = Guards()
"""Every meaning guard on: the default for prompts and documents."""
COT_GUARDS = Guards.only(("negation", "condition", "quote", "identifier", "answer_format"))
"""The default for chains of thought: negations, conditions, quotes, identifiers and answer
lines. In a chain of thought the math force-keep already holds every number and operator,
and the equations restate the limits and units; guarding those too would leave a GSM8K
solution about 72% forced and the TokenSkip ratio knob nothing to learn below that."""
NO_GUARDS = Guards.only(())
"""No meaning guards (for experiments that measure what they cost)."""
