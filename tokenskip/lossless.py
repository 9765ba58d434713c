"""Lossless transforms: fewer tokens, the same information, before any word is dropped.

In the order they run:

1. ``json``: JSON documents and JSON blocks that start a line are minified; an array of
   objects with the same keys (nested objects flattened to ``a.b`` columns) becomes a table:
   a header ``name[N]{col,col}:`` then one row per line. A column with the same value in
   every row is stated once in the header (``every row also {...}``) instead of N times.
   Cells are bare when that is unambiguous and JSON-quoted otherwise (a string that reads
   as a number, holds a comma, a quote or a line break); ``null`` is an empty cell; nested
   arrays are minified JSON. :func:`expand_tables` reverses it exactly, which the tests
   check: no value, type, row or array order is lost (only the order of keys inside an
   object, which JSON does not give a meaning, may change).
2. ``whitespace``: trailing spaces, runs of spaces inside a line (not the indentation, not
   lines holding quotes, not fenced code), and more than one blank line.
3. ``repeats``: a line or block of up to 8 lines repeated back to back 3 or more times is
   written once, followed by ``[previous line repeated N more times]``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenskip.gcpause import paused_collection

_FENCED = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_JSON_START = re.compile(r"(?m)^[ \t]*[\[{]")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TRAILING = re.compile(r"[ \t]+(?=\n|\Z)")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?\Z")
_HEADER = re.compile(
    r"^(?P<name>[\w.\-]*)\[(?P<rows>\d+)\]\{(?P<cols>[^{}]*)\}(?: every row also (?P<const>\{.*\}))?:$"
)
_BAD_KEY = re.compile(r"[.,{}\[\]\n\"]|^\s|\s$")
_NEEDS_QUOTES = re.compile(r"[,\"\n\r\t]|  |^[\[{\s]|\s$")
MIN_TABLE_ROWS = 3
MAX_BLOCK_LINES = 8
MIN_REPEATS = 3


@dataclass(frozen=True)
class LosslessResult:
    """The transformed text and which transforms changed it."""

    text: str
    transforms: tuple[str, ...]
    """Names of the transforms that changed the text: ``json``, ``whitespace``, ``repeats``."""
    data_spans: tuple[tuple[int, int], ...] = ()
    """``[start, end)`` of each compacted JSON document or block in ``text``."""
    is_data: bool = False
    """The whole text is one JSON document (a tool output, an API response)."""


class _Raw(str):
    """A JSON number kept exactly as written (``1.50`` stays ``1.50``)."""


def _loads(text: str) -> Any:
    return json.loads(
        text,
        parse_float=_Raw,
        parse_int=_Raw,
        parse_constant=_Raw,
        object_pairs_hook=_pairs,
    )


class _Object(list):
    """A JSON object as its (key, value) pairs: order and duplicate keys preserved."""


def _pairs(pairs: list[tuple[str, Any]]) -> _Object:
    return _Object(pairs)


def _dump(value: Any) -> str:
    """Minified JSON of a parsed value, numbers byte for byte as they came."""
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, _Object):
        return "{" + ",".join(f"{_quote(k)}:{_dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    if isinstance(value, str):
        return _quote(value)
    return json.dumps(value)  # True, False, None


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# -- tables ------------------------------------------------------------------------------


def _flatten(obj: _Object, prefix: str = "") -> list[tuple[str, Any]] | None:
    """Leaf columns of an object; None if a key cannot be a column name (dots, braces...)."""
    out: list[tuple[str, Any]] = []
    for key, value in obj:
        if not _column_name(key):
            return None
        name = prefix + key
        if isinstance(value, _Object) and value:
            inner = _flatten(value, name + ".")
            if inner is None:
                return None
            out.extend(inner)
        else:
            out.append((name, value))
    return out


@functools.lru_cache(maxsize=4096)
def _column_name(key: str) -> bool:
    return bool(key) and not _BAD_KEY.search(key)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and not isinstance(value, _Raw):
        if (
            not value
            or _NEEDS_QUOTES.search(value)
            or value in ("true", "false", "null")
            or _NUMBER.match(value)
        ):
            return _quote(value)
        return value
    return _dump(value)


def _table(name: str, rows: list[Any]) -> str | None:
    """``rows`` as a table, or None when they are not objects with one shared key list."""
    if len(rows) < MIN_TABLE_ROWS or not all(isinstance(r, _Object) and r for r in rows):
        return None
    flat = [_flatten(r) for r in rows]
    if any(f is None for f in flat):
        return None
    columns = [k for k, _ in flat[0]]
    if len(set(columns)) != len(columns) or any([k for k, _ in f] != columns for f in flat):
        return None
    if any(c == "" for c in columns) or (name and not re.fullmatch(r"[\w.\-]+", name)):
        return None
    values = [[v for _, v in f] for f in flat]
    constant = [
        i
        for i in range(len(columns))
        if all(_dump_cell_key(row[i]) == _dump_cell_key(values[0][i]) for row in values)
    ]
    if len(constant) == len(columns):
        constant = constant[1:]  # keep one column so every row has a line
    varying = [i for i in range(len(columns)) if i not in constant]
    header = f"{name}[{len(rows)}]{{{','.join(columns[i] for i in varying)}}}"
    if constant:
        fixed = (
            "{" + ",".join(f"{_quote(columns[i])}:{_dump(values[0][i])}" for i in constant) + "}"
        )
        header += f" every row also {fixed}"
    lines = [header + ":"]
    lines.extend(",".join(_cell(row[i]) for i in varying) for row in values)
    return "\n".join(lines)


def _dump_cell_key(value: Any) -> str:
    return _dump(value) if not isinstance(value, str) or isinstance(value, _Raw) else "s" + value


def _document(value: Any) -> str:
    """A parsed JSON value as minified JSON, with arrays of records as tables."""
    table = _table("", value) if isinstance(value, list) else None
    if table is not None:
        return table
    if isinstance(value, _Object):
        rest, tables = [], []
        for key, item in value:
            found = _table(key, item) if isinstance(item, list) else None
            if found is None:
                rest.append((key, item))
            else:
                tables.append(found)
        if tables and len({k for k, _ in value}) == len(value):
            head = [_dump(_Object(rest))] if rest else []
            return "\n".join(head + tables)
    return _dump(value)


def _split_cells(line: str) -> list[Any]:
    decoder = json.JSONDecoder(
        parse_float=_Raw, parse_int=_Raw, parse_constant=_Raw, object_pairs_hook=_pairs
    )
    cells, i = [], 0
    while True:
        if i < len(line) and line[i] in '"[{':
            value, i = decoder.raw_decode(line, i)
            cells.append(value)
        else:
            j = line.find(",", i)
            raw = line[i:] if j < 0 else line[i:j]
            i = len(line) if j < 0 else j
            if raw == "":
                cells.append(None)
            elif raw in ("true", "false"):
                cells.append(raw == "true")
            elif raw == "null":
                cells.append(None)
            elif _NUMBER.match(raw):
                cells.append(_Raw(raw))
            else:
                cells.append(raw)
        if i >= len(line):
            return cells
        if line[i] != ",":
            raise ValueError(f"expected ',' at {i} in {line!r}")
        i += 1


def _unflatten(pairs: list[tuple[str, Any]]) -> _Object:
    root = _Object()
    for key, value in pairs:
        node = root
        *path, last = key.split(".")
        for part in path:
            found = next((v for k, v in node if k == part), None)
            if found is None:
                found = _Object()
                node.append((part, found))
            node = found
        node.append((last, value))
    return root


def expand_tables(text: str) -> Any:
    """The JSON value a :func:`lossless` JSON document stands for (tables back to arrays)."""
    lines = text.split("\n")
    head: Any = None
    tables: list[tuple[str, list[Any]]] = []
    i = 0
    if lines and not _HEADER.match(lines[0]):
        head = _loads(lines[0])
        i = 1
    while i < len(lines):
        m = _HEADER.match(lines[i])
        if m is None:
            raise ValueError(f"line {i + 1} is not a table header: {lines[i]!r}")
        columns = m["cols"].split(",") if m["cols"] else []
        fixed = list(_loads(m["const"])) if m["const"] else []
        rows = []
        for line in lines[i + 1 : i + 1 + int(m["rows"])]:
            cells = _split_cells(line)
            row = dict(zip(columns, cells))
            row.update(dict(fixed))
            order = list(row)
            rows.append(_unflatten([(k, row[k]) for k in order]))
        tables.append((m["name"], rows))
        i += 1 + int(m["rows"])
    if head is None and len(tables) == 1 and tables[0][0] == "":
        return _plain(tables[0][1])
    obj = _Object(list(head) if head is not None else [])
    obj.extend(tables)
    return _plain(obj)


def _plain(value: Any) -> Any:
    """Parsed values as ordinary Python JSON values (for comparisons)."""
    if isinstance(value, _Raw):
        return json.loads(value)
    if isinstance(value, _Object):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# -- the transforms --------------------------------------------------------------------


def compact_json(text: str) -> str:
    """JSON documents and line-initial JSON blocks minified, record arrays as tables."""
    with paused_collection():
        return _compact_json(text)


def _compact_json(text: str) -> str:
    out = []
    for start, end, value in json_blocks(text):
        out.append(text[start:end] if value is None else _document(value))
    return "".join(out)


def json_blocks(text: str) -> list[tuple[int, int, Any]]:
    """``text`` cut into pieces ``(start, end, value)``: JSON documents or line-initial JSON
    blocks with their parsed value, and the text between them with ``None``."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            value = _loads(stripped)
        except ValueError:
            value = None
        if value is not None:
            lead = len(text) - len(text.lstrip())
            pieces = [(0, lead, None)] if lead else []
            pieces.append((lead, lead + len(stripped), value))
            if lead + len(stripped) < len(text):
                pieces.append((lead + len(stripped), len(text), None))
            return pieces
    pieces, last = [], 0
    decoder = json.JSONDecoder(
        parse_float=_Raw, parse_int=_Raw, parse_constant=_Raw, object_pairs_hook=_pairs
    )
    for m in _JSON_START.finditer(text):
        start = m.end() - 1
        if start < last:
            continue
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if not isinstance(value, (list, _Object)) or end - start < 16:
            continue
        if start > last:
            pieces.append((last, start, None))
        pieces.append((start, end, value))
        last = end
    if last < len(text) or not pieces:
        pieces.append((last, len(text), None))
    return pieces


