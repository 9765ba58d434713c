"""JSON on the gateway's hot path: orjson where it gives the same answer as the standard
library, the standard library where it would not.

orjson parses and writes a large body several times faster, but it refuses what Python's
``json`` takes (``NaN``, a byte order mark, UTF-16, a number out of a double's range) and
reads an integer of more than 64 bits as a float. So :func:`loads` tries orjson only on a
body with no run of 20 digits and falls back to ``json`` on any refusal: a body parses to
the same value, and a bad one fails with the same error, as before. :class:`JSONBody` writes
the gateway's JSON responses with :func:`dumps`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse

_DIGITS = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_NUMBER = b"0" * 20
"""Twenty digits in a row (found as zeros after ``_DIGITS``: ten times faster than a regex)."""


def loads(raw: bytes | str) -> tuple[Any, bool]:
    """The parsed body, and whether orjson parsed it (then no string in it holds a lone
    UTF-16 surrogate: orjson refuses those)."""
    if isinstance(raw, bytes) and _LONG_NUMBER not in raw.translate(_DIGITS):
        try:
            return orjson.loads(raw), True
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw), False


def dumps(data: Any, *, sort_keys: bool = False) -> bytes:
    """UTF-8 JSON, compact; the standard library for what orjson cannot write (an integer
    beyond 64 bits, a lone surrogate)."""
    try:
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:
        return json.dumps(
            data, sort_keys=sort_keys, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8", "surrogatepass")


class JSONBody(JSONResponse):
    """A JSON response written by :func:`dumps` (orjson) instead of ``json.dumps``; a NaN
    an upstream sent is written as null rather than failing the response."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
