"""Record arrays as compact tables, and back, exactly: the ``json`` lossless transform.

An array of objects that mostly share keys becomes a table: a header ``name[N]{col,col}:``
then one row per line, cells joined by commas. Columns are the leaf paths held by at least
half of the rows (nested objects flattened to ``a.b`` columns); the rest of a row, if any,
is one JSON object in a last cell (``...`` ends the header); at most a tenth of the rows
may hold fewer than half of the columns. A column with the same value in every row is
stated once in the header (``every row also {...}``) instead of N times. Cells are bare when
that is unambiguous and JSON-quoted otherwise (a string that reads as a number, holds a
comma, a quote or a line break). A column whose values are all lists is marked ``col[]``
and its scalars are joined by ``|`` (``prod|stable``; an item holding ``|`` is quoted,
``null`` is spelled out, a list holding lists or objects is written as JSON). A column some
rows lack is marked ``col?``. The empty cell is: missing in a ``?`` column, else the empty
list in a ``[]`` column, else ``null``; ``null`` and ``[]`` are written out where the empty
cell means something else. Other arrays and objects in cells are minified JSON whose keys
are bare where they read as names (``{type:"dict","a b":1}``). Arrays of objects inside
objects become tables too, named by their dotted path (``data.results[300]{...}:``) after a
first line holding the rest of the document.

:func:`expand_tables` reverses it exactly, which the tests check: no value, type, row or
array order is lost, and a missing key stays missing (only the order of keys inside an
object, which JSON does not give a meaning, may change). Values are parsed with
:func:`loads`, which keeps numbers as written (``1.50`` stays ``1.50``) and objects as
their ordered pairs.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?\Z")
_HEADER = re.compile(
    r"^(?P<name>[\w.\-]*)\[(?P<rows>\d+)\]\{(?P<cols>[^{}]*)\}(?: every row also (?P<const>\{.*\}))?:$"
)
_BAD_KEY = re.compile(r"[.,{}\[\]\n\"]|^\s|\s$|\?$")
_NEEDS_QUOTES = re.compile(r"[,\"\n\r\t]|  |^[\[{\s]|\s$")
_BARE_KEY = re.compile(r"[A-Za-z_][\w.\-]*\Z")
_BARE_KEYS = re.compile(r'"(?:[^"\\]|\\.)*"|(?<=[{,])([A-Za-z_][\w.\-]*)(?=:)')
_JSON_PIECES = re.compile(r'"(?:[^"\\]|\\.)*"|[^"\[\]{}]+|.', re.DOTALL)
_TABLE_NAME = re.compile(r"[\w\-]+\Z")
_CELL_END = re.compile(",")
_ITEM_END = re.compile(r"[|,]")
_EMPTY: Any = object()
"""An empty cell, before its column says what it stands for (missing, null or [])."""
MIN_TABLE_ROWS = 3
MAX_ODD_ROWS = 0.1
"""Share of a table's rows that may hold fewer than half of its columns."""


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


_DECODER = json.JSONDecoder(
    parse_float=_Raw, parse_int=_Raw, parse_constant=_Raw, object_pairs_hook=_pairs
)


_quote = encode_basestring
"""A JSON string literal, non-ASCII kept (``json.dumps(text, ensure_ascii=False)``)."""


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
    return "null" if value is None else "true" if value else "false"


def _dump_cell(value: Any) -> str:
    """Minified JSON in a cell, object keys that read as names left bare: ``{id:1,"a b":2}``."""
    if isinstance(value, _Object):
        return "{" + ",".join(f"{_cell_key(k)}:{_dump_cell(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump_cell(v) for v in value) + "]"
    return _dump(value)


@functools.lru_cache(maxsize=4096)
def _cell_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _quote(key)


# -- tables ------------------------------------------------------------------------------


