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


def os_error_message(e: OSError, needed_bytes: int | None = None) -> str:
    """One line for an OSError the user can fix: which path, what happened, and what to do."""
    import errno
    import os
    import shutil

    path = e.filename or "(a file it was writing)"
    what = os.strerror(e.errno) if e.errno else str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = ""
        probe = os.path.dirname(os.path.abspath(str(e.filename))) if e.filename else ""
        while probe and not os.path.isdir(probe):
            probe = os.path.dirname(probe)
        try:
            free = f"; {size_text(shutil.disk_usage(probe).free)} are free there"
        except OSError:
            pass
        need = f", needing {size_text(needed_bytes)} more" if needed_bytes else ""
        return (f"{path}: the disk is full ({what}{need}{free}). Nothing half-written was kept; free some space "
                "(or point runs_dir / cache_dir elsewhere) and run the same command again: it resumes.")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"{path}: cannot write here ({what}). Use a folder you can write to (runs_dir=..., cache_dir=...), "
                "or fix its permissions.")
    return f"{path}: {what}. Check the path (runs_dir, dataset.path, predictions, a model folder) and run again."


def size_text(n: int) -> str:
    """'0.4 KiB', '12.0 KiB', '3.25 MiB': small sizes stay readable."""
    return f"{n / 2**10:.1f} KiB" if n < 2**20 else f"{n / 2**20:.2f} MiB"
