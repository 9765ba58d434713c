"""The GSM8K task: load the problems, build the prompts, read the model's answer, grade it.

Everything a GSM8K run needs that is specific to GSM8K lives here, as small pure functions:
the loader (local JSONL files, or the ``openai/gsm8k`` hub dataset on explicit request), the
chat prompt (zero- or k-shot, with an optional TokenSkip ratio suffix after the question), the
answer extractor and the grader. Generation, timing, token counting and reports are not here:
they belong to the evaluation runner, which calls these functions.

How ``extract_answer`` reads a generation, first rule that finds a number wins:

1. the last ``#### X`` whose first non-blank text is a number (``#### Step 1`` is a heading,
   not an answer); it wins over everything, a stray number after it included;
2. the last ``\\boxed{...}`` (nested braces, ``\\frac``, ``\\$``, ``\\%`` and ``\\text`` read);
3. the last "The (final) answer is X" / "Answer: X" where X is a number right away ("the
   answer is right, 7 days" is no answer);
4. the last number in the text.

Inside the text that follows a marker (to the end of its first non-blank line, or the box) the
answer is the first number after the last ``=`` ("#### 5 + 3 = 8" reads 8), and the first number
if there is no ``=`` ("The answer is 18 dollars, 9 eggs at $2" reads 18). Numbers may carry
``$``, ``%``, thousands commas (``1,234``; "3, 4" is two numbers), units written right after
them (``12kg``) and a sentence's period; ``-5`` and ``−5`` are negative but ``10 -5`` and
``10 - 5`` are not; ``3/4`` and ``\\frac{3}{4}`` are 0.75. Mixed numbers (``2 1/2``) are not
recognized: they read as their last part (0.5), or as their first (2) right after a marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from tokenskip.cot import split_cot
from tokenskip.errors import InvalidInputError

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k"
"""Where the data is looked for when no source is given (``$TOKENSKIP_GSM8K_DIR`` overrides)."""
DIR_ENV = "TOKENSKIP_GSM8K_DIR"


def default_dir() -> Path:
    """``$TOKENSKIP_GSM8K_DIR`` if set, else :data:`DEFAULT_DIR` (``../shared`` of the clone)."""
    return Path(os.environ[DIR_ENV]).expanduser() if os.environ.get(DIR_ENV) else DEFAULT_DIR


HUB_NAMES = ("openai/gsm8k", "hf:openai/gsm8k")
REL_TOL = 1e-9
"""``is_correct``'s relative tolerance: only above 1e6 does it exceed the default 1e-3."""

INSTRUCTION = (
    "Solve the math problem step by step. "
    "Then write the final answer on its own last line in the form: #### <number>"
)


@dataclass(frozen=True)
class Problem:
    """One GSM8K problem."""

    index: int
    """0-based position in the split (skipped records keep their position)."""
    question: str
    """The problem statement."""
    solution: str
    """The reference solution, calculator annotations and the final ``#### N`` line included."""
    answer: str
    """The reference final answer: the text after ``#### ``, commas removed (``"1234"``)."""


@dataclass(frozen=True)
class Dataset:
    """The problems of one split and where they came from."""

    problems: tuple[Problem, ...]
    """The problems in split order (the first ``limit`` if one was given)."""
    source: str
    """The file read, or the hub dataset (``hf:openai/gsm8k (main, test)``)."""
    sha256: str
    """Hash of the file's bytes, or of the hub dataset's rows as JSON lines."""
    skipped: tuple[str, ...] = ()
    """One ``file:line: reason`` message per malformed record skipped (``on_error="skip"``)."""

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)


# ---------------------------------------------------------------------------- loading


class _RecordError(Exception):
    """A record that is not a GSM8K problem; the message says why."""


def load_gsm8k(
    source: str | Path | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
) -> Dataset:
    """Load one split of GSM8K.

    ``source``: None for ``DEFAULT_DIR/{split}.jsonl``; a ``.jsonl`` file; a directory holding
    ``{split}.jsonl``; or ``"openai/gsm8k"`` (``"hf:openai/gsm8k"``) for the Hugging Face hub,
    which needs internet and the ``datasets`` package. Malformed records raise an
    InvalidInputError naming file and line, or with ``on_error="skip"`` are listed in
    ``Dataset.skipped``. ``limit`` keeps the first N problems.
    """
    _check_options(split, limit, on_error)
    if isinstance(source, str) and source in HUB_NAMES:
        rows = _hub_rows(split)
        sha = hashlib.sha256()
        for row in rows:
            sha.update((json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode())
        name = f"hf:openai/gsm8k (main, {split})"
        records = ((f"{name} row {i}", row) for i, row in enumerate(rows))
        return _dataset(records, name, sha.hexdigest(), limit=limit, on_error=on_error)
    path = _resolve(source, split)
    data = _read(path)
    text = _decode(data, path)
    return _dataset(
        _jsonl_records(text, str(path)),
        str(path),
        hashlib.sha256(data).hexdigest(),
        limit=limit,
        on_error=on_error,
    )


def _check_options(split: str, limit: int | None, on_error: str) -> None:
    if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", split):
        raise InvalidInputError(f"split must be a name such as 'test' or 'train', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be a positive integer or None, got {limit!r}")
    if on_error not in ("raise", "skip"):
        raise InvalidInputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _resolve(source: str | Path | None, split: str) -> Path:
    """The JSONL file a source names."""
    how = (
        "pass a path to a GSM8K .jsonl file or to a directory holding "
        f"{split}.jsonl, or 'openai/gsm8k' to download it from the Hugging Face hub"
    )
    if source is None:
        path = default_dir() / f"{split}.jsonl"
        if not path.is_file():
            raise InvalidInputError(f"no GSM8K data found at {path}; {how}")
        return path
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / f"{split}.jsonl"
        if not path.is_file():
            raise InvalidInputError(f"directory {path.parent} has no {split}.jsonl; {how}")
    elif not path.exists():
        raise InvalidInputError(f"no such file or directory: {path}; {how}")
    return path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InvalidInputError(f"cannot read {path}: {e.strerror or e}") from None


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"{path} is not UTF-8 text (byte {e.start})") from None