def _outside_code(text: str, transform: Callable[[str], str]) -> str:
    out, last = [], 0
    for m in _FENCED.finditer(text):
        out.append(transform(text[last : m.start()]))
        out.append(m.group())
        last = m.end()
    out.append(transform(text[last:]))
    return "".join(out)


def _whitespace(part: str) -> str:
    part = _TRAILING.sub("", part)
    part = _BLANK_LINES.sub("\n\n", part)
    lines = part.split("\n")
    for i, line in enumerate(lines):
        if '"' not in line and "'" not in line and "`" not in line:
            lines[i] = _INNER_SPACES.sub(" ", line)
    return "\n".join(lines)


def normalize_whitespace(text: str) -> str:
    """Trailing spaces, inner runs of spaces and extra blank lines removed (not in code)."""
    return _outside_code(text, _whitespace)


def collapse_repeats(text: str) -> str:
    """Back-to-back repeats of a line or block (3 or more) written once, with a count."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        done = False
        for size in range(1, MAX_BLOCK_LINES + 1):
            block = lines[i : i + size]
            if len(block) < size or not any(line.strip() for line in block):
                break
            times = 1
            while lines[i + times * size : i + (times + 1) * size] == block:
                times += 1
            if times >= MIN_REPEATS:
                out.extend(block)
                what = "line" if size == 1 else f"{size} lines"
                out.append(f"[previous {what} repeated {times - 1} more times]")
                i += times * size
                done = True
                break
        if not done:
            out.append(lines[i])
            i += 1
    return "\n".join(out)


def lossless(text: str) -> LosslessResult:
    """Every lossless transform; ``transforms`` names those that changed the text.

    JSON documents and blocks are compacted; the prose around them gets the whitespace and
    repeat transforms. ``data_spans`` are where the compacted JSON stands in the result:
    data, to be kept whole by any lossy step that follows.
    """
    with paused_collection():
        pieces = json_blocks(text)
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    applied: set[str] = set()
    position = 0
    for start, end, value in pieces:
        original = text[start:end]
        if value is None:
            new = original
            for name, transform in (
                ("whitespace", normalize_whitespace),
                ("repeats", collapse_repeats),
            ):
                changed = transform(new)
                if changed != new:
                    applied.add(name)
                    new = changed
        else:
            with paused_collection():
                new = _document(value)
            if new != original:
                applied.add("json")
            spans.append((position, position + len(new)))
        out.append(new)
        position += len(new)
    order = tuple(name for name in ("json", "whitespace", "repeats") if name in applied)
    result = "".join(out)
    is_data = (
        len(spans) == 1
        and result[: spans[0][0]].strip() == ""
        and result[spans[0][1] :].strip() == ""
    )
    return LosslessResult(result, order, tuple(spans), is_data)
