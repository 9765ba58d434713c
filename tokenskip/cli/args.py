"""Argument helpers every subcommand shares: input reading, ratio and positive-number types."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tokenskip.errors import InvalidInputError

EXIT_USAGE = 2
DEFAULT_MAX_CHARS = 2_000_000


def read_text(source: str, max_chars: int) -> str:
    """UTF-8 text from a file path or ``-`` (stdin), refusing binary and oversized input."""
    if source == "-":
        data = sys.stdin.buffer.read()
        where = "standard input"
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise InvalidInputError(f"cannot read {source}: {exc.strerror}") from None
        where = source
    if b"\x00" in data:
        raise InvalidInputError(f"{where} looks binary (it contains NUL bytes); pass UTF-8 text")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not text
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"{where} is not UTF-8 text (invalid byte at offset {exc.start}); convert it first, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from None
    if len(text) > max_chars:
        raise InvalidInputError(
            f"{where} has {len(text):,} characters, over the limit of {max_chars:,}; split it or "
            "raise --max-chars"
        )
    return text


def ratio_type(value: str) -> float:
    from tokenskip.compress import check_ratio

    try:
        return check_ratio(value)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive(kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int, float) parsed and required to be > 0."""
    noun = "integer" if kind is int else "number"

    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {value!r}")
        return number

    return parse


positive_int = positive(int)