def _hub_rows(split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise InvalidInputError(
            "loading 'openai/gsm8k' needs the datasets package: pip install datasets"
        ) from None
    try:
        return [dict(row) for row in datasets.load_dataset("openai/gsm8k", "main", split=split)]
    except Exception as e:  # network, missing split, hub errors: all mean "cannot load"
        raise InvalidInputError(f"cannot load openai/gsm8k ({split}) from the hub: {e}") from None


def _jsonl_records(text: str, name: str) -> Iterator[tuple[str, Any]]:
    """``(file:line, record)`` for every non-blank line; bad JSON becomes a _RecordError."""
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line separators.
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            record: Any = json.loads(line)
        except json.JSONDecodeError as e:
            record = _RecordError(f"not valid JSON: {e.msg} at column {e.colno}")
        yield f"{name}:{lineno}", record


def _dataset(
    records: Iterable[tuple[str, Any]],
    source: str,
    sha256: str,
    *,
    limit: int | None,
    on_error: str,
) -> Dataset:
    problems: list[Problem] = []
    skipped: list[str] = []
    for index, (where, record) in enumerate(records):
        if limit is not None and len(problems) >= limit:
            break
        try:
            problems.append(_problem(index, record))
        except _RecordError as e:
            if on_error == "raise":
                raise InvalidInputError(f"{where}: {e}") from None
            skipped.append(f"{where}: {e}")
    if not problems:
        reason = f" ({len(skipped)} malformed records skipped)" if skipped else ""
        raise InvalidInputError(f"{source} holds no GSM8K problems{reason}")
    return Dataset(tuple(problems), source, sha256, tuple(skipped))


def _problem(index: int, record: Any) -> Problem:
    if isinstance(record, _RecordError):
        raise record
    if not isinstance(record, dict):
        raise _RecordError(f"expected a JSON object, got {type(record).__name__}")
    for key in ("question", "answer"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise _RecordError(f"missing or empty {key!r}")
    solution = record["answer"]
    if "####" not in solution:
        raise _RecordError("the answer has no '#### <number>' line")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", answer):
        raise _RecordError(f"the final answer {answer!r} is not a number")
    return Problem(index=index, question=record["question"], solution=solution, answer=answer)


def strip_calculator(text: str) -> str:
    """Remove GSM8K's calculator annotations: ``48/2 = <<48/2=24>>24`` → ``48/2 = 24``."""
    return re.sub(r"<<[^<>]*>>", "", text)


# ---------------------------------------------------------------------------- prompts


def build_messages(
    question: str, *, shots: Sequence[Problem] = (), instruction: str = INSTRUCTION
) -> list[dict[str, str]]:
    """Chat messages: the instruction as system turn, k exemplar turn pairs, the question."""
    if not isinstance(question, str) or not question.strip():
        raise InvalidInputError("the question must be a non-empty string")
    messages = [{"role": "system", "content": instruction}] if instruction else []
    for shot in shots:
        messages.append({"role": "user", "content": shot.question})
        messages.append({"role": "assistant", "content": strip_calculator(shot.solution)})
    messages.append({"role": "user", "content": question})
    return messages


def build_prompt(
    hf_tokenizer: Any,
    question: str,
    *,
    shots: Sequence[Problem] = (),
    instruction: str = INSTRUCTION,
    suffix: str = "",
) -> str:
    """The prompt text, ready for generation (ends with the assistant header).

    ``suffix`` is appended to the question inside its user turn: the TokenSkip ratio suffix
    (``question + DELIM + γ + DELIM``) goes there.
    """
    messages = build_messages(question, shots=shots, instruction=instruction)
    messages[-1]["content"] += suffix
    try:
        prompt = hf_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    except ValueError as e:  # transformers raises ValueError when there is no chat template
        raise InvalidInputError(f"cannot build a chat prompt with this tokenizer: {e}") from None
    return str(prompt)


def shots_from(train: Dataset, k: int, seed: int = 0) -> tuple[Problem, ...]:
    """``k`` exemplars drawn from ``train``, the same ones for the same seed."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(train.problems):
        raise InvalidInputError(
            f"k must be an integer in [0, {len(train.problems)}] for this data set, got {k!r}"
        )
    picked = random.Random(seed).sample(range(len(train.problems)), k)
    return tuple(train.problems[i] for i in picked)


# ---------------------------------------------------------------------------- answers

_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_UNSIGNED = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
_VALUE = rf"{_UNSIGNED}(?:/{_UNSIGNED})?"
# A minus is a sign only where it cannot be subtraction: right before the number, and not
# after a word, a bracket, or a digit and one space ("10 - 5", "10 -5" hold no negative number).
_NUMBER = re.compile(
    rf"(?P<sign>(?<![\w)\]}}])(?<![\d)\]}}] )[-−])?\$?(?<![\w.])(?P<value>{_VALUE})(?!\d)"
)
_ONE_NUMBER = re.compile(
    rf"\s*(?P<sign>[-−+])?\s*\$?\s*(?P<value>{_VALUE})\s*%?\s*(?:[^\W\d_]+(?:\s+[^\W\d_]+)*)?\s*\.?\s*"
)
_HASHES = re.compile(r"####")
_BOXED = re.compile(r"\\boxed\s*\{")
_PHRASE = re.compile(r"(?i)\banswer\s*(?:is\b\s*:?|:|=)")
_LEADING_NUMBER = re.compile(r"[\s$*{(\[]*[-−]?\$?\.?\d")

_LATEX = (
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"\1/\2"),
    (re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)"), r"\1/\2"),
    (re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\[,!;:]"), ""),
    (re.compile(r"\\([$%])"), r"\1"),
    (re.compile(r"\\[A-Za-z]+"), " "),
)


def _delatex(text: str) -> str:
    """Plain numbers out of LaTeX: ``\\frac{3}{4}`` → ``3/4``, ``\\$18`` → ``$18``."""
    for pattern, replacement in _LATEX:
        text = pattern.sub(replacement, text)
    return text


def _parse(sign: str | None, value: str) -> Fraction | None:
    """The exact value of a matched number, None for a zero denominator."""
    parts = [Fraction(part.replace(",", "")) for part in value.split("/")]
    if len(parts) == 2:
        if parts[1] == 0:
            return None
        parts = [parts[0] / parts[1]]
    return -parts[0] if sign in ("-", "−") else parts[0]


def _format(value: Fraction) -> str:
    """Canonical text: integers bare, other values with up to 10 decimals, no trailing zeros."""
    if value.denominator == 1:
        return str(value.numerator)
    with localcontext() as ctx:
        ctx.prec = 60
        decimal = (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("1e-10"))
    if decimal == 0:
        return "0"
    return format(decimal.normalize(), "f")


def _value_of(text: str) -> Fraction | None:
    match = _ONE_NUMBER.fullmatch(_delatex(text))
    return _parse(match["sign"], match["value"]) if match else None


def normalize_number(s: str) -> str | None:
    """One number written any common way, in canonical form; None if ``s`` is not one number.

    ``"1,234"`` → ``"1234"``, ``"$18.00"`` → ``"18"``, ``"−5"`` → ``"-5"``, ``"0.50"`` →
    ``"0.5"``, ``"3/4"`` and ``"\\frac{3}{4}"`` → ``"0.75"``, ``"25%"`` → ``"25"``, ``"18
    dollars"`` → ``"18"``; ``"5 + 3"`` and ``"3, 4"`` → None.
    """
    value = _value_of(s)
    return None if value is None else _format(value)


def _numbers(text: str) -> list[str]:
    """Every number in ``text``, in order, canonical."""
    found = (_parse(m["sign"], m["value"]) for m in _NUMBER.finditer(_delatex(text)))
    return [_format(v) for v in found if v is not None]


def _answer_in(region: str) -> str | None:
    """The answer a marker points at: the first number after the last ``=``, or the first."""
    numbers = _numbers(region.rsplit("=", 1)[-1])
    return numbers[0] if numbers else None


def _line_after(text: str, end: int) -> str:
    """What follows a marker: up to the end of the first non-blank line after it."""
    return text[end:].lstrip().split("\n", 1)[0]


def _balanced(text: str, start: int) -> str | None:
    """The content of the brace group opened just before ``start``; None if never closed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _from_hashes(text: str) -> str | None:
    for match in reversed(list(_HASHES.finditer(text))):
        region = _delatex(_line_after(text, match.end()))
        if _LEADING_NUMBER.match(region) and (answer := _answer_in(region)) is not None:
            return answer
    return None


def _from_boxed(text: str) -> str | None:
    for match in reversed(list(_BOXED.finditer(text))):
        content = _balanced(text, match.end())
        if content is not None and (answer := _answer_in(content)) is not None:
            return answer
    return None


def _from_phrase(text: str) -> str | None:
    for match in reversed(list(_PHRASE.finditer(text))):
        region = _delatex(_line_after(text, match.end()))
        if _LEADING_NUMBER.match(region) and (answer := _answer_in(region)) is not None:
            return answer
    return None


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a generation, canonical (``"18"``, ``"0.75"``), or None.

    Rules and their order are in the module docstring: ``####``, ``\\boxed{}``, "the answer
    is", then the last number.
    """
    for rule in (_from_hashes, _from_boxed, _from_phrase):
        if (answer := rule(text)) is not None:
            return answer
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def is_correct(predicted: str | None, reference: str, tol: float = 1e-3) -> bool:
    """Whether ``predicted`` equals ``reference`` within ``tol`` (absolute).

    Beyond a million the tolerance grows with the number (``REL_TOL`` relative), so that float
    noise in huge answers is not a miss; GSM8K's answers are integers, so ``18.01`` for ``18``
    is wrong (a ``tol * max(1, |reference|)`` rule would have accepted it).
    """
    if tol < 0:
        raise InvalidInputError(f"tol must be >= 0, got {tol}")
    expected = _value_of(reference)
    if expected is None:
        raise InvalidInputError(f"the reference answer {reference!r} is not a number")
    if predicted is None:
        return False
    got = _value_of(predicted)
    if got is None:
        return False
    # Exact arithmetic: in floats 18.001 - 18 is 0.0010000000000012, just over 1e-3.
    allowed = max(Fraction(repr(tol)), Fraction(repr(REL_TOL)) * abs(expected))
    return abs(got - expected) <= allowed


def cot_and_answer(text: str) -> tuple[str, str]:
    """The reasoning part and the final-answer part of a generation ("" when there is none)."""
    parts = split_cot(text)
    return parts.reasoning, parts.answer
