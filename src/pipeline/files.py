"""Durable file primitives: every artifact is either complete or visibly unfinished.

- `write_atomic` writes to a temporary file in the same folder, fsyncs it, and renames it over the target, so a
  reader sees the old file or the new one, never half of one.
- `JsonlAppender` appends whole lines in batches and fsyncs after each batch. A process killed mid-write leaves at
  most one torn last line; reopening the file cuts it off (and says so) before anything new is appended.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator

from .errors import PipelineError

log = logging.getLogger(__name__)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace `path` with `data` in one step (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PipelineError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Records of a finished JSONL file; a bad line is an error that names the file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise PipelineError(
                    f"{path}, line {lineno}: not valid JSON ({e.msg}). The file is damaged; "
                    "re-run the stage that wrote it with overwrite=true."
                ) from None


def repair_jsonl_tail(path: Path) -> list[dict]:
    """Read the records of an append-only JSONL file, cutting off a torn last line left by a killed writer.

    Appends are whole lines, so only bytes after the last newline can be the remains of an interrupted write;
    those are cut off. A bad line anywhere before that is real damage and an error.
    """
    if not path.exists():
        return []
    with open(path, "rb") as f:
        raw = f.read()
    complete, newline, torn = raw.rpartition(b"\n")
    if torn:
        keep = len(complete) + len(newline)
        log.warning("%s: cutting off a torn last line (%d bytes) left by an interrupted write", path, len(torn))
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    records = []
    for lineno, line in enumerate(complete.split(b"\n") if newline else [], 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            raise PipelineError(
                f"{path}, line {lineno}: not a valid record ({e}). Only a torn last line can come from an "
                "interrupted write, so this file is damaged; move it aside and re-run the stage."
            ) from None
    return records


class JsonlAppender:
    """Append-only JSONL writer: whole lines, flushed and fsynced after each batch."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, records: Iterable[dict]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        self._f.write(text)
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
