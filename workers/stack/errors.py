"""The stack's one error: what `workers stack` reports instead of a traceback."""

from __future__ import annotations


class StackError(Exception):
    """The local stack could not reach the requested state; the message says why."""
