"""The one exception type that reaches users.

A `PipelineError` is bad input or a state the user can fix: the entry point prints its message (no traceback)
and exits with status 2. Each message names what was wrong (file, line, field or value), why, and what to do.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A problem the user can fix; the message says what, where, and how."""


def plural(n: int, word: str, suffix: str = "s") -> str:
    """'1 run', '3 runs'."""
    return f"{n} {word}{'' if n == 1 else suffix}"


def preview(items, limit: int = 10) -> str:
    """Comma-separated, at most `limit` items, with a count of the rest: 'a, b, c and 7 more'."""
    items = [str(x) for x in items]
    shown = ", ".join(items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown
