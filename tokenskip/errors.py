"""Errors a user can act on. The CLI turns these into one line and exit code 2."""

from __future__ import annotations


class TokenskipError(Exception):
    """Base class for errors whose message is meant for the user, not a traceback."""


class InvalidInputError(TokenskipError, ValueError):
    """The input (ratio, text, option) cannot be processed as given."""


class ModelNotFoundError(TokenskipError):
    """A model name or path does not resolve to anything loadable here."""