def _flatten(
    obj: _Object, prefix: str = "", out: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Leaf columns of an object, path → value; None if a key cannot be a column name (dots,
    braces...) or is repeated. An empty object is a leaf."""
    out = {} if out is None else out
    for key, value in obj:
        if not _column_name(key):
            return None
        name = prefix + key
        if isinstance(value, _Object) and value:
            if _flatten(value, name + ".", out) is None:
                return None
        elif name in out:
            return None
        else:
            out[name] = value
    if len(obj) > 1 and len({k for k, _ in obj}) != len(obj):
        return None
    return out


@functools.lru_cache(maxsize=4096)
def _column_name(key: str) -> bool:
    return bool(key) and not _BAD_KEY.search(key)


def _is_bare(text: str) -> bool:
    """A string that reads back as itself in a cell without quotes."""
    return not (
        not text
        or _NEEDS_QUOTES.search(text)
        or text in ("true", "false", "null")
        or _NUMBER.match(text)
    )


@functools.lru_cache(maxsize=8192)
def _text_cell(text: str) -> str:
    return text if _is_bare(text) else _quote(text)


def _cell(value: Any) -> str:
    """A cell of a plain column: null is an empty cell."""
    kind = type(value)
    if kind is str:
        return _text_cell(value)
    if kind is _Raw:
        return value
    return "" if value is None else _dump_cell(value)


def _optional_cell(value: Any) -> str:
    """A cell of an optional column, where the empty cell means missing."""
    return "null" if value is None else _cell(value)


def _item(value: Any) -> str:
    """One scalar of a list cell: like a cell, but ``null`` spelled out and ``|`` quoted."""
    if type(value) is str:
        return value if "|" not in value and _is_bare(value) else _quote(value)
    return "null" if value is None else _dump(value)


def _list_cell(items: list[Any]) -> str:
    """A cell of a list column: items joined by ``|``, ``[]`` for none."""
    if not items:
        return "[]"
    if any(isinstance(v, list) for v in items):  # a nested list or object: JSON as it is
        return _dump_cell(items)
    return "|".join(map(_item, items))


def _required_list_cell(items: list[Any]) -> str:
    """A cell of a list column held by every row: the empty cell is the empty list."""
    return _list_cell(items) if items else ""


def _same_key(value: Any) -> Any:
    """What two cells must share to be the same value (``1`` the number is not ``"1"``)."""
    return _dump(value) if isinstance(value, list) else (type(value), value)


def _table(name: str, rows: list[Any]) -> str | None:
    """``rows`` as a table, or None when they are not objects that mostly share keys.

    Columns are the leaf paths held by at least half of the rows; the rest of a row, if
    any, is one JSON object in a last cell (``...`` in the header).
    """
    if len(rows) < MIN_TABLE_ROWS or not all(isinstance(r, _Object) for r in rows):
        return None
    flat: list[dict[str, Any]] = []
    for row in rows:
        leaves = _flatten(row)
        if leaves is None:
            return None
        flat.append(leaves)
    num_rows = len(rows)
    present = Counter(itertools.chain.from_iterable(flat))
    shared = [c for c, n in present.items() if 2 * n >= num_rows]
    shared_set = set(shared)
    num_shared = [len(shared_set.intersection(f)) for f in flat]
    num_odd = sum(2 * n < len(shared) for n in num_shared)
    if not shared or num_odd > num_rows * MAX_ODD_ROWS:
        return None
    first = flat[0]
    constant = [
        c
        for c in shared
        if present[c] == num_rows and all(_same_key(f[c]) == _same_key(first[c]) for f in flat)
    ]
    if len(constant) == len(shared):
        constant = constant[1:]  # keep one column so every row has a line
    columns = [
        (c, present[c] < num_rows, all(type(f[c]) is list for f in flat if c in f))
        for c in shared
        if c not in constant
    ]
    has_extras = len(shared) < len(present)
    specs = [c + ("[]" if is_list else "") + ("?" if opt else "") for c, opt, is_list in columns]
    header = f"{name}[{num_rows}]{{{','.join(specs + ['...'] * has_extras)}}}"
    if constant:
        fixed = "{" + ",".join(f"{_quote(c)}:{_dump(first[c])}" for c in constant) + "}"
        header += f" every row also {fixed}"
    lines = [header + ":"]
    encoders = [(c, _ENCODERS[is_list, is_optional]) for c, is_optional, is_list in columns]
    for row, leaves, num in zip(rows, flat, num_shared):
        get = leaves.get
        cells = ["" if (v := get(c, _EMPTY)) is _EMPTY else encode(v) for c, encode in encoders]
        if num < len(leaves):  # keys beyond the columns
            cells.append(_dump_cell(_residual(row, "", shared_set)))
        lines.append(",".join(cells))
    return "\n".join(lines)


_ENCODERS: dict[tuple[bool, bool], Callable[[Any], str]] = {
    (False, False): _cell,
    (False, True): _optional_cell,
    (True, False): _required_list_cell,
    (True, True): _list_cell,
}
"""Cell encoder by (is a list column, is optional)."""


def _residual(obj: _Object, prefix: str, columns: set[str]) -> _Object:
    """``obj`` less the leaves at ``columns``; an object left empty by that is dropped."""
    rest = _Object()
    for key, value in obj:
        name = prefix + key
        if isinstance(value, _Object) and value:
            value = _residual(value, name + ".", columns)
            if not value:
                continue
        elif name in columns:
            continue
        rest.append((key, value))
    return rest


def _document(value: Any) -> str:
    """A parsed JSON value as minified JSON, with arrays of records as tables."""
    if isinstance(value, list) and not isinstance(value, _Object):
        return _table("", value) or _dump(value)
    if isinstance(value, _Object):
        tables: list[str] = []
        head = _lift_tables(value, "", tables)
        if tables:
            return "\n".join(([_dump(head)] if head else []) + tables)
    return _dump(value)


def _lift_tables(obj: _Object, prefix: str, tables: list[str]) -> _Object:
    """``obj`` less its arrays that make tables (appended to ``tables``, named by their
    dotted path); an object left empty by that is dropped, :func:`expand_tables` recreates
    it."""
    if len({k for k, _ in obj}) != len(obj):
        return obj
    rest = _Object()
    for key, item in obj:
        if _TABLE_NAME.match(key):
            if isinstance(item, _Object):
                if item:
                    item = _lift_tables(item, f"{prefix}{key}.", tables)
                    if not item:  # it held tables only
                        continue
            elif isinstance(item, list):
                table = _table(prefix + key, item)
                if table is not None:
                    tables.append(table)
                    continue
        rest.append((key, item))
    return rest


def _atom(line: str, i: int, end: re.Pattern[str]) -> tuple[Any, int]:
    """The value that starts at ``line[i]`` and where it stops (``_EMPTY`` for nothing)."""
    if i < len(line) and line[i] in "[{":
        return _load_cell(line, i)
    if i < len(line) and line[i] == '"':
        return _DECODER.raw_decode(line, i)
    m = end.search(line, i)
    j = m.start() if m else len(line)
    raw = line[i:j]
    if raw == "":
        return _EMPTY, j
    if raw in ("true", "false"):
        return raw == "true", j
    if raw == "null":
        return None, j
    if _NUMBER.match(raw):
        return _Raw(raw), j
    return raw, j


def _load_cell(line: str, i: int) -> tuple[Any, int]:
    """The array or object (bare keys allowed) that starts at ``line[i]``, and its end."""
    depth = 0
    for m in _JSON_PIECES.finditer(line, i):
        piece = m.group()
        if piece == "[" or piece == "{":
            depth += 1
        elif piece == "]" or piece == "}":
            depth -= 1
            if depth == 0:
                text = _BARE_KEYS.sub(_quote_bare_key, line[i : m.end()])
                return _DECODER.decode(text), m.end()
    raise ValueError(f"unclosed value at {i} in {line!r}")


def _quote_bare_key(m: re.Match[str]) -> str:
    return m.group() if m.group(1) is None else f'"{m.group(1)}"'


def _row(
    line: str, columns: list[tuple[str, bool, bool]], has_extras: bool
) -> list[tuple[str, Any]]:
    """(path, value) of one table row; a missing cell of an optional column is left out."""
    pairs: list[tuple[str, Any]] = []
    i = 0
    for index, (path, is_optional, is_list) in enumerate(columns):
        if index:
            if line[i : i + 1] != ",":
                raise ValueError(f"expected ',' at {i} in {line!r}")
            i += 1
        if is_list and line[i : i + 1] not in ("", ",", "["):
            value, i = _atom(line, i, _ITEM_END)
            items = [value]
            while line[i : i + 1] == "|":
                value, i = _atom(line, i + 1, _ITEM_END)
                items.append(value)
            if any(v is _EMPTY for v in items):
                raise ValueError(f"empty list item before {i} in {line!r}")
            value = items
        else:
            value, i = _atom(line, i, _CELL_END)
            if value is _EMPTY and not is_optional:
                value = [] if is_list else None
        if value is not _EMPTY:
            pairs.append((path, value))
    if i < len(line):
        if not (has_extras and line[i] == "," and line[i + 1 : i + 2] == "{"):
            raise ValueError(f"unexpected text at {i} in {line!r}")
        extras, i = _load_cell(line, i + 1)
        leaves = _flatten(extras) if isinstance(extras, _Object) else None
        if i != len(line) or leaves is None:
            raise ValueError(f"unexpected text at {i} in {line!r}")
        pairs.extend(leaves.items())
    return pairs


def _columns(specs: str) -> tuple[list[tuple[str, bool, bool]], bool]:
    """(path, is_optional, is_list) of each column of a header, and whether ``...`` ends it."""
    parts = specs.split(",") if specs else []
    has_extras = bool(parts) and parts[-1] == "..."
    columns = []
    for part in parts[:-1] if has_extras else parts:
        is_optional = part.endswith("?")
        part = part.removesuffix("?")
        columns.append((part.removesuffix("[]"), is_optional, part.endswith("[]")))
    return columns, has_extras


def _insert(node: _Object, path: list[str], value: Any) -> None:
    """Put ``value`` at ``path`` under ``node``, making the objects on the way."""
    for part in path[:-1]:
        found = next((v for k, v in node if k == part), None)
        if found is None:
            found = _Object()
            node.append((part, found))
        elif not isinstance(found, _Object):
            raise ValueError(f"{part!r} is both a value and an object")
        node = found
    node.append((path[-1], value))


def _unflatten(pairs: list[tuple[str, Any]]) -> _Object:
    root = _Object()
    for key, value in pairs:
        _insert(root, key.split("."), value)
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
        columns, has_extras = _columns(m["cols"])
        fixed = list(_loads(m["const"])) if m["const"] else []
        num_rows = int(m["rows"])
        body = lines[i + 1 : i + 1 + num_rows]
        if len(body) != num_rows:
            raise ValueError(f"table {m['name']!r} says {num_rows} rows and has {len(body)}")
        rows = [_unflatten(_row(line, columns, has_extras) + fixed) for line in body]
        tables.append((m["name"], rows))
        i += 1 + num_rows
    if head is None and len(tables) == 1 and tables[0][0] == "":
        return _plain(tables[0][1])
    obj = head if head is not None else _Object()
    if tables and not isinstance(obj, _Object):
        raise ValueError("tables follow a first line that is not a JSON object")
    for name, rows in tables:
        _insert(obj, name.split("."), rows)
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


loads = _loads
"""JSON parsed exactly: numbers as written, objects as ordered (key, value) pairs."""
Object = _Object
DECODER = _DECODER
"""A decoder with :func:`loads`' hooks, for ``raw_decode`` of JSON inside a text."""
encode = _document
"""A parsed JSON value in its most compact lossless form: tables where records repeat."""
plain = _plain
